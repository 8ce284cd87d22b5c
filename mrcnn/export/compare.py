"""Exported vs eager: the same images through both, detections matched one to one.

`compare_onnx(model, path, images)` prepares the images once (as `detect` does), runs the eager
model and the ONNX file on them and reports how many detections match (`match_detections`:
same label, box within a tolerance, score within a tolerance) and how their masks agree.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mrcnn.export import onnx_model
from mrcnn.modeling.model import MaskRCNN
from mrcnn.structures import Batch

GRAPH_OUTPUTS = onnx_model.OUTPUT_NAMES


def raw_outputs(model: MaskRCNN, images: Sequence[np.ndarray]) -> tuple[dict, Batch]:
    """Eager `MaskRCNN` on prepared `images` -> ({output name: numpy}, the prepared batch)."""
    cpu = copy.deepcopy(model).cpu().float().eval()
    batch = cpu.prepare(list(images))
    raw = cpu.predict(batch)
    return {name: getattr(raw, name).numpy() for name in GRAPH_OUTPUTS}, batch


def match_detections(
    expected: dict[str, np.ndarray],
    actual: dict[str, np.ndarray],
    box_tol: float = 1e-2,
    score_tol: float = 1e-4,
    mask_thresh: float = 0.5,
) -> dict:
    """Match two sets of raw outputs ({boxes, scores, labels, valid, mask_probs}, [B, D, ...]).

    A detection of `expected` matches one of `actual` in the same image with the same label,
    every box coordinate within `box_tol` px and score within `score_tol`.
    -> {"expected": n, "actual": n, "matched": n, "matched_fraction": matched / max(n, n')
        (None when both are empty: nothing was compared, which is no agreement),
        "max_box_diff", "max_score_diff" (over matches), "min_mask_iou", "mean_mask_iou"
        (M x M masks thresholded at `mask_thresh`; None without matches)}
    """
    n_exp = int(expected["valid"].sum())
    n_act = int(actual["valid"].sum())
    matched, box_diff, score_diff, ious = 0, 0.0, 0.0, []
    for i in range(expected["valid"].shape[0]):
        free = list(np.flatnonzero(actual["valid"][i]))
        for j in np.flatnonzero(expected["valid"][i]):
            for f in free:
                db = float(np.abs(expected["boxes"][i, j] - actual["boxes"][i, f]).max())
                ds = abs(float(expected["scores"][i, j]) - float(actual["scores"][i, f]))
                if (
                    expected["labels"][i, j] == actual["labels"][i, f]
                    and db <= box_tol
                    and ds <= score_tol
                ):
                    free.remove(f)
                    matched += 1
                    box_diff, score_diff = max(box_diff, db), max(score_diff, ds)
                    a = expected["mask_probs"][i, j] >= mask_thresh
                    b = actual["mask_probs"][i, f] >= mask_thresh
                    union = (a | b).sum()
                    ious.append(1.0 if union == 0 else float((a & b).sum() / union))
                    break
    return {
        "expected": n_exp,
        "actual": n_act,
        "matched": matched,
        "matched_fraction": None if max(n_exp, n_act) == 0 else matched / max(n_exp, n_act),
        "max_box_diff": box_diff,
        "max_score_diff": score_diff,
        "min_mask_iou": min(ious, default=None),
        "mean_mask_iou": float(np.mean(ious)) if ious else None,
    }


def compare_onnx(
    model: MaskRCNN, path: str | Path, images: Sequence[np.ndarray], **tolerances: float
) -> dict:
    """Eager `model` and the ONNX file at `path` (ONNX Runtime, CPU) on the same images.

    Images are prepared once (as `detect` does) and fed to both, in the file's batch size.
    -> `match_detections` report, plus "num_images".
    """
    onnx_run = onnx_model.OnnxModel(path)
    expected, batch = raw_outputs(model, images)
    parts = []
    b = onnx_run.batch_size
    n = len(images)
    pixels, windows = batch.images.numpy(), batch.windows.numpy()
    for start in range(0, n, b):
        p = np.zeros((b, *pixels.shape[1:]), dtype=np.uint8)
        w = np.zeros((b, 4), dtype=np.float32)
        m = min(b, n - start)
        p[:m], w[:m] = pixels[start : start + m], windows[start : start + m]
        out = onnx_run.run(p, w)
        parts.append({k: v[:m] for k, v in out.items()})
    actual = {k: np.concatenate([part[k] for part in parts]) for k in GRAPH_OUTPUTS}
    report = match_detections(expected, actual, mask_thresh=model.mask_thresh, **tolerances)
    return {**report, "num_images": n}
