"""What int8 costs: a quantised file's detections against its fp32 file's, and the AP of both.

    report = int8_accuracy("model.onnx", "model_int8.onnx", images,
                           coco_gt=COCO("instances_val.json"), dataset=ShardDataset("val"))
    check_ap_drop(report, max_ap_drop=0.01)      # raises Int8AccuracyError, one line why

- agreement (`compare_exported`): both files on the same prepared images, detections matched
  one to one as `mrcnn.export.compare.match_detections` does, with int8's tolerances
  (`INT8_BOX_TOL` px in the input frame, `INT8_SCORE_TOL`): matched fraction, box and score
  error over the matches, mask IoU of the M x M masks;
- AP (`evaluate_exported`): each file over a dataset of shard samples (`mrcnn.data.Sample`:
  image already in the padded frame, window, scale, original size, image id), its detections
  in original pixels as COCO results (masks encoded from the M x M grid, as `predict_dataset`
  does), scored by `mrcnn.evaluation.coco_evaluate` (bbox and segm AP, 0..1).

Files are opened with `open_exported` (an `.onnx` on ONNX Runtime, an OpenVINO `.xml` on
OpenVINO). Nothing here imports torch; a `ShardDataset` does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn.export.compare import match_detections
from mrcnn.export.onnx_model import OUTPUT_NAMES, ExportedGraph, OnnxModel
from mrcnn.inference.postprocess import to_detections

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "openvino")
# A detection of the fp32 file matches an int8 one with the same label, every box coordinate
# within INT8_BOX_TOL px of the input frame and the score within INT8_SCORE_TOL.
INT8_BOX_TOL = 2.0
INT8_SCORE_TOL = 0.05


class Int8AccuracyError(RuntimeError):
    """An int8 model refused by `check_ap_drop`; the message is one line saying why."""


def open_exported(path: str | Path, backend: str = "auto") -> ExportedGraph:
    """An exported file on a runtime: "onnxruntime" (`OnnxModel`), "openvino"
    (`OpenVinoModel`), or "auto": OpenVINO for an OpenVINO IR `.xml`, ONNX Runtime otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = Path(path)
    if backend == "openvino" or (backend == "auto" and path.suffix == ".xml"):
        from mrcnn.export.openvino_model import OpenVinoModel

        return OpenVinoModel(path)
    return OnnxModel(path)


def _opened(model: str | Path | ExportedGraph) -> ExportedGraph:
    return model if isinstance(model, ExportedGraph) else open_exported(model)


def run_prepared(model: ExportedGraph, pixels: np.ndarray, windows: np.ndarray) -> dict:
    """`model.run` over n prepared images (uint8 [n, 3, S, S], float32 [n, 4]) in its fixed
    batch size -> {output name: [n, ...]} (the last batch padded with blank images)."""
    n, b = len(pixels), model.batch_size
    parts = []
    for start in range(0, n, b):
        m = min(b, n - start)
        p = np.zeros((b, *pixels.shape[1:]), dtype=np.uint8)
        w = np.zeros((b, 4), dtype=np.float32)
        p[:m], w[:m] = pixels[start : start + m], windows[start : start + m]
        parts.append({k: v[:m] for k, v in model.run(p, w).items()})
    return {k: np.concatenate([part[k] for part in parts]) for k in OUTPUT_NAMES}


def compare_exported(
    expected: str | Path | ExportedGraph,
    actual: str | Path | ExportedGraph,
    images: Sequence[np.ndarray],
    box_tol: float = INT8_BOX_TOL,
    score_tol: float = INT8_SCORE_TOL,
) -> dict:
    """Two exported files (e.g. fp32 and int8) on the same `images` (uint8 H x W x 3, prepared
    once by `expected`'s settings) -> `match_detections` report plus "num_images"."""
    expected, actual = _opened(expected), _opened(actual)
    if (expected.image_size, expected.resize_mode) != (actual.image_size, actual.resize_mode):
        raise ValueError(
            f"{expected.path.name} and {actual.path.name} take different inputs "
            f"({expected.image_size} px {expected.resize_mode} vs "
            f"{actual.image_size} px {actual.resize_mode})"
        )
    pixels, windows = [], []
    for start in range(0, len(images), expected.batch_size):
        p, w, _ = expected.prepare(images[start : start + expected.batch_size])
        m = min(expected.batch_size, len(images) - start)
        pixels.append(p[:m])
        windows.append(w[:m])
    pixels, windows = np.concatenate(pixels), np.concatenate(windows)
    report = match_detections(
        run_prepared(expected, pixels, windows),
        run_prepared(actual, pixels, windows),
        box_tol=box_tol,
        score_tol=score_tol,
        mask_thresh=expected.mask_thresh,
    )
    return {**report, "num_images": len(images)}


