"""Fault injection for the tests: a worker killed (at an iteration, or mid-upload of a checkpoint)
or a loss made NaN at a chosen iteration.

Never part of the public API: the tests write a JSON spec to the file named by the environment
variable `MRCNN_TEST_FAULTS` (set before Ray starts, so every Ray worker inherits it) and remove
it afterwards. Without the variable nothing is read and nothing happens.

    {"kill": {"rank": 1, "iteration": 4, "marker": "/tmp/x"}}   SIGKILL that worker once
    {"nan_iteration": 4}                                         that iteration's loss is NaN
    {"corrupt_iteration": 5}     noise (std 1, the same on every rank) added to every weight
                                 before that iteration: the validation metric collapses
    {"cut_upload": {"rank": 0, "iteration": 4, "file": "state.pt", "fraction": 0.5,
                    "marker": "/tmp/y"}}
        SIGKILL that worker once while it uploads the checkpoint of iteration 4, after that
        fraction of that file (1.0: after the whole file, before the next one)
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ENV = "MRCNN_TEST_FAULTS"


def load() -> dict[str, Any]:
    """The spec in force for this worker ({} when none)."""
    path = os.environ.get(ENV)
    if not path or not Path(path).is_file():
        return {}
    return json.loads(Path(path).read_text() or "{}")


def inject(spec: dict[str, Any], rank: int, iteration: int) -> bool:
    """Kill this process if `spec` says so (once: the marker file records it); True when this
    iteration's loss must be made NaN."""
    kill = spec.get("kill")
    if kill and kill["rank"] == rank and kill["iteration"] == iteration:
        marker = Path(kill["marker"])
        if not marker.exists():
            marker.write_text(f"killed rank {rank} at iteration {iteration}\n")
            os.kill(os.getpid(), signal.SIGKILL)
    return spec.get("nan_iteration") == iteration


@dataclass(frozen=True)
class UploadCut:
    """Where an upload dies: after `fraction` of the file `file` (`pipeline.training.
    checkpoint_files.upload` asks `bytes_of` for every file it copies and calls `kill`)."""

    file: str
    fraction: float
    marker: Path

    def bytes_of(self, name: str, size: int) -> int | None:
        """How many bytes of the file `name` (of `size` bytes) are written before the kill;
        None for a file copied whole."""
        return int(size * self.fraction) if name == self.file else None

    def kill(self) -> None:
        self.marker.write_text(f"killed while uploading {self.file}\n")
        os.kill(os.getpid(), signal.SIGKILL)


def upload_cut(spec: dict[str, Any], rank: int, iteration: int) -> UploadCut | None:
    """The cut of this rank's upload of the checkpoint of `iteration`, if `spec` has one not
    done yet (its marker file records it)."""
    cut = spec.get("cut_upload")
    if not cut or cut["rank"] != rank or cut["iteration"] != iteration:
        return None
    marker = Path(cut["marker"])
    return None if marker.exists() else UploadCut(cut["file"], cut["fraction"], marker)


def corrupt(spec: dict[str, Any], model: nn.Module, iteration: int) -> None:
    """Add seeded noise to every parameter of `model` if `spec` says so for `iteration` (the
    same noise on every rank, so DDP's copies stay equal)."""
    if spec.get("corrupt_iteration") != iteration:
        return
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
