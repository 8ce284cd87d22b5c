"""pipeline.tracking.trials: a sweep's trial runs under its parent, found again after a
restart, ended with their outcome."""

from __future__ import annotations

from pathlib import Path

import mlflow

from pipeline.tracking import trials
from pipeline.tracking.store import start_run
from tests.pipeline.registry_helpers import fresh_store


def test_trial_runs_are_nested_found_again_and_ended(tmp_path: Path) -> None:
    uri = fresh_store(tmp_path)
    with start_run(uri, "sweeps", run_name="sweep") as parent:
        exp, parent_id = parent.info.experiment_id, parent.info.run_id
    tags = {"tune.status": "running", "sweep": "s"}
    first = trials.trial_run(uri, exp, parent_id, "t1", "s-t1", tags, {"sampled.train.lr": "0.1"})
    again = trials.trial_run(uri, exp, parent_id, "t1", "s-t1", {"tune.status": "running"}, {})
    other = trials.trial_run(uri, exp, parent_id, "t2", "s-t2", tags, {})
    assert first == again != other
    assert trials.trial_runs(uri, exp, parent_id) == {"t1": first, "t2": other}

    trials.log_params(uri, first, {f"p{i}": str(i) for i in range(150)})  # two batches
    trials.end_run(uri, first, "KILLED", {"tune.status": "stopped_early"}, {"final/loss": 0.5}, 7)
    run = mlflow.MlflowClient(uri).get_run(first)
    assert run.info.status == "KILLED" and run.info.run_name == "s-t1"
    assert run.data.tags["mlflow.parentRunId"] == parent_id and run.data.tags["trial_id"] == "t1"
    assert run.data.tags["tune.status"] == "stopped_early" and run.data.tags["sweep"] == "s"
    assert run.data.params["sampled.train.lr"] == "0.1" and run.data.params["p149"] == "149"
    history = mlflow.MlflowClient(uri).get_metric_history(first, "final/loss")
    assert [(m.step, m.value) for m in history] == [(7, 0.5)]


def test_a_failed_trial_found_again_runs_again_without_its_error(tmp_path: Path) -> None:
    """Tune restarts a trial whose attempt raised (`tune.max_failures`, e.g. a lost node): its
    run, ended FAILED with the error, is running again and no longer carries the old error
    (a trial that then completes would show it beside `tune.status` completed)."""
    uri = fresh_store(tmp_path)
    with start_run(uri, "sweeps", run_name="sweep") as parent:
        exp, parent_id = parent.info.experiment_id, parent.info.run_id
    first = trials.trial_run(uri, exp, parent_id, "t1", "s-t1", {"tune.status": "running"}, {})
    trials.end_run(uri, first, "FAILED", {"tune.status": "failed", "tune.error": "ActorDied"})
    again = trials.trial_run(
        uri, exp, parent_id, "t1", "s-t1", {"tune.status": "running"}, {}, clear=("tune.error",)
    )
    run = mlflow.MlflowClient(uri).get_run(again)
    assert again == first and run.info.status == "RUNNING"
    assert run.data.tags["tune.status"] == "running" and "tune.error" not in run.data.tags
