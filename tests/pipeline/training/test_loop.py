"""The worker loop (`train_loop`) in this process, one worker, under a stand-in for Ray Train
(`fake_ray`): iterations, checkpoints and what MLflow gets, the non-finite stop (checked on log
steps and before checkpoints, not every iteration), and a resume that neither skips nor repeats
an iteration and ends bit for bit where the uninterrupted run ends, EMA included. Stopping
early (patience, time budget) is in test_loop_stopping.py. The real Ray Train runs in
tests/pipeline/stages/test_train.py (slow)."""

from __future__ import annotations

import json
import math
import shutil

import mlflow
import pytest
import torch

from mrcnn import presets
from mrcnn.modeling.model import build_model
from pipeline.train_params import TrainParams
from pipeline.training import faults, loop
from pipeline.training.checkpoints import (
    NONFINITE_FILE,
    NonFiniteLossError,
    load_state,
    parameters_digest,
    raise_if_nonfinite,
)
from pipeline.training.step import TrainStep
from tests.pipeline.registry_helpers import fresh_store
from tests.pipeline.tiny_model import TINY_MODEL
from tests.pipeline.training.fake_ray import FakeRayTrain
from tests.pipeline.training.host_reads import HostReads
from tests.pipeline.training.loop_helpers import loop_config, new_run

LOSS_KEYS = {
    "loss",
    "loss_rpn_objectness",
    "loss_rpn_box",
    "loss_classifier",
    "loss_box",
    "loss_mask",
}


def _history(uri: str, run_id: str, key: str = "train/loss") -> dict[int, float]:
    return {m.step: m.value for m in mlflow.MlflowClient(uri).get_metric_history(run_id, key)}


@pytest.fixture(scope="module")
def uninterrupted(tiny_shards, tmp_path_factory) -> dict:
    """4 iterations, a checkpoint every 2, every step logged, an EMA of the weights."""
    root = tmp_path_factory.mktemp("loop")
    uri = fresh_store(root)
    run_id = new_run(uri)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(faults.ENV, raising=False)
        threads, previous = torch.get_num_threads(), mlflow.get_tracking_uri()
        ray = FakeRayTrain(root / "run").install(mp)
        try:
            loop.train_loop(loop_config(tiny_shards, uri, run_id, ema_decay=0.9))
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
    assert [s["stopped"] for s in states] == [None, "iterations"]
    assert reports[1][0]["stopped"] == "iterations" and "stopped" not in reports[0][0]
    assert states[1]["scheduler"]["last_epoch"] == 4  # one scheduler step per iteration
    assert [s["ema"]["updates"] for s in states] == [2, 4]  # one EMA update per iteration
    assert all((path / "rng_rank0.pt").is_file() for _, path in reports)
    # Only the last checkpoint carries the digest of the weights (and the node) it reports.
    first, last = reports[0][1], reports[1][1]
    assert not (first / "weights_rank0.sha256").exists()
    model = build_model(presets.shapes_small(num_classes=4, image_size=64, **TINY_MODEL))
    model.load_state_dict(states[1]["model"])
    assert (last / "weights_rank0.sha256").read_text() == parameters_digest(model)
    ema = build_model(presets.shapes_small(num_classes=4, image_size=64, **TINY_MODEL))
    ema.load_state_dict(states[1]["ema"]["weights"])
    assert (last / "ema_rank0.sha256").read_text() == parameters_digest(ema)
    assert parameters_digest(ema) != parameters_digest(model)  # an average, not the weights
    assert (last / "node_rank0.txt").read_text() == "node-under-test"
    # The weights moved between the two checkpoints: the optimizer stepped.
    moved = [k for k, v in states[0]["model"].items() if not torch.equal(v, states[1]["model"][k])]
    assert moved

    uri, run_id = uninterrupted["uri"], uninterrupted["run_id"]
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["train.status"] == "running"
    logged = set(run.data.metrics)
    assert {f"train/{k}" for k in LOSS_KEYS | {"lr"}} <= logged
    assert {"train/perf/images_per_s", "train/perf/memory_gb"} <= logged
    losses = _history(uri, run_id)
    assert sorted(losses) == [1, 2, 3, 4]  # log_every 1: every iteration, numbered from 1
    assert losses[2] == pytest.approx(reports[0][0]["loss"], rel=1e-6)
    assert losses[4] == pytest.approx(reports[1][0]["loss"], rel=1e-6)
    # warmup 1 iteration, then cosine from lr 1e-3 to 0 over the last 3
    lrs = _history(uri, run_id, "train/lr")
    assert lrs[4] == pytest.approx(0.0, abs=1e-12) and lrs[1] > lrs[3] > lrs[4]


