"""Data: resize/pad, mini-masks, the shard format, augmentation and collate.

Names are imported on first use (PEP 562): `mrcnn.data.resize` loads without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrcnn.lazy import lazy_names

if TYPE_CHECKING:
    from mrcnn.data.augment import Augmentation, augment_sample
    from mrcnn.data.class_map import ClassInfo, ClassMap, category_ids, read_class_map
    from mrcnn.data.loader import TrainLoader, collate, eval_batches, hflip_sample
    from mrcnn.data.minimask import expand_mini_masks, make_mini_masks
    from mrcnn.data.resize import resize_and_pad
    from mrcnn.data.shards import Sample, ShardDataset, ShardReadError

__all__ = [
    "Augmentation",
    "ClassInfo",
    "ClassMap",
    "Sample",
    "ShardDataset",
    "ShardReadError",
    "TrainLoader",
    "augment_sample",
    "category_ids",
    "collate",
    "eval_batches",
    "expand_mini_masks",
    "hflip_sample",
    "make_mini_masks",
    "read_class_map",
    "resize_and_pad",
]

_MODULES = {
    "mrcnn.data.augment": ("Augmentation", "augment_sample"),
    "mrcnn.data.class_map": ("ClassInfo", "ClassMap", "category_ids", "read_class_map"),
    "mrcnn.data.loader": ("TrainLoader", "collate", "eval_batches", "hflip_sample"),
    "mrcnn.data.minimask": ("expand_mini_masks", "make_mini_masks"),
    "mrcnn.data.resize": ("resize_and_pad",),
    "mrcnn.data.shards": ("Sample", "ShardDataset", "ShardReadError"),
}


__getattr__, __dir__ = lazy_names(__name__, _MODULES)
