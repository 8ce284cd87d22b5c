"""Data: resize/pad, mini-masks, the shard format, augmentation and collate.

Names are imported on first use (PEP 562): `mrcnn.data.resize` loads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mrcnn.data.loader import TrainLoader, collate, eval_batches, hflip_sample
    from mrcnn.data.minimask import expand_mini_masks, make_mini_masks
    from mrcnn.data.resize import resize_and_pad
    from mrcnn.data.shards import Sample, ShardDataset

__all__ = [
    "Sample",
    "ShardDataset",
    "TrainLoader",
    "collate",
    "eval_batches",
    "expand_mini_masks",
    "hflip_sample",
    "make_mini_masks",
    "resize_and_pad",
]

_NAMES = {
    "Sample": "mrcnn.data.shards",
    "ShardDataset": "mrcnn.data.shards",
    "TrainLoader": "mrcnn.data.loader",
    "collate": "mrcnn.data.loader",
    "eval_batches": "mrcnn.data.loader",
    "hflip_sample": "mrcnn.data.loader",
    "expand_mini_masks": "mrcnn.data.minimask",
    "make_mini_masks": "mrcnn.data.minimask",
    "resize_and_pad": "mrcnn.data.resize",
}


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'mrcnn.data' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES])