@pytest.mark.parametrize("loader_workers", [0, 1])
def test_a_resume_is_exact(uninterrupted, tiny_shards, tmp_path, monkeypatch, loader_workers):
    """Killed after the checkpoint of iteration 2 and started again: iterations 3 and 4 run
    once each with the same losses, to the last bit, as the uninterrupted run's (same batches,
    same RoI sampling), and end with the same weights and EMA, bit for bit (CPU, one thread).
    Also with DataLoader worker processes: `train.loader_workers` does not change what is
    trained (a changed value resumes the same run), so it must not shift the sampling RNG."""
    _, at_two = uninterrupted["reports"][0]
    run_dir = tmp_path / "run"
    shutil.copytree(at_two, run_dir / "checkpoint_000000")
    ray = FakeRayTrain(run_dir, registered=run_dir / "checkpoint_000000").install(monkeypatch)
    uri = fresh_store(tmp_path)
    run_id = new_run(uri)
    config = loop_config(tiny_shards, uri, run_id, ema_decay=0.9, loader_workers=loader_workers)
    loop.train_loop(config)

    assert [m["iteration"] for m, _ in ray.reports] == [4]
    assert sorted(_history(uri, run_id)) == [3, 4]
    for key in (f"train/{k}" for k in LOSS_KEYS):
        full = _history(uninterrupted["uri"], uninterrupted["run_id"], key)
        ours = _history(uri, run_id, key)
        assert ours == {3: full[3], 4: full[4]}, key  # exactly
    state = load_state(ray.reports[0][1] / "state.pt")
    assert state["iteration"] == 4 and state["resumes"] == 1
    reference = load_state(uninterrupted["reports"][1][1] / "state.pt")
    assert state["ema"]["updates"] == reference["ema"]["updates"] == 4
    for part in ("model", "optimizer", "ema"):  # weights, Adam moments, averaged weights
        ours, theirs = _flat(state[part]), _flat(reference[part])
        assert ours.keys() == theirs.keys() and len(ours) > 10, part
        for k, v in theirs.items():
            assert torch.equal(ours[k], v), k
    assert mlflow.MlflowClient(uri).get_run(run_id).data.tags["train.status"] == "resumed"


def test_a_resume_between_log_steps_logs_the_same_means(tiny_shards, tmp_path, monkeypatch):
    """log_every 3, checkpoint_every 2: the mean logged at step 3 covers iterations 1-3, so a run
    resumed from the checkpoint of iteration 2 must carry the losses of 1 and 2 in its window
    (the checkpoint's `loss_window`) to log what the uninterrupted run logs, to the last bit."""
    uri = fresh_store(tmp_path)
    full_id = new_run(uri)
    ray = FakeRayTrain(tmp_path / "full").install(monkeypatch)
    loop.train_loop(loop_config(tiny_shards, uri, full_id, log_every=3))
    assert sorted(_history(uri, full_id)) == [3, 4]

    FakeRayTrain(tmp_path / "again", registered=ray.reports[0][1]).install(monkeypatch)
    client = mlflow.MlflowClient(uri)
    resumed_id = client.create_run(client.get_run(full_id).info.experiment_id).info.run_id
    loop.train_loop(loop_config(tiny_shards, uri, resumed_id, log_every=3))
    for key in (f"train/{k}" for k in LOSS_KEYS):
        assert _history(uri, resumed_id, key) == _history(uri, full_id, key), key


