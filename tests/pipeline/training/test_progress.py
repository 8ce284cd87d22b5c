"""What a person sees while a run trains: rank 0's MLflow log and progress record
(`RankZeroLog`), silent on other ranks, and the driver's one line (`format_progress`,
`ProgressLine`) read from that record."""

from __future__ import annotations

import json
import logging

import mlflow
import pytest

from pipeline.training.progress import (
    PROGRESS_FILE,
    ProgressLine,
    RankZeroLog,
    format_progress,
    hms,
)
from tests.pipeline.registry_helpers import fresh_store


def _new_run(uri: str) -> str:
    client = mlflow.MlflowClient(uri)
    return client.create_run(client.create_experiment("progress")).info.run_id


def _history(uri: str, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in mlflow.MlflowClient(uri).get_metric_history(run_id, key)}


@pytest.fixture(autouse=True)
def _restore_tracking_uri():
    uri = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(uri)  # RankZeroLog sets the run's


def test_rank_zero_logs_the_window_means_and_keeps_the_progress_record(tmp_path):
    uri = fresh_store(tmp_path)
    run_id = _new_run(uri)
    records = []
    log = RankZeroLog(
        {"tracking_uri": uri, "run_id": run_id},
        enabled=True,
        resumed=False,
        total=6,
        global_batch=4,
        metric="segm_AP",
        write=records.append,
    )
    try:
        log.log(2, {"loss_a": 2.0, "loss": 3.0}, 0.2)
        log.validated(2, 0.4, (2, 0.4))
        log.log(4, {"loss_a": 1.0, "loss": 1.5}, 0.1)
        log.stopped("early_stop")
    finally:
        log.close()
    assert _history(uri, run_id, "train/loss_a") == {2: 2.0, 4: 1.0}
    assert _history(uri, run_id, "train/loss") == {2: 3.0, 4: 1.5}
    assert _history(uri, run_id, "train/lr") == pytest.approx({2: 0.2, 4: 0.1})
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["train.status"] == "running"
    metrics = run.data.metrics
    assert metrics["train/perf/images_per_s"] > 0 and metrics["train/perf/memory_gb"] > 0
    # every name prefixed: the MLflow UI shows the unprefixed ones after all the AP sections
    assert all("/" in key for key in metrics if not key.startswith("system/"))
    last = records[-1]
    assert (last["iteration"], last["total"], last["loss"], last["lr"]) == (4, 6, 1.5, 0.1)
    assert last["val"] == {"iteration": 2, "value": 0.4} and last["best"] == last["val"]
    assert last["stopped"] == "early_stop" and last["eta_s"] >= 0
    assert any(r["val"] is not None and r["stopped"] is None for r in records)  # at validation


def test_other_ranks_are_silent_and_a_resume_is_tagged(tmp_path):
    records = []
    quiet = RankZeroLog({"tracking_uri": "unused://", "run_id": "x"}, False, False)
    quiet.write = records.append
    quiet.log(2, {"loss": 1.0}, 0.1)
    quiet.validated(2, 0.5, (2, 0.5))
    quiet.close()
    assert records == [] and mlflow.active_run() is None
    uri = fresh_store(tmp_path)
    run_id = _new_run(uri)
    log = RankZeroLog({"tracking_uri": uri, "run_id": run_id}, enabled=True, resumed=True)
    log.close("FAILED")
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.data.tags["train.status"] == "resumed" and run.info.status == "FAILED"


def test_the_line_says_iteration_loss_lr_speed_eta_and_validation():
    record = {
        "iteration": 120,
        "total": 800,
        "loss": 0.81234,
        "lr": 9.8e-4,
        "images_per_s": 13.21,
        "eta_s": 372,
        "metric": "segm_AP",
        "val": {"iteration": 100, "value": 0.512},
        "best": {"iteration": 80, "value": 0.53},
        "stopped": None,
    }
    assert format_progress(record) == (
        "iter 120/800 loss 0.8123 lr 9.80e-04 13.2 img/s eta 6m12s"
        " | val segm_AP 0.512 @100 (best 0.530 @80)"
    )
    assert format_progress({"iteration": 0, "total": 10}) == "iter 0/10"
    assert format_progress({"iteration": 5, "total": 10, "stopped": "time_budget"}) == (
        "iter 5/10 | stopped: time_budget"
    )
    assert [hms(s) for s in (0, 59.9, 61, 3599, 3600, 7325)] == [
        "0m00s",
        "0m59s",
        "1m01s",
        "59m59s",
        "1h00m",
        "2h02m",
    ]


def test_without_a_terminal_the_driver_logs_plain_lines_at_validations_and_the_end(
    tmp_path, caplog
):
    line = ProgressLine(tmp_path, plain_every_s=3600, tty=False)
    path = tmp_path / PROGRESS_FILE
    caplog.set_level(logging.INFO, logger="pipeline.training.progress")
    for record in (
        {"iteration": 2, "total": 6, "loss": 1.0, "val": None},  # the first: shown
        {"iteration": 4, "total": 6, "loss": 0.5, "val": None},  # within plain_every_s: not
        {"iteration": 4, "total": 6, "loss": 0.5, "val": {"iteration": 4, "value": 0.3}},
    ):
        path.write_text(json.dumps(record))
        line.poll()
    path.write_text(json.dumps({"iteration": 6, "total": 6, "loss": 0.4, "stopped": "iterations"}))
    line.poll(final=True)
    shown = [r.getMessage() for r in caplog.records]
    assert shown == [
        "iter 2/6 loss 1.0000",
        "iter 4/6 loss 0.5000 | val AP 0.300 @4",
        "iter 6/6 loss 0.4000 | stopped: iterations",
    ]
