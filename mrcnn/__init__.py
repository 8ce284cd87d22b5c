"""Mask R-CNN (He et al., 2017) in PyTorch + torchvision.

import mrcnn
model = mrcnn.build_model(mrcnn.presets.shapes_small())
detections = model.detect([image])        # uint8 H x W x 3 -> list[mrcnn.Detections]

Subpackages reachable from `import mrcnn`: `mrcnn.presets` (configs), `mrcnn.data` (shard
format, resize/pad, mini-masks, loaders) and `mrcnn.weights` (torchvision checkpoint import).
"""

from mrcnn import data, presets, weights
from mrcnn.config import Config
from mrcnn.model import MaskRCNN, build_model
from mrcnn.structures import Batch, Detections

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
