"""Mask R-CNN (He et al., 2017) in PyTorch + torchvision."""

from mrcnn import presets
from mrcnn.config import Config
from mrcnn.structures import Batch, Detections

__all__ = ["Batch", "Config", "Detections", "presets"]
