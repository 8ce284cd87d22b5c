"""Shared by the loop tests: each test gets torch's thread count, MLflow's tracking URI and a
fault-free environment back."""

from __future__ import annotations

import mlflow
import pytest
import torch

from pipeline.training import faults


@pytest.fixture(autouse=True)
def restore_torch_threads(monkeypatch):
    """`train_loop` sets torch's thread count (train.cpus_per_worker) and MLflow's tracking URI:
    give the rest of the session its own back."""
    threads, uri = torch.get_num_threads(), mlflow.get_tracking_uri()
    monkeypatch.delenv(faults.ENV, raising=False)  # no fault unless a test injects one
    yield
    torch.set_num_threads(threads)
    mlflow.set_tracking_uri(uri)  # RankZeroLog sets the run's
