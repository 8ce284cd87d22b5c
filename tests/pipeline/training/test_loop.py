"""The worker loop (`train_loop`) in this process, one worker, under a stand-in for Ray Train
(`fake_ray`): iterations, checkpoints and what MLflow gets, the non-finite stop, and a resume
that neither skips nor repeats an iteration. Plus rank 0's logging cadence (`RankZeroLog`) with
hand-set losses. The real Ray Train runs in tests/pipeline/stages/test_train.py (slow)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mlflow
import pytest
import torch

from mrcnn import presets
from mrcnn.modeling.model import build_model
from pipeline.paramfile import to_dict
from pipeline.train_params import TrainParams
from pipeline.training import faults, loop
from pipeline.training.checkpoints import (
    NONFINITE_FILE,
    NonFiniteLossError,
    load_state,
    parameters_digest,
    raise_if_nonfinite,
)
from tests.pipeline.registry_helpers import fresh_store
from tests.pipeline.tiny_model import TINY_MODEL
from tests.pipeline.training.fake_ray import FakeRayTrain

LOSS_KEYS = {
    "loss",
    "loss_rpn_objectness",
    "loss_rpn_box",
    "loss_classifier",
    "loss_box",
    "loss_mask",
}


@pytest.fixture(autouse=True)
def _restore_torch_threads(monkeypatch):
    """`train_loop` sets torch's thread count (train.cpus_per_worker) and MLflow's tracking URI:
    give the rest of the session its own back."""
    threads, uri = torch.get_num_threads(), mlflow.get_tracking_uri()
    monkeypatch.delenv(faults.ENV, raising=False)  # no fault unless a test injects one
    yield
    torch.set_num_threads(threads)
    mlflow.set_tracking_uri(uri)  # RankZeroLog sets the run's


def _config(shards: Path, uri: str, run_id: str, **train) -> dict:
    params = TrainParams(
        **{
            "num_workers": 1,
            "cpus_per_worker": 1,
            "batch_size": 2,
            "reference_batch": 2,
            "iterations": 4,
            "checkpoint_every": 2,
            "log_every": 1,
            "warmup_iters": 1,
            "max_gt": 8,
            **train,
        }
    )
    return {
        "train": to_dict(params),
        "model": presets.shapes_small(num_classes=4, image_size=64, **TINY_MODEL).to_dict(),
        "shards": str(shards),
        "val_annotations": "",
        "mlflow": {"tracking_uri": uri, "run_id": run_id},
    }


def _new_run(uri: str) -> str:
    client = mlflow.MlflowClient(uri)
    return client.create_run(client.create_experiment("loop")).info.run_id


def _history(uri: str, run_id: str, key: str = "loss") -> dict[int, float]:
    return {m.step: m.value for m in mlflow.MlflowClient(uri).get_metric_history(run_id, key)}


@pytest.fixture(scope="module")
def uninterrupted(tiny_shards, tmp_path_factory) -> dict:
    """4 iterations, a checkpoint every 2, every step logged."""
    root = tmp_path_factory.mktemp("loop")
    uri = fresh_store(root)
    run_id = _new_run(uri)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(faults.ENV, raising=False)
        threads, previous = torch.get_num_threads(), mlflow.get_tracking_uri()
        ray = FakeRayTrain(root / "run").install(mp)
        try:
            loop.train_loop(_config(tiny_shards, uri, run_id))
        finally:
            torch.set_num_threads(threads)
            mlflow.set_tracking_uri(previous)
    return {"root": root, "uri": uri, "run_id": run_id, "reports": ray.reports}


def test_steps_checkpoints_and_logged_metrics(uninterrupted):
    reports = uninterrupted["reports"]
    assert [m["iteration"] for m, _ in reports] == [2, 4]
    assert all(math.isfinite(m["loss"]) for m, _ in reports)
    states = [load_state(path / "state.pt") for _, path in reports]
    assert [s["iteration"] for s in states] == [2, 4]
    assert [s["resumes"] for s in states] == [0, 0]
    assert states[1]["scheduler"]["last_epoch"] == 4  # one scheduler step per iteration
    assert all((path / "rng_rank0.pt").is_file() for _, path in reports)
    # Only the last checkpoint carries the digest of the weights (and the node) it reports.
    first, last = reports[0][1], reports[1][1]
    assert not (first / "weights_rank0.sha256").exists()
    model = build_model(presets.shapes_small(num_classes=4, image_size=64, **TINY_MODEL))
    model.load_state_dict(states[1]["model"])
    assert (last / "weights_rank0.sha256").read_text() == parameters_digest(model)
    assert (last / "node_rank0.txt").read_text() == "node-under-test"
    # The weights moved between the two checkpoints: the optimizer stepped.
    moved = [k for k, v in states[0]["model"].items() if not torch.equal(v, states[1]["model"][k])]
    assert moved

    uri, run_id = uninterrupted["uri"], uninterrupted["run_id"]
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["train.status"] == "running"
    assert LOSS_KEYS | {"lr", "images_per_s", "memory_gb"} <= set(run.data.metrics)
    losses = _history(uri, run_id)
    assert sorted(losses) == [1, 2, 3, 4]  # log_every 1: every iteration, numbered from 1
    assert losses[2] == pytest.approx(reports[0][0]["loss"], rel=1e-6)
    assert losses[4] == pytest.approx(reports[1][0]["loss"], rel=1e-6)
    # warmup 1 iteration, then cosine from lr 1e-3 to 0 over the last 3
    lrs = _history(uri, run_id, "lr")
    assert lrs[4] == pytest.approx(0.0, abs=1e-12) and lrs[1] > lrs[3] > lrs[4]


@pytest.mark.parametrize("loader_workers", [0, 1])
def test_a_resume_continues_at_the_next_iteration_with_the_same_losses(
    uninterrupted, tiny_shards, tmp_path, monkeypatch, loader_workers
):
    """Restart from the checkpoint of iteration 2: iterations 3 and 4 run once each, with the
    losses and final weights of the uninterrupted run (same batches, same RoI sampling). Also
    with DataLoader worker processes: `train.loader_workers` does not change what is trained
    (a changed value resumes the same run), so it must not shift the sampling RNG either."""
    _, at_two = uninterrupted["reports"][0]
    run_dir = tmp_path / "run"
    shutil.copytree(at_two, run_dir / "checkpoint_000000")
    ray = FakeRayTrain(run_dir, registered=run_dir / "checkpoint_000000").install(monkeypatch)
    uri = fresh_store(tmp_path)
    run_id = _new_run(uri)
    loop.train_loop(_config(tiny_shards, uri, run_id, loader_workers=loader_workers))

    assert [m["iteration"] for m, _ in ray.reports] == [4]
    assert sorted(_history(uri, run_id)) == [3, 4]
    for key in LOSS_KEYS:
        full = _history(uninterrupted["uri"], uninterrupted["run_id"], key)
        ours = _history(uri, run_id, key)
        assert ours == pytest.approx({3: full[3], 4: full[4]}, rel=1e-6, abs=1e-9), key
    state = load_state(ray.reports[0][1] / "state.pt")
    assert state["iteration"] == 4 and state["resumes"] == 1
    reference = load_state(uninterrupted["reports"][1][1] / "state.pt")["model"]
    for k, v in reference.items():
        torch.testing.assert_close(state["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert mlflow.MlflowClient(uri).get_run(run_id).data.tags["train.status"] == "resumed"


def test_a_non_finite_loss_stops_before_the_step_and_says_where(tiny_shards, tmp_path, monkeypatch):
    """NaN at iteration 2 (0-based: the third): rank 0 writes the marker, no further step or
    checkpoint happens, the MLflow run is FAILED, and the driver's check raises."""
    spec = tmp_path / "faults.json"
    spec.write_text(json.dumps({"nan_iteration": 2}))
    monkeypatch.setenv(faults.ENV, str(spec))
    ray = FakeRayTrain(tmp_path / "run").install(monkeypatch)
    uri = fresh_store(tmp_path)
    run_id = _new_run(uri)
    loop.train_loop(_config(tiny_shards, uri, run_id))

    assert [m["iteration"] for m, _ in ray.reports] == [2]
    marker = json.loads((tmp_path / "run" / NONFINITE_FILE).read_text())
    assert marker["iteration"] == 2
    assert set(marker["losses"]) == LOSS_KEYS - {"loss"}
    assert all(math.isfinite(v) for v in marker["losses"].values())  # the terms were finite
    assert sorted(_history(uri, run_id)) == [1, 2]  # the NaN step was never logged
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "FAILED"
    with pytest.raises(NonFiniteLossError, match="iteration 2"):
        raise_if_nonfinite(tmp_path / "run")


