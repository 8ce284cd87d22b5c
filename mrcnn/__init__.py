"""Mask R-CNN (He et al., 2017) in PyTorch + torchvision.

import mrcnn
model = mrcnn.build_model(mrcnn.presets.shapes_small())
detections = model.detect([image])        # uint8 H x W x 3 -> list[mrcnn.Detections]

Subpackages reachable from `import mrcnn`: `mrcnn.presets` (configs), `mrcnn.data` (shard
format, resize/pad, mini-masks, loaders), `mrcnn.weights` (torchvision checkpoint import) and
`mrcnn.export` (ONNX / torch.export). Names and subpackages are imported on first use
(PEP 562), so the torch-free parts (`mrcnn.onnx_model.OnnxModel`, `mrcnn.detections`,
`mrcnn.images`) load in a process that has only numpy, Pillow and onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mrcnn import data, export, presets, weights  # noqa: F401 (submodules, for checkers)
    from mrcnn.config import Config
    from mrcnn.detections import Detections
    from mrcnn.model import MaskRCNN, build_model
    from mrcnn.structures import Batch

__all__ = [
    "Batch",
    "Config",
    "Detections",
    "MaskRCNN",
    "build_model",
    "data",
    "presets",
    "weights",
]

_NAMES = {
    "Batch": "mrcnn.structures",
    "Config": "mrcnn.config",
    "Detections": "mrcnn.detections",
    "MaskRCNN": "mrcnn.model",
    "build_model": "mrcnn.model",
}
_SUBMODULES = ("data", "export", "presets", "weights")


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"mrcnn.{name}")
    raise AttributeError(f"module 'mrcnn' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES, *_SUBMODULES])