def _flat(tree, prefix: str = "") -> dict:
    """Every tensor of a nested state dict by its path."""
    if torch.is_tensor(tree):
        return {prefix: tree}
    if not isinstance(tree, (dict, list, tuple)):
        return {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    return {k: v for key, sub in items for k, v in _flat(sub, f"{prefix}/{key}").items()}


def test_a_non_finite_loss_stops_before_the_step_and_says_where(tiny_shards, tmp_path, monkeypatch):
    """NaN at iteration 2 (0-based: the third): rank 0 writes the marker, no further step or
    checkpoint happens, the MLflow run is FAILED, and the driver's check raises."""
    spec = tmp_path / "faults.json"
    spec.write_text(json.dumps({"nan_iteration": 2}))
    monkeypatch.setenv(faults.ENV, str(spec))
    ray = FakeRayTrain(tmp_path / "run").install(monkeypatch)
    uri = fresh_store(tmp_path)
    run_id = new_run(uri)
    loop.train_loop(loop_config(tiny_shards, uri, run_id))

    assert [m["iteration"] for m, _ in ray.reports] == [2]
    marker = json.loads((tmp_path / "run" / NONFINITE_FILE).read_text())
    assert marker["iteration"] == 2
    assert set(marker["losses"]) == LOSS_KEYS - {"loss"}
    assert all(math.isfinite(v) for v in marker["losses"].values())  # the terms were finite
    assert sorted(_history(uri, run_id)) == [1, 2]  # the NaN step was never logged
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "FAILED"
    with pytest.raises(NonFiniteLossError, match="iteration 2"):
        raise_if_nonfinite(tmp_path / "run")


def test_a_non_finite_loss_between_checks_stops_at_the_next_check(
    tiny_shards, tmp_path, monkeypatch
):
    """No per-iteration sync: with log_every 4 the NaN of iteration 2 (0-based) is found at the
    check before the checkpoint of iteration 4 (checkpoint_every 2: the iteration-2 checkpoint
    was taken before it). The marker names iteration 2, the poisoned weights are never
    checkpointed, nothing is logged after iteration 2's window."""
    spec = tmp_path / "faults.json"
    spec.write_text(json.dumps({"nan_iteration": 2}))
    monkeypatch.setenv(faults.ENV, str(spec))
    ray = FakeRayTrain(tmp_path / "run").install(monkeypatch)
    uri = fresh_store(tmp_path)
    run_id = new_run(uri)
    loop.train_loop(loop_config(tiny_shards, uri, run_id, iterations=6, log_every=4))

    assert [m["iteration"] for m, _ in ray.reports] == [2]
    marker = json.loads((tmp_path / "run" / NONFINITE_FILE).read_text())
    assert marker["iteration"] == 2
    assert set(marker["losses"]) == LOSS_KEYS - {"loss"}
    assert _history(uri, run_id) == {}  # the first log step (4) found the NaN: nothing logged
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "FAILED"
    with pytest.raises(NonFiniteLossError, match="iteration 2"):
        raise_if_nonfinite(tmp_path / "run")


def test_accumulation_reads_accumulate_micro_batches_per_iteration(
    tiny_shards, tmp_path, monkeypatch
):
    """train.accumulate 2 at batch_size 1: the global batch (and so the schedule) is that of
    batch_size 2; each iteration reads two micro-batches, a resume starts the loader at the
    right one (iteration x accumulate), and the progress record follows the iterations."""
    read = []
    original = loop.TrainLoader.batch

    def counting(self, iteration):
        read.append(iteration)
        return original(self, iteration)

    monkeypatch.setattr(loop.TrainLoader, "batch", counting)
    ray = FakeRayTrain(tmp_path / "run").install(monkeypatch)
    uri = fresh_store(tmp_path)
    run_id = new_run(uri)
    config = loop_config(tiny_shards, uri, run_id, batch_size=1, reference_batch=2, accumulate=2)
    loop.train_loop(config)
    assert [m["iteration"] for m, _ in ray.reports] == [2, 4]
    assert read == list(range(8))  # 4 iterations x 2 micro-batches, in order
    assert sorted(_history(uri, run_id)) == [1, 2, 3, 4]
    record = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert record["iteration"] == 4 and record["total"] == 4 and record["stopped"] == "iterations"

    read.clear()
    resumed = FakeRayTrain(tmp_path / "again", registered=ray.reports[0][1]).install(monkeypatch)
    second = mlflow.MlflowClient(uri).create_run(
        mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id
    )
    loop.train_loop(loop_config(tiny_shards, uri, second.info.run_id, batch_size=1, accumulate=2))
    assert [m["iteration"] for m, _ in resumed.reports] == [4]
    assert read == [4, 5, 6, 7]


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


def test_the_loop_reads_the_host_only_on_log_and_checkpoint_steps(
    tiny_shards, tmp_path, monkeypatch
):
    """8 iterations, logged and checkpointed every 4, EMA on: between one optimizer step and the
    next, `pipeline/training` converts no tensor to a Python value (`HostReads`, the CPU
    stand-in for the GPU check's sync count) except after iterations 4 and 8 (the loss window's
    read, the checkpoint). The model's own data-dependent reads are docs/gpu.md's."""
    FakeRayTrain(tmp_path / "run").install(monkeypatch)
    uri = fresh_store(tmp_path)
    reads = HostReads()
    step = TrainStep.__call__

    def marked(self, *args, **kwargs):
        reads.mark()
        return step(self, *args, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", marked)
    config = loop_config(
        tiny_shards,
        uri,
        new_run(uri),
        iterations=8,
        log_every=4,
        checkpoint_every=4,
        ema_decay=0.9,
    )
    with reads:
        loop.train_loop(config)
    spans = reads.by_span("pipeline/training")
    assert len(spans) == 8
    quiet = {i + 1: dict(c) for i, c in enumerate(spans) if i + 1 not in (4, 8)}
    assert quiet == {i: {} for i in (1, 2, 3, 5, 6, 7)}, "a host read on an unlogged iteration"
    assert spans[3] and spans[7]  # the log steps do read the loss window