# ---- rank 0's log --------------------------------------------------------------------------


def _losses(value: float) -> dict[str, torch.Tensor]:
    return {"loss_a": torch.tensor(value), "loss_b": torch.tensor(2 * value)}


def test_rank_zero_log_averages_over_each_window_and_logs_the_last_step(tmp_path):
    uri = fresh_store(tmp_path)
    run_id = _new_run(uri)
    log = loop.RankZeroLog({"tracking_uri": uri, "run_id": run_id}, enabled=True, resumed=False)
    cpu = torch.device("cpu")
    try:
        for it, value in enumerate([1.0, 3.0, 5.0, 7.0, 9.0], start=1):
            log.step(it, _losses(value), torch.tensor(10 * value), 0.1 * it, 4, cpu, 2, 5)
    finally:
        log.close()
    assert _history(uri, run_id, "loss_a") == {2: 2.0, 4: 6.0, 5: 9.0}
    assert _history(uri, run_id, "loss_b") == {2: 4.0, 4: 12.0, 5: 18.0}
    assert _history(uri, run_id, "loss") == {2: 20.0, 4: 60.0, 5: 90.0}
    assert _history(uri, run_id, "lr") == pytest.approx({2: 0.2, 4: 0.4, 5: 0.5})
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["train.status"] == "running"
    assert run.data.metrics["images_per_s"] > 0 and run.data.metrics["memory_gb"] > 0


