"""A train stage that fails keeps the last success's outputs and says so in MLflow; the wall
time of a run adds up over its attempts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from pipeline.params import Params
from pipeline.stages import train
from pipeline.stages.train import TrainPaths
from pipeline.tracking.store import Tracking
from pipeline.train_params import TrainParams
from pipeline.training import driver
from tests.pipeline.registry_helpers import fresh_store
from tests.pipeline.tiny_model import TINY_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

OUTPUTS = (
    "models/final/model.safetensors",
    "models/final/config.json",
    "metrics/train.json",
    "metrics/train_run.json",
    "reports/train/losses.csv",
    "reports/train/losses.png",
)


def _paths(root: Path, shards: Path, uri: str) -> TrainPaths:
    return TrainPaths(
        shards=shards,
        model_dir=root / "models/final",
        metrics=root / "metrics/train.json",
        run_info=root / "metrics/train_run.json",
        reports=root / "reports/train",
        storage=root / "runs",
        tracking=Tracking(uri, "e"),
    )


def _train(root: Path, shards: Path, uri: str) -> dict:
    params = TrainParams(
        num_workers=1,
        cpus_per_worker=1,
        batch_size=2,
        reference_batch=2,
        iterations=3,
        checkpoint_every=3,
        log_every=1,
        warmup_iters=1,
        max_gt=8,
        run_name="t",
        storage_path=str(root / "runs"),
    )
    model = {"preset": "shapes_small", **TINY_MODEL}
    return train.run(Params(train=params, model=model), _paths(root, shards, uri))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in OUTPUTS}


def _run(uri: str, run_id: str):
    return mlflow.MlflowClient(uri).get_run(run_id)


def test_a_failure_at_the_end_keeps_the_last_outputs_and_wall_time_adds_up(
    tmp_path, tiny_shards, monkeypatch
):
    uri = fresh_store(tmp_path)
    first = _train(tmp_path, tiny_shards, uri)
    assert first["attempts"] == 1 and first["iterations"] == 3
    run = _run(uri, first["mlflow_run_id"])
    assert run.data.tags["train.status"] == "finished" and run.info.status == "FINISHED"
    before = _snapshot(tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    # The same run again (it resumes its last checkpoint), failing after the model is built.
    monkeypatch.setattr(train, "write_loss_reports", broken)
    with pytest.raises(OSError, match="disk full"):
        _train(tmp_path, tiny_shards, uri)
    assert _snapshot(tmp_path) == before  # model, metrics and losses of the first success
    run = _run(uri, first["mlflow_run_id"])
    assert run.data.tags["train.status"] == "failed" and run.info.status == "FAILED"
    assert run.data.tags["train.error"] == "OSError: disk full"

    monkeypatch.undo()
    third = _train(tmp_path, tiny_shards, uri)
    attempts = driver.read_attempts(tmp_path / "runs" / third["run_name"])
    assert [a["status"] for a in attempts] == ["finished", "failed", "finished"]
    assert third["attempts"] == 3
    assert third["wall_s"] == round(sum(a["wall_s"] for a in attempts), 1)
    assert third["wall_s"] >= first["wall_s"]
    # how long and how often: the run's record (train_run.json), not a metric to compare
    assert json.loads((tmp_path / "metrics/train_run.json").read_text())["attempts"] == 3
    assert "attempts" not in json.loads((tmp_path / "metrics/train.json").read_text())
    assert _run(uri, first["mlflow_run_id"]).data.tags["train.status"] == "finished"


def test_use_gpu_without_a_gpu_fails_at_once_and_keeps_the_last_outputs(
    tmp_path, tiny_shards, caplog
):
    fresh_store(tmp_path)
    doc = {
        "train": {"use_gpu": True, "cpus_per_worker": 1, "iterations": 3, "run_name": "g"},
        "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "e"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    for name in OUTPUTS:  # what an earlier success left
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"old {name}")
    before = _snapshot(tmp_path)
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--params", str(tmp_path / "params.yaml"), "--shards", str(tiny_shards)])
    assert exit_info.value.code == 1
    assert time.monotonic() - start < 60  # Ray is up (ray_session): no waiting for a GPU
    err = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(err) == 1 and "\n" not in err[0]
    assert "train.use_gpu is true" in err[0] and "Ray sees 2 CPUs and 0 GPUs" in err[0]
    assert _snapshot(tmp_path) == before
    # refused before the MLflow run is opened: no FAILED run for a run that never started
    # (issue 22 item 10)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("e")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []
