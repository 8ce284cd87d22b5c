"""Data: resize/pad, mini-masks, the shard format, augmentation and collate."""

from mrcnn.data.minimask import expand_mini_masks, make_mini_masks
from mrcnn.data.resize import resize_and_pad

__all__ = ["expand_mini_masks", "make_mini_masks", "resize_and_pad"]
