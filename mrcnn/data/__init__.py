"""Data: resize/pad, mini-masks, the shard format, augmentation and collate."""

from mrcnn.data.class_map import ClassInfo, ClassMap, category_ids, read_class_map
from mrcnn.data.loader import TrainLoader, collate, eval_batches, hflip_sample
from mrcnn.data.minimask import expand_mini_masks, make_mini_masks
from mrcnn.data.resize import resize_and_pad
from mrcnn.data.shards import Sample, ShardDataset

__all__ = [
    "ClassInfo",
    "ClassMap",
    "Sample",
    "ShardDataset",
    "TrainLoader",
    "category_ids",
    "collate",
    "eval_batches",
    "expand_mini_masks",
    "hflip_sample",
    "make_mini_masks",
    "read_class_map",
    "resize_and_pad",
]
