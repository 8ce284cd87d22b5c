"""Portable export: the fixed-shape part of the model as ONNX, checked against eager PyTorch.

What the ONNX file contains (`BackboneRPN`), for a square input of side S (the model's
`image_size`) and any batch size B:

    inputs   images     uint8   [B, 3, S, S]  resized + zero-padded as `MaskRCNN.prepare` does
             windows    float32 [B, 4]        (y1, x1, y2, x2) of the real image in the frame
    outputs  p2 .. p6   float32 [B, C, S/4, S/4] .. [B, C, S/64, S/64]   FPN features
             objectness float32 [B, A]      RPN logits, anchors in `mrcnn.anchors` order
             deltas     float32 [B, A, 4]   RPN box deltas (dx, dy, dw, dh), same order

i.e. pixel normalisation, the ResNet + FPN backbone and the RPN head. What it does NOT contain:
anchors, the proposal layer (top-k + NMS), multi-level RoIAlign, the box and mask heads, the
detection layer (per-class NMS) and mask pasting. Those run in PyTorch (`MaskRCNN.forward`).

Why not the whole model: its post-processing has data-dependent shapes. Measured with torch
2.14 / torchvision 0.29: `torch.export` of `MaskRCNN.forward` stops at a data-dependent guard in
`torchvision.ops.batched_nms` (`boxes.numel() == 0`), and the TorchScript ONNX exporter rejects
the stable `torch.sort` of `mrcnn.nms`; a traced graph would also freeze Python branches such as
"skip an empty pyramid level" in `mrcnn.poolers`. The torch.export-based ONNX exporter needs
`onnxscript`, which is not a dependency, so the TorchScript-based exporter is used here.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mrcnn.model import MaskRCNN

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


def export_portable(
    model: MaskRCNN, path: str | Path, images: Sequence[np.ndarray] | None = None
) -> dict:
    """`export_onnx` then `check_onnx`; removes the file and raises if the check fails."""
    path = export_onnx(model, path)
    report = check_onnx(model, path, images)
    if not report["ok"]:
        path.unlink()
        raise RuntimeError(
            f"ONNX outputs differ from eager PyTorch beyond tolerance {report['tolerance']}: "
            f"max abs diff per output {report['max_abs_diff']}"
        )
    log.info("ONNX matches eager: worst relative diff %.2e", report["worst_relative"])
    return {"file": str(path), "contains": "normalise + backbone + FPN + RPN head", **report}
