"""pipeline.tracking.training: the MLflow run of a training run, opened by the driver, resumed
by rank 0, read back as loss curves and closed with the outcome."""

from __future__ import annotations

from pathlib import Path

import mlflow

from pipeline.tracking import active, names, training
from tests.pipeline.registry_helpers import fresh_store


def test_a_training_run_from_open_to_outcome(tmp_path: Path) -> None:
    uri = fresh_store(tmp_path)
    run_id = training.open_run(uri, "e", "shapes-1234", {"train.lr": "0.001"}, {"stage": "train"})
    assert training.run_exists(uri, run_id) and not training.run_exists(uri, "0" * 32)

    training.resume_on_worker(uri, run_id, "running")  # what rank 0 does on its worker
    for step, loss in ((2, 1.0), (4, 0.5)):
        terms = {"loss": loss, "loss_mask": loss / 2, "lr": 0.1 * step}
        active.log_metrics(names.prefixed(names.TRAIN, terms), step=step)  # as RankZeroLog does
    active.log_metrics({"train/perf/images_per_s": 3.0}, step=4)
    assert active.log_metrics_if_active({"val/segm_AP": 0.3}, step=4)
    training.end_on_worker("FINISHED")
    assert not active.log_metrics_if_active({"val/segm_AP": 0.4}, step=6)  # no active run

    history = training.loss_history(uri, run_id)
    assert history == [
        {"step": 2, "loss": 1.0, "loss_mask": 0.5, "lr": 0.2},
        {"step": 4, "loss": 0.5, "loss_mask": 0.25, "lr": 0.4},
    ]
    mlflow.MlflowClient(uri).log_metric(run_id, "val/final/segm_AP", 0.5)  # evaluate's, later
    assert training.val_history(uri, run_id) == [{"step": 4, "segm_AP": 0.3}]
    png = tmp_path / "losses.png"
    png.write_bytes(b"\x89PNG")
    training.log_outcome(uri, run_id, {"train/summary/wall_s": 12.5}, [png], "train")
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.info.run_name == "shapes-1234" and run.data.tags["stage"] == "train"
    assert run.data.tags["train.status"] == "running" and run.data.params["train.lr"] == "0.001"
    assert run.data.metrics["train/summary/wall_s"] == 12.5
    artifacts = mlflow.MlflowClient(uri).list_artifacts(run_id, "train")
    assert [a.path for a in artifacts] == ["train/losses.png"]
