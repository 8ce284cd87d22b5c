"""Portable export: the whole inference graph as static-shape ONNX, checked against eager.

`to_onnx(model, path, batch_size=B)` writes `mrcnn.export_graph.InferenceGraph`: for the model's
input side S and detections per image D,

    inputs   images      uint8   [B, 3, S, S]  resized + zero-padded as `MaskRCNN.prepare` does
             windows     float32 [B, 4]        (y1, x1, y2, x2) of the real image in the frame
    outputs  boxes       float32 [B, D, 4]     xyxy in the padded frame
             scores      float32 [B, D]
             labels      int64   [B, D]        1..K-1, 0 in invalid slots
             valid       bool    [B, D]
             mask_probs  float32 [B, D, M, M]  the label's mask after sigmoid

i.e. normalisation, backbone, RPN, proposal layer (NMS as ONNX `NonMaxSuppression`), multi-level
RoIAlign (ONNX `RoiAlign`), box head, detection layer, mask head: `MaskRCNN.forward` in eval
mode. Pasting masks into each image stays on the host (`mrcnn.onnx_model.OnnxModel`, torch-free).
The file carries the settings `detect` needs as metadata. `compare_onnx` runs eager and ONNX
Runtime on the same images and matches their detections; `docs/export.md` lists the operators.

`to_torch_export` writes the same graph as a `torch.export` program (`.pt2`, no pickle).

`export_portable` (the pipeline's export stage) is `to_onnx` + `compare_onnx`, refusing a file
that does not match. The older `export_onnx` / `check_onnx` (backbone + RPN head only,
dynamic batch) remain for callers of that file.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mrcnn import onnx_model
from mrcnn.export_graph import InferenceGraph
from mrcnn.model import MaskRCNN
from mrcnn.structures import Batch

log = logging.getLogger(__name__)

INPUT_NAMES = ("images", "windows")
OUTPUT_NAMES = ("p2", "p3", "p4", "p5", "p6", "objectness", "deltas")
OPSET = 17
# An output passes when max |onnx - eager| <= TOLERANCE * max(1, max |eager|).
TOLERANCE = 1e-4


class BackboneRPN(nn.Module):
    """Normalise + backbone + RPN head of a `MaskRCNN` (shares its modules, eval mode).

    forward(images uint8 [B, 3, S, S], windows float [B, 4]) ->
        (P2, P3, P4, P5, P6, objectness [B, A], deltas [B, A, 4])
    """

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, windows: Tensor) -> tuple[Tensor, ...]:
        features = self.model.backbone(self.model.normalize(images, windows))
        objectness, deltas = self.model.rpn.head(features)
        return (*features, objectness, deltas)


def export_onnx(model: MaskRCNN, path: str | Path, opset: int = OPSET) -> Path:
    """Write `BackboneRPN(model)` as ONNX at `path` (batch size dynamic, side fixed at S)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = BackboneRPN(copy.deepcopy(model).cpu().eval()).eval()
    s = model.image_size
    example = (
        torch.zeros((1, 3, s, s), dtype=torch.uint8),
        torch.tensor([[0.0, 0.0, float(s), float(s)]]),
    )
    batch_axis = {0: "batch"}
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter announces its deprecation; see the module docstring for why
        # it is the one used.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            part,
            example,
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: batch_axis for name in INPUT_NAMES + OUTPUT_NAMES},
        )
    tmp.replace(path)
    log.info("wrote %s (backbone + RPN head, %d x %d input)", path, s, s)
    return path


