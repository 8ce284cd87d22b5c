"""`pipeline.device.resolve_device`: a params device value -> a torch device string."""

from __future__ import annotations

import pytest
import torch

from pipeline.device import DEVICE_PATTERN, resolve_device


def test_auto_is_cuda_only_where_there_is_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"


def test_cuda_without_cuda_names_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu", "evaluate.device") == "cpu"
    with pytest.raises(RuntimeError, match="evaluate.device is 'cuda:0' but no CUDA"):
        resolve_device("cuda:0", "evaluate.device")


def test_the_pattern_params_check_against():
    assert all(DEVICE_PATTERN.fullmatch(d) for d in ("auto", "cpu", "cuda", "cuda:3"))
    assert not any(DEVICE_PATTERN.fullmatch(d) for d in ("gpu", "cuda:", "cuda:x", "mps"))
