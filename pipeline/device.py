"""The device a params value names (`evaluate.device`, `predict.device`), for any part of the
pipeline that runs a model: `auto`, `cpu`, `cuda` or `cuda:N`."""

from __future__ import annotations

import re

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(device: str, key: str = "device") -> str:
    """A params `device` value -> a torch device string: "auto" is cuda when available; a cuda
    device without CUDA raises `RuntimeError` naming `key`."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"{key} is {device!r} but no CUDA device is available")
    return device