def check_onnx(
    model: MaskRCNN,
    path: str | Path,
    images: Sequence[np.ndarray] | None = None,
    tolerance: float = TOLERANCE,
) -> dict:
    """Run the ONNX file (onnxruntime, CPU) and `BackboneRPN` (eager) on the same inputs.

    `images` are uint8 H x W x 3 of any size, prepared as `detect` prepares them (default: two
    seeded random images, one square and one not, so the padding window matters).
    -> {"max_abs_diff": {output: float}, "max_abs": {output: float}, "tolerance": float,
        "worst_relative": float, "ok": bool, "num_images": int}
    """
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is in the `export` extra
        raise RuntimeError(
            "checking the ONNX file needs onnxruntime: pip install -e '.[export]' "
            "(or set export.portable: false in params.yaml)"
        ) from e
    if images is None:
        rng = np.random.default_rng(0)
        s = model.image_size
        images = [
            rng.integers(0, 256, (s, s, 3), dtype=np.uint8),
            rng.integers(0, 256, (s // 2 + 3, s - 5, 3), dtype=np.uint8),
        ]
    cpu_model = copy.deepcopy(model).cpu().eval()
    batch = cpu_model.prepare(list(images))
    with torch.no_grad():
        eager = [t.numpy() for t in BackboneRPN(cpu_model)(batch.images, batch.windows)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(
        list(OUTPUT_NAMES), {"images": batch.images.numpy(), "windows": batch.windows.numpy()}
    )
    diffs, scales, worst = {}, {}, 0.0
    for name, a, b in zip(OUTPUT_NAMES, eager, onnx_out, strict=True):
        if a.shape != b.shape:
            raise RuntimeError(f"ONNX output '{name}' has shape {b.shape}, eager {a.shape}")
        diffs[name] = float(np.abs(a - b).max())
        scales[name] = float(np.abs(a).max())
        worst = max(worst, diffs[name] / max(1.0, scales[name]))
    return {
        "max_abs_diff": diffs,
        "max_abs": scales,
        "tolerance": tolerance,
        "worst_relative": worst,
        "ok": worst <= tolerance,
        "num_images": len(images),
    }


# --- the whole inference graph ----------------------------------------------------------------

GRAPH_OUTPUTS = onnx_model.OUTPUT_NAMES
GRAPH_OPSET = 17  # >= 16: RoiAlign's coordinate_transformation_mode (aligned=True / False)


def _example_inputs(model: MaskRCNN, batch_size: int) -> tuple[Tensor, Tensor]:
    """Seeded noise images in full windows: every branch of the graph sees real data."""
    s = model.image_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, s, s), generator=g, dtype=torch.uint8)
    windows = torch.tensor([[0.0, 0.0, float(s), float(s)]]).repeat(batch_size, 1)
    return images, windows


def metadata(model: MaskRCNN, batch_size: int) -> dict[str, str]:
    """What `OnnxModel` needs besides the graph, as `mrcnn.*` JSON strings."""
    values = {
        "image_size": model.image_size,
        "batch_size": batch_size,
        "resize_mode": model.resize_mode,
        "min_size": model.min_size,
        "mask_thresh": model.mask_thresh,
        "num_classes": model.num_classes,
        "class_names": list(model.class_names),
        "detections_per_img": model.roi_heads.detections_per_img,
        # the detection layer's settings as traced (they may differ from `config`'s)
        "score_thresh": float(model.roi_heads.score_thresh),
        "nms_thresh": float(model.roi_heads.nms_thresh),
    }
    if model.cfg is not None:
        values["config"] = model.cfg.to_dict()
    return {onnx_model.METADATA_PREFIX + k: json.dumps(v) for k, v in values.items()}


def _check_exportable(model: MaskRCNN) -> None:
    if model.roi_heads.mask_head is None:
        raise ValueError(
            "the exported graph outputs masks and this model has no mask head "
            "(roi_heads.masks: false): run it eagerly (export.portable: false)"
        )


def to_onnx(
    model: MaskRCNN, path: str | Path, batch_size: int = 1, opset: int = GRAPH_OPSET
) -> Path:
    """Write the whole inference graph of `model` as ONNX at `path` (static batch `batch_size`).

    See the module docstring for inputs and outputs. Written atomically; returns `path`.
    Run it with `mrcnn.onnx_model.OnnxModel(path)`.
    """
    import onnx

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if opset < 16:
        raise ValueError(f"opset {opset} has no RoiAlign coordinate_transformation_mode; use >= 16")
    _check_exportable(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = InferenceGraph(copy.deepcopy(model).cpu().float().eval()).eval()
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter: the torch.export-based one needs onnxscript (not a
        # dependency). Its deprecation and tracer warnings are expected here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            _example_inputs(model, batch_size),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(GRAPH_OUTPUTS),
        )
    proto = onnx.load(str(tmp))
    for key, value in metadata(model, batch_size).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    log.info("wrote %s (whole model, batch %d, %d px)", path, batch_size, model.image_size)
    return path


def to_torch_export(model: MaskRCNN, path: str | Path, batch_size: int = 1) -> Path:
    """Write the same graph as a `torch.export` program (`.pt2`; load with
    `torch.export.load(path).module()(images, windows)`, no pickle involved)."""
    _check_exportable(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = InferenceGraph(copy.deepcopy(model).cpu().float().eval()).eval()
    with torch.no_grad():
        program = torch.export.export(graph, _example_inputs(model, batch_size), strict=False)
    tmp = path.with_name(path.stem + ".tmp.pt2")  # torch.export.save wants the suffix
    torch.export.save(program, str(tmp))
    tmp.replace(path)
    return path


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
        (1.0 when both are empty), "max_box_diff", "max_score_diff" (over matches),
        "min_mask_iou", "mean_mask_iou" (M x M masks thresholded at `mask_thresh`)}
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
        "matched_fraction": 1.0 if max(n_exp, n_act) == 0 else matched / max(n_exp, n_act),
        "max_box_diff": box_diff,
        "max_score_diff": score_diff,
        "min_mask_iou": min(ious, default=1.0),
        "mean_mask_iou": float(np.mean(ious)) if ious else 1.0,
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


# Parity an exported file must reach on the check images before it is kept.
MIN_MATCHED_FRACTION = 0.99
MIN_MASK_IOU = 0.98


def export_portable(
    model: MaskRCNN,
    path: str | Path,
    images: Sequence[np.ndarray] | None = None,
    batch_size: int = 1,
) -> dict:
    """`to_onnx`, then `compare_onnx` on `images` (default: three seeded images, one blank);
    removes the file and raises `RuntimeError` unless >= 99% of the detections match and every
    matched mask has IoU >= 0.98. -> {"file", "contains", "ok", **the comparison}."""
    path = to_onnx(model, path, batch_size=batch_size)
    if images is None:
        rng = np.random.default_rng(0)
        s = model.image_size
        images = [
            rng.integers(0, 256, (s, s, 3), dtype=np.uint8),
            rng.integers(0, 256, (s // 2 + 3, s - 5, 3), dtype=np.uint8),
            np.zeros((s, s, 3), dtype=np.uint8),
        ]
    report = compare_onnx(model, path, images)
    ok = report["matched_fraction"] >= MIN_MATCHED_FRACTION and report["min_mask_iou"] >= (
        MIN_MASK_IOU
    )
    if not ok:
        path.unlink()
        raise RuntimeError(
            f"the ONNX model's detections differ from eager PyTorch: {report} (needs matched "
            f"fraction >= {MIN_MATCHED_FRACTION}, mask IoU >= {MIN_MASK_IOU})"
        )
    log.info(
        "ONNX matches eager on %d images: %d/%d detections, max box diff %.2e px",
        report["num_images"],
        report["matched"],
        report["expected"],
        report["max_box_diff"],
    )
    return {"file": str(path), "contains": "the whole inference graph", "ok": True, **report}
