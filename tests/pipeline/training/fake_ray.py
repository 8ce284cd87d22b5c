"""A one-worker stand-in for the parts of Ray Train that `pipeline.training.loop` and
`pipeline.training.checkpoints` call, so the worker loop runs in the test process in seconds.

What a real run does and this keeps: each `ray.train.report` is a checkpoint directory copied
into the run's storage folder as `checkpoint_<n>` (Ray names them in increasing order) by the
caller's `checkpoint_upload_fn` when it passes one (as Ray >= 2.51 does), the
run's storage is a local pyarrow filesystem (`get_context().get_storage()`), and
`ray.train.get_checkpoint()` returns the checkpoint registered for a restarted run (or None).
The real Ray Train is tested end to end in tests/pipeline/stages/test_train.py (slow).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs
import pytest


@dataclass
class _Storage:
    experiment_fs_path: str
    storage_filesystem: Any = field(default_factory=pyarrow.fs.LocalFileSystem)


@dataclass
class _Context:
    storage: _Storage
    rank: int = 0
    world: int = 1

    def get_world_rank(self) -> int:
        return self.rank

    def get_world_size(self) -> int:
        return self.world

    def get_storage(self) -> _Storage:
        return self.storage


class _Node:
    def get_node_id(self) -> str:
        return "node-under-test"


@dataclass
class FakeRayTrain:
    """`install` it, then call the code under test. `reports` holds (metrics, checkpoint dir)
    per `ray.train.report`; `registered` is what `get_checkpoint` returns (a path or None)."""

    run_dir: Path
    rank: int = 0
    registered: Path | None = None
    reports: list[tuple[dict[str, Any], Path]] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeRayTrain:
        import ray
        import ray.train
        import ray.train.torch
        import torch

        self.run_dir.mkdir(parents=True, exist_ok=True)
        context = _Context(_Storage(str(self.run_dir)), rank=self.rank)
        monkeypatch.setattr(ray.train, "get_context", lambda: context)
        monkeypatch.setattr(ray.train, "get_checkpoint", self._checkpoint)
        monkeypatch.setattr(ray.train, "report", self._report)
        monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
        monkeypatch.setattr(ray.train.torch, "prepare_model", lambda model: model)
        monkeypatch.setattr(ray, "get_runtime_context", _Node)
        return self

    def _checkpoint(self):
        import ray.train

        if self.registered is None:
            return None
        return ray.train.Checkpoint(str(self.registered), filesystem=pyarrow.fs.LocalFileSystem())

    def _report(self, metrics: dict[str, Any], checkpoint=None, checkpoint_upload_fn=None) -> None:
        path = self.run_dir / f"checkpoint_{len(list(self.run_dir.glob('checkpoint_*'))):06d}"
        if checkpoint_upload_fn is not None:
            stored = checkpoint_upload_fn(checkpoint, path.name)
            assert Path(stored.path) == path, stored.path
        else:
            with checkpoint.as_directory() as d:
                shutil.copytree(d, path)
        self.reports.append((dict(metrics), path))
