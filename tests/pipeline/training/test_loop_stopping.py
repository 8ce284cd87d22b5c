"""Stopping early and keeping the best, in the worker loop under the one-worker stand-in for Ray
Train (`fake_ray`): a run whose validation metric peaks early (a fault corrupts the weights
late) keeps the peak as its model, patience stops it at the expected validation, the time
budget stops it with a checkpoint. Validation is a stand-in (`_WeightsScore`) that scores the
weights it is given: the tiny model's real AP is 0 for its first hundreds of iterations, so it
cannot peak. The real Ray Train and real validation run in
tests/pipeline/stages/test_train_stopping.py (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import ray.train
import torch

from mrcnn import presets, weights
from mrcnn.config import Config
from mrcnn.data import ShardDataset
from mrcnn.modeling.model import build_model
from pipeline.paramfile import from_dict
from pipeline.stages.train import TrainingRun, TrainPaths, _write_outputs
from pipeline.tracking import active
from pipeline.tracking.store import Tracking
from pipeline.train_params import TrainParams
from pipeline.training import faults, loop
from pipeline.training.checkpoints import load_state
from pipeline.training.selection import SCORE_KEY
from tests.pipeline.registry_helpers import fresh_store
from tests.pipeline.tiny_model import TINY_MODEL
from tests.pipeline.training.fake_ray import FakeRayTrain
from tests.pipeline.training.loop_helpers import loop_config, new_run


def _cfg():
    return presets.shapes_small(num_classes=4, image_size=64, **TINY_MODEL)


class _WeightsScore:
    """Stands in for `PeriodicEval`: "AP" grows with the iteration (iteration / 100) while the
    parameters it is given are within 0.5 of the initial ones (a few steps move them by about
    the lr), and is 0 once they are not (the corrupting fault adds noise of std 1). Logged to
    MLflow as the real one logs."""

    seen: list[tuple[int, bool]] = []  # (iteration, whether the model given was in train mode)

    def __init__(self, config, p, iou_types) -> None:
        with torch.random.fork_rng():  # the loop's RNG state stays as it is
            torch.manual_seed(p.seed)  # the loop's initial weights
            initial = build_model(Config.from_dict(config["model"]))
        self.initial = dict(initial.named_parameters())
        self.iou_types = iou_types

    def __call__(self, model, iteration: int) -> dict[str, float]:
        drift = max((v - self.initial[k]).abs().max().item() for k, v in model.named_parameters())
        value = iteration / 100 if drift < 0.5 else 0.0
        _WeightsScore.seen.append((iteration, model.training))
        metrics = {f"{t}_AP": value for t in self.iou_types}
        active.log_metrics_if_active({f"val/{k}": v for k, v in metrics.items()}, step=iteration)
        return metrics


@pytest.fixture()
def scored(monkeypatch):
    _WeightsScore.seen = []
    monkeypatch.setattr(loop, "PeriodicEval", _WeightsScore)
    return _WeightsScore


def _corrupt_at(tmp_path: Path, monkeypatch, iteration: int) -> None:
    spec = tmp_path / "faults.json"
    spec.write_text(json.dumps({"corrupt_iteration": iteration}))
    monkeypatch.setenv(faults.ENV, str(spec))


def _train(tmp_path: Path, shards: Path, monkeypatch, **train) -> tuple:
    """The loop, one worker, a new MLflow run -> (fake Ray, tracking URI, run id, config)."""
    ray = FakeRayTrain(tmp_path / "run").install(monkeypatch)
    uri = fresh_store(tmp_path)
    run_id = new_run(uri)
    config = loop_config(shards, uri, run_id, **train)
    loop.train_loop(config)
    return ray, uri, run_id, config


def _result(ray: FakeRayTrain):
    """The `Result` Ray Train builds from these reports: the latest checkpoint, and every one
    ranked by its score, worst first (`CheckpointConfig(checkpoint_score_attribute=...)`)."""

    class Result:
        checkpoint = ray_checkpoint(ray.reports[-1][1])
        best_checkpoints = sorted(
            ((ray_checkpoint(path), metrics) for metrics, path in ray.reports),
            key=lambda c: c[1][SCORE_KEY],
        )

    return Result()


def ray_checkpoint(path: Path):
    import pyarrow.fs

    return ray.train.Checkpoint(str(path), filesystem=pyarrow.fs.LocalFileSystem())


def _outputs(tmp_path: Path, shards: Path, ray: FakeRayTrain, uri: str, run_id: str, config):
    """The train stage's outputs (`_write_outputs`) for this run -> train.json."""
    recipe = from_dict(TrainParams, config["train"], "train")
    train_set = ShardDataset(shards / "train")
    job = TrainingRun(recipe, _cfg(), "shapes_small", "t", tmp_path / "run", run_id, train_set)
    paths = TrainPaths(
        shards=shards,
        model_dir=tmp_path / "models/final",
        metrics=tmp_path / "metrics/train.json",
        run_info=tmp_path / "metrics/train_run.json",
        reports=tmp_path / "reports/train",
        storage=tmp_path,
        tracking=Tracking(uri, "loop"),
    )
    _write_outputs(_result(ray), job, paths, [{"wall_s": 1.0, "status": "finished"}])
    return json.loads(paths.metrics.read_text())


