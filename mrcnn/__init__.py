"""Mask R-CNN (He et al., 2017) in PyTorch + torchvision.

import mrcnn
model = mrcnn.build_model(mrcnn.presets.shapes_small())
detections = model.detect([image])        # uint8 H x W x 3 -> list[mrcnn.Detections]

Layout (grouped as detectron2 does):

    config presets structures weights solver   the few top-level modules
    layers/      box coder, NMS into fixed slots, matcher + sampler, poolers, resampling
    modeling/    backbone, anchors, RPN, RoI heads, targets, losses, MaskRCNN / build_model
    inference/   detection layer; torch-free post-processing, mask paste, grid masks, tiling
    export/      the static graph, ONNX / torch.export, OnnxModel (torch-free)
    evaluation/  dataset prediction, COCO results, COCOeval
    visualize/   instances, anchors, figures, the model step by step
    data/        shard format, resize/pad, mini-masks, augmentation, loaders, image decoding

Reachable from `import mrcnn`: `mrcnn.presets`, `mrcnn.data`, `mrcnn.weights`, `mrcnn.export`,
`mrcnn.evaluation`. Names and subpackages are imported on first use (PEP 562), so the
torch-free parts (`mrcnn.export.OnnxModel`, `mrcnn.Detections`, `mrcnn.inference`'s
post-processing) load in a process that has only numpy, Pillow and onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrcnn.lazy import lazy_names

if TYPE_CHECKING:
    from mrcnn import data, evaluation, export, presets, weights  # noqa: F401 (for checkers)
    from mrcnn.config import Config
    from mrcnn.inference.detections import Detections
    from mrcnn.modeling.model import MaskRCNN, build_model
    from mrcnn.structures import Batch

__all__ = [
    "Batch",
    "Config",
    "Detections",
    "MaskRCNN",
    "build_model",
    "data",
    "evaluation",
    "export",
    "presets",
    "weights",
]

_MODULES = {
    "mrcnn.structures": ("Batch",),
    "mrcnn.config": ("Config",),
    "mrcnn.inference.detections": ("Detections",),
    "mrcnn.modeling.model": ("MaskRCNN", "build_model"),
}
_SUBMODULES = ("data", "evaluation", "export", "presets", "weights")
__getattr__, __dir__ = lazy_names(__name__, _MODULES, _SUBMODULES)