def evaluate_exported(
    model: str | Path | ExportedGraph,
    dataset: Sequence[Any],
    coco_gt: Any,
    category_ids: Mapping[int, int] | None = None,
    max_images: int = 0,
) -> dict[str, float]:
    """COCO bbox and segm AP of an exported file over `dataset` (shard samples whose images are
    in the file's input frame, e.g. `ShardDataset`) against `coco_gt` (a pycocotools `COCO`).

    `category_ids` maps model labels to `coco_gt`'s category ids (default: the dataset's
    `class_map`, else labels as they are); `max_images` > 0 keeps the first that many samples.
    -> {"bbox_AP", "segm_AP"} (COCOeval's AP over IoU .50:.95, 0..1)."""
    from mrcnn.evaluation.coco_eval import coco_evaluate
    from mrcnn.evaluation.coco_results import to_coco_results

    model = _opened(model)
    if category_ids is None and getattr(dataset, "class_map", None):
        from mrcnn.data.class_map import category_ids as label_to_category

        category_ids = label_to_category(dataset.class_map)
    n = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    for start in range(0, n, model.batch_size):
        samples = [dataset[i] for i in range(start, min(n, start + model.batch_size))]
        if samples[0].image.shape[0] != model.image_size:
            raise ValueError(
                f"the dataset's images are {samples[0].image.shape[0]} px and "
                f"{model.path.name} takes {model.image_size} px"
            )
        pixels = np.stack([s.image.transpose(2, 0, 1) for s in samples])
        windows = np.array([s.window for s in samples], dtype=np.float32)
        out = run_prepared(model, pixels, windows)
        detections = to_detections(
            *(out[k] for k in OUTPUT_NAMES),
            windows,
            np.array([s.scale for s in samples], dtype=np.float32),
            [s.original_size for s in samples],
            model.mask_thresh,
            grid_masks=True,
        )
        for sample, det in zip(samples, detections, strict=True):
            results += to_coco_results(det, sample.image_id, category_ids)
            image_ids.append(int(sample.image_id))
    scores = coco_evaluate(coco_gt, results, image_ids=image_ids)
    return {f"{t}_AP": float(scores.metrics[t]["AP"]) for t in ("bbox", "segm")}


def int8_accuracy(
    fp32: str | Path | ExportedGraph,
    int8: str | Path | ExportedGraph,
    images: Sequence[np.ndarray] = (),
    *,
    coco_gt: Any = None,
    dataset: Sequence[Any] | None = None,
    max_images: int = 0,
) -> dict[str, Any]:
    """The int8 file against the fp32 one: {"agreement": `compare_exported` on `images`
    (absent when none are given)} and, given `coco_gt` and `dataset`, "bbox_AP", "segm_AP",
    "fp32_bbox_AP", "fp32_segm_AP" (`evaluate_exported`), "bbox_AP_drop", "segm_AP_drop"
    (fp32 minus int8)."""
    fp32, int8 = _opened(fp32), _opened(int8)
    report: dict[str, Any] = {}
    if len(images):
        report["agreement"] = compare_exported(fp32, int8, images)
    if coco_gt is not None and dataset is not None:
        ap32 = evaluate_exported(fp32, dataset, coco_gt, max_images=max_images)
        ap8 = evaluate_exported(int8, dataset, coco_gt, max_images=max_images)
        for t in ("bbox", "segm"):
            report[f"{t}_AP"] = ap8[f"{t}_AP"]
            report[f"fp32_{t}_AP"] = ap32[f"{t}_AP"]
            report[f"{t}_AP_drop"] = ap32[f"{t}_AP"] - ap8[f"{t}_AP"]
    elif (coco_gt is None) != (dataset is None):
        raise ValueError("AP needs both coco_gt and dataset")
    log.info("int8 vs fp32: %s", report)
    return report


def check_ap_drop(report: Mapping[str, Any], max_ap_drop: float) -> None:
    """Refuse an int8 model whose bbox or segm AP is more than `max_ap_drop` below fp32's
    (`int8_accuracy` with ground truth): raises `Int8AccuracyError` with one line naming the
    metric, both APs and the limit. A report without AP is refused too (nothing measured)."""
    if "bbox_AP_drop" not in report:
        raise Int8AccuracyError(
            "int8 model refused: its AP was not measured (int8_accuracy needs coco_gt and "
            "dataset), so the allowed AP drop cannot be checked"
        )
    for t in ("bbox", "segm"):
        drop = report[f"{t}_AP_drop"]
        if drop > max_ap_drop:
            raise Int8AccuracyError(
                f"int8 model refused: {t} AP {report[f'{t}_AP']:.4f} vs fp32 "
                f"{report[f'fp32_{t}_AP']:.4f} is a drop of {drop:.4f} > the allowed "
                f"{max_ap_drop:.4f} (export.int8_max_ap_drop)"
            )