def test_rank_zero_log_is_silent_on_other_ranks_and_marks_a_resume(tmp_path):
    uri = fresh_store(tmp_path)
    run_id = _new_run(uri)
    quiet = loop.RankZeroLog({"tracking_uri": "unused://", "run_id": "x"}, False, False)
    quiet.step(2, _losses(1.0), torch.tensor(1.0), 0.1, 4, torch.device("cpu"), 1, 2)
    quiet.close()
    assert quiet.count == 0 and mlflow.active_run() is None
    log = loop.RankZeroLog({"tracking_uri": uri, "run_id": run_id}, enabled=True, resumed=True)
    log.close("FAILED")
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.data.tags["train.status"] == "resumed" and run.info.status == "FAILED"


def test_all_finite_and_hms():
    assert loop.all_finite(torch.tensor(1.5), 1)
    assert not loop.all_finite(torch.tensor(float("nan")), 1)
    assert not loop.all_finite(torch.tensor(float("inf")), 1)
    assert [loop.hms(s) for s in (0, 59.9, 61, 3599, 3600, 7325)] == [
        "0m00s",
        "0m59s",
        "1m01s",
        "59m59s",
        "1h00m",
        "2h02m",
    ]


def test_augmentation_follows_the_train_keys():
    p = TrainParams(hflip=False, scale_jitter=(0.5, 1.5), random_crop=(0.6, 1.0))
    aug = loop.augmentation(p)
    assert (aug.hflip, aug.scale_range, aug.crop, aug.short_sides) == (
        False,
        (0.5, 1.5),
        (0.6, 1.0),
        (),
    )
    plain = loop.augmentation(TrainParams())
    assert plain.scale_range is None and plain.crop is None and not plain.geometric
