"""Logging into the active MLflow run: the one a `store.start_run` block (or a training
worker, `pipeline.tracking.training.resume_on_worker`) opened in this process.

    with store.start_run(uri, "mrcnn", run_name="export") as run:
        active.log_artifact(onnx_file, "portable")
        active.set_tags({"export.version": "3"})

Thin on purpose: the pipeline calls these instead of `mlflow` itself, so MLflow is imported in
`pipeline/tracking/` only and a change of its API is made here once.

Metrics of a run that has a metric queue open (a training worker's: `pipeline.tracking.
metric_queue`) go into the queue and return at once; a server that is down never stalls the
caller. Everything else is synchronous.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.tracking import metric_queue


def log_params(params: Mapping[str, str]) -> None:
    """Params of the active run (values already strings, e.g. `store.flatten`'s)."""
    import mlflow

    mlflow.log_params(dict(params))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Metrics of the active run, at `step` when given (through its metric queue when it has
    one open: queued, not sent yet)."""
    import mlflow

    run = mlflow.active_run()
    queue = metric_queue.current(run.info.run_id) if run is not None else None
    if queue is not None:
        queue.put(metrics, step or 0)
    else:
        mlflow.log_metrics(dict(metrics), step=step)


def log_metrics_if_active(metrics: Mapping[str, float], step: int | None = None) -> bool:
    """`log_metrics` when a run is active (else nothing) -> whether they were logged (or
    queued)."""
    import mlflow

    if mlflow.active_run() is None:
        return False
    log_metrics(metrics, step)
    return True


def set_tags(tags: Mapping[str, Any]) -> None:
    """Tags of the active run (MLflow makes the values strings)."""
    import mlflow

    mlflow.set_tags(dict(tags))


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """One file into the active run's artifacts, under `artifact_path`."""
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_artifacts(folder: str | Path, artifact_path: str | None = None) -> None:
    """Every file under `folder` into the active run's artifacts, under `artifact_path`."""
    import mlflow

    mlflow.log_artifacts(str(folder), artifact_path=artifact_path)


def log_table(columns: Mapping[str, list[Any]], artifact_file: str) -> None:
    """A table (column name -> values) as the active run's JSON artifact `artifact_file`,
    which the MLflow UI shows as a table."""
    import mlflow

    mlflow.log_table(dict(columns), artifact_file)