@pytest.mark.parametrize("keep", ["best", "last"])
def test_a_metric_that_peaks_early_keeps_the_peak_and_patience_stops_at_the_next_validation(
    keep, tiny_shards, tmp_path, monkeypatch, scored
):
    """Validation every 2 iterations, the weights corrupted before the 6th: the scores are
    0.02, 0.04, then 0. Patience 1 stops the run at the validation of iteration 6 (the first
    without improvement), with a checkpoint saying so; keep best makes the model of iteration
    4's checkpoint (the peak), keep last of iteration 6's; train.json says which."""
    _corrupt_at(tmp_path, monkeypatch, 5)  # before iteration 5 (0-based): the 6th
    ray, uri, run_id, config = _train(
        tmp_path, tiny_shards, monkeypatch, iterations=10, eval_every=2, patience=1, keep=keep
    )
    assert [m["iteration"] for m, _ in ray.reports] == [2, 4, 6]
    assert [m[SCORE_KEY] for m, _ in ray.reports] == [0.02, 0.04, 0.0]
    assert [m.get("stopped") for m, _ in ray.reports] == [None, None, "early_stop"]
    assert [it for it, _ in scored.seen] == [2, 4, 6]
    last = load_state(ray.reports[-1][1] / "state.pt")
    assert last["stopped"] == "early_stop" and last["iteration"] == 6
    assert last["patience"] == {"best": 0.04, "best_iteration": 4, "since_best": 1}
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["stopped"] == "early_stop" and progress["best"]["iteration"] == 4

    metrics = _outputs(tmp_path, tiny_shards, ray, uri, run_id, config)
    assert metrics["stopped"] == "early_stop" and metrics["iterations"] == 6
    assert (metrics["best_iteration"], metrics["best_value"]) == (4, 0.04)
    assert metrics["best_metric"] == "segm_AP" and metrics["weights"] == "raw"
    kept_iteration = 4 if keep == "best" else 6
    assert (metrics["kept"], metrics["kept_iteration"]) == (keep, kept_iteration)
    model = weights.load(tmp_path / "models/final")
    kept = load_state(ray.reports[kept_iteration // 2 - 1][1] / "state.pt")["model"]
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in kept.items())
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.data.tags["train.stopped"] == "early_stop"
    assert run.data.tags["train.kept"] == f"{keep} (iteration {kept_iteration})"
    assert run.data.metrics["train/summary/best_iteration"] == 4
    assert (tmp_path / "reports/train/results.png").is_file()


def test_a_resume_keeps_the_best_so_far(tiny_shards, tmp_path, monkeypatch, scored):
    """Crashed after the checkpoint of iteration 4 (the best, 0.04) and started again: the
    patience state comes back with it, so the corrupted validation of iteration 6 is the first
    miss after that best and stops the run, as in the uninterrupted run."""
    _corrupt_at(tmp_path, monkeypatch, 5)
    ray, uri, run_id, config = _train(
        tmp_path, tiny_shards, monkeypatch, iterations=10, eval_every=2, patience=1
    )
    at_four = ray.reports[1][1]
    again = FakeRayTrain(tmp_path / "again", registered=at_four).install(monkeypatch)
    loop.train_loop(config)
    assert [(m["iteration"], m[SCORE_KEY], m.get("stopped")) for m, _ in again.reports] == [
        (6, 0.0, "early_stop")
    ]
    state = load_state(again.reports[0][1] / "state.pt")
    assert state["patience"] == {"best": 0.04, "best_iteration": 4, "since_best": 1}


def test_the_ema_is_what_is_validated_and_kept(tiny_shards, tmp_path, monkeypatch, scored):
    """With train.ema_decay the validation sees the average (not the training model) and the
    model holds it."""
    ray, uri, run_id, config = _train(
        tmp_path, tiny_shards, monkeypatch, eval_every=2, ema_decay=0.9
    )
    assert scored.seen == [(2, False), (4, False)]  # the EMA copy is in eval mode
    metrics = _outputs(tmp_path, tiny_shards, ray, uri, run_id, config)
    assert metrics["weights"] == "ema" and metrics["stopped"] == "iterations"
    assert (metrics["kept"], metrics["kept_iteration"], metrics["best_iteration"]) == (
        "best",
        4,
        4,
    )
    ema = load_state(ray.reports[-1][1] / "state.pt")["ema"]["weights"]
    ours = weights.load(tmp_path / "models/final").state_dict()
    assert all(torch.equal(ours[k], v) for k, v in ema.items())


def test_the_time_budget_stops_at_the_next_check_with_a_checkpoint(
    tiny_shards, tmp_path, monkeypatch, scored
):
    """max_minutes spent at once: the run stops at the first check (log step 1), validates and
    reports a checkpoint saying time_budget; started again with the same budget it stays
    stopped, with a larger one it continues from there."""
    ray, uri, run_id, config = _train(
        tmp_path, tiny_shards, monkeypatch, iterations=6, eval_every=4, max_minutes=1e-9
    )
    assert [m["iteration"] for m, _ in ray.reports] == [1]
    assert ray.reports[0][0]["stopped"] == "time_budget"
    assert ray.reports[0][0][SCORE_KEY] == 0.01  # validated before stopping
    state = load_state(ray.reports[0][1] / "state.pt")
    assert state["stopped"] == "time_budget" and state["elapsed_s"] > 0
    metrics = _outputs(tmp_path, tiny_shards, ray, uri, run_id, config)
    assert (metrics["stopped"], metrics["iterations"], metrics["kept_iteration"]) == (
        "time_budget",
        1,
        1,
    )
    assert weights.load(tmp_path / "models/final").detect(
        [ShardDataset(tiny_shards / "val")[0].image]
    )

    again = FakeRayTrain(tmp_path / "again", registered=ray.reports[0][1]).install(monkeypatch)
    loop.train_loop(config)
    assert again.reports == []  # still out of time: nothing trained
    longer = FakeRayTrain(tmp_path / "longer", registered=ray.reports[0][1]).install(monkeypatch)
    loop.train_loop(
        loop_config(tiny_shards, uri, run_id, iterations=6, eval_every=4, max_minutes=9)
    )
    assert [m["iteration"] for m, _ in longer.reports] == [2, 4, 6]
    assert longer.reports[-1][0]["stopped"] == "iterations"


def test_without_validation_checkpoints_carry_no_score(tiny_shards, tmp_path, monkeypatch):
    ray, *_ = _train(tmp_path, tiny_shards, monkeypatch)
    assert [m["iteration"] for m, _ in ray.reports] == [2, 4]
    assert all(SCORE_KEY not in m for m, _ in ray.reports)  # Ray ranks nothing: keeps 2
