"""Portable export: the whole inference graph as static-shape ONNX, checked against eager.

`to_onnx(model, path, batch_size=B)` writes `mrcnn.export.graph.InferenceGraph`: for the model's
input side S and detections per image D,

    inputs   images      uint8   [B, 3, S, S]  resized + zero-padded as `MaskRCNN.prepare` does
             windows     float32 [B, 4]        (y1, x1, y2, x2) of the real image in the frame
    outputs  boxes       float32 [B, D, 4]     xyxy in the padded frame
             scores      float32 [B, D]
             labels      int64   [B, D]        1..K-1, 0 in invalid slots
             valid       bool    [B, D]
             mask_probs  float32 [B, D, M, M]  the label's mask after sigmoid

i.e. normalisation, backbone, RPN, proposal layer (NMS as ONNX `NonMaxSuppression`), multi-level
RoIAlign (ONNX `RoiAlign`), box head, detection layer, mask head: `MaskRCNN.forward` in eval mode.
Pasting masks into each image stays on the host (`mrcnn.export.onnx_model.OnnxModel`, torch-free).
The file carries the settings `detect` needs as metadata. `compare_onnx` runs eager and ONNX Runtime
on the same images and matches their detections; `docs/export.md` lists the operators.

`to_torch_export` writes the same graph as a `torch.export` program (`.pt2`, no pickle).

`export_portable` (the pipeline's export stage) is `to_onnx` + `compare_onnx`, refusing a file
that does not match.
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
from torch import Tensor

from mrcnn.export import onnx_model
from mrcnn.export.compare import compare_onnx
from mrcnn.export.graph import InferenceGraph
from mrcnn.modeling.model import MaskRCNN

log = logging.getLogger(__name__)

INPUT_NAMES = onnx_model.INPUT_NAMES


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
        "detections_per_img": model.roi_heads.detection_layer.detections_per_img,
        # the detection layer's settings as traced (they may differ from `config`'s)
        "score_thresh": float(model.roi_heads.detection_layer.score_thresh),
        "nms_thresh": float(model.roi_heads.detection_layer.nms_thresh),
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
    Run it with `mrcnn.export.onnx_model.OnnxModel(path)`.
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
    matched mask has IoU >= 0.98. -> {"file", "contains", "ok", "checked", **the comparison}:
    a check that compared nothing (no detection on either side) keeps the file with "ok": False,
    "checked": "nothing compared" and a warning; it does not count as passed."""
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
    if report["matched_fraction"] is None:  # no detection on either side: nothing was checked
        log.warning(
            "ONNX check compared nothing: neither eager nor ONNX found a detection on the %d "
            "check images (score threshold %.2f); the file is kept but unchecked (give the "
            "export images with objects, e.g. the val shards)",
            report["num_images"],
            model.roi_heads.detection_layer.score_thresh,
        )
        return {**_written(path), "ok": False, "checked": "nothing compared", **report}
    mask_ok = report["min_mask_iou"] is None or report["min_mask_iou"] >= MIN_MASK_IOU
    ok = report["matched_fraction"] >= MIN_MATCHED_FRACTION and mask_ok
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
    return {**_written(path), "ok": True, "checked": "agrees with eager", **report}


def _written(path: Path) -> dict[str, str]:
    return {"file": str(path), "contains": "the whole inference graph"}
