"""`HostReads`: the tensor -> Python value reads our code makes (what is a host sync on a GPU),
recorded on any device. A CPU stand-in for `torch.cuda.set_sync_debug_mode`, which
`bench/train_gpu.py` uses on a GPU."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode


class HostReads(TorchFunctionMode):
    """Records every tensor -> Python value read (what is a host sync on a GPU) made by our
    code, with the caller's file:line. torch's own reads are left out: AdamW reads its step
    count, which is a CPU tensor even on a GPU run."""

    READS = {
        Tensor.item,
        Tensor.tolist,
        Tensor.__bool__,
        Tensor.__float__,
        Tensor.__int__,
        Tensor.__index__,
        Tensor.numpy,
        Tensor.nonzero,
        torch.nonzero,
    }

    def __init__(self) -> None:
        super().__init__()
        self.sites: list[str] = []
        self.paths: list[str] = []
        self.spans: list[int] = []

    def mark(self) -> None:
        """Starts a new span of reads (e.g. at every training iteration)."""
        self.spans.append(len(self.sites))

    def by_span(self, folder: str) -> list[Counter]:
        """Per span since each `mark`: {file:line: reads} of the sites in files under `folder`
        (e.g. "pipeline/training")."""
        ends = [*self.spans[1:], len(self.sites)]
        return [
            Counter(
                s
                for s, path in zip(self.sites[a:b], self.paths[a:b], strict=True)
                if folder in path
            )
            for a, b in zip(self.spans, ends, strict=True)
        ]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            frame = sys._getframe(1)  # the caller of the read (a method's C call adds none)
            if f"{os.sep}torch{os.sep}" not in frame.f_code.co_filename:
                path = frame.f_code.co_filename
                self.sites.append(f"{Path(path).name}:{frame.f_lineno}")
                self.paths.append(Path(path).as_posix())
        return func(*args, **(kwargs or {}))
