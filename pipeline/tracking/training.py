"""The MLflow run of a training run: opened (or found again) by the driver, resumed by rank 0
on its worker, read back for the loss curves, closed with the outcome.

    check_experiment(uri, "mrcnn")                                 # driver: 403 before Ray
    run_id = open_run(uri, "mrcnn", name, flat_params, tags)      # driver, once per run
    resume_on_worker(uri, run_id, "running", buffer=100_000)        # rank 0: the active run
    active.log_metrics({"train/loss": 0.7}, step=20)                # rank 0: queued, returns
    flush_on_worker()                                               # at a checkpoint
    end_on_worker("FINISHED")                                       # sends the rest, ends it
    loss_history(uri, run_id)                                       # driver: one row per step
    val_history(uri, run_id)                                        # driver: one per validation
    log_outcome(uri, run_id, {"train/summary/wall_s": 61.0}, [losses_png], "train", tags={...})

The metric names (and why they sort as they do in the MLflow UI): `pipeline.tracking.names`.
On the worker, metrics go through a queue a background thread sends
(`pipeline.tracking.metric_queue`): a tracking server or database that restarts or is down for a
while does not stall training, and nothing is lost unless more than `buffer` points wait (the
dropped ones are then named on the run).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.tracking import login, metric_queue, names, store

logger = logging.getLogger(__name__)

CHECKPOINT_WAIT_S = 5.0  # a checkpoint waits this long at most for the queued metrics
END_WAIT_S = 600.0  # the end of a run waits this long at most for a server to come back


def run_exists(uri: str, run_id: str) -> bool:
    """Whether the store at `uri` (made the process's tracking URI) has the active run
    `run_id`."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    return store.run_exists(run_id)


def find_experiment(uri: str, name: str) -> str | None:
    """The id of experiment `name` (where the runs go) in the store at `uri`, or None when it
    has none (nothing is created)."""
    from mlflow import MlflowClient

    exp = MlflowClient(uri).get_experiment_by_name(name)
    return exp.experiment_id if exp is not None and exp.lifecycle_stage == "active" else None


def check_experiment(uri: str, name: str) -> None:
    """Raise `TrackingError` (one line) when this login may not use experiment `name` of the
    store at `uri` (HTTP 403 from a server with `--auth`): the train stage asks before Ray
    starts. Nothing is created (a missing experiment is created with the run)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(uri).get_experiment_by_name(name)
    except MlflowException as e:
        if e.error_code != "PERMISSION_DENIED":
            raise
        raise store.TrackingError(login.experiment_denied(name)) from None


def open_run(
    uri: str,
    experiment: str,
    name: str,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    artifact_location: str | None = None,
) -> str:
    """A new run `name` in `experiment` with `params` logged once and `tags` set -> its id. A
    login that may read the experiment but not write it fails in one line (`TrackingError`)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with store.start_run(
            uri, experiment, run_name=name, artifact_location=artifact_location
        ) as r:
            mlflow.log_params(dict(params))
            mlflow.set_tags(dict(tags))
            return r.info.run_id
    except MlflowException as e:
        if e.error_code != "PERMISSION_DENIED":
            raise
        raise store.TrackingError(login.experiment_denied(experiment)) from None


def resume_on_worker(uri: str, run_id: str, status: str, buffer: int = 100_000) -> None:
    """Make run `run_id` this process's active run (with MLflow's system metrics: CPU, GPU and
    memory use), tag `train.status` = `status` and open its metric queue, which holds at most
    `buffer` points while the tracking server is unreachable (`train.log_buffer`)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.start_run(run_id=run_id, log_system_metrics=True)
    mlflow.set_tag("train.status", status)
    metric_queue.open_queue(uri, run_id, buffer)


def flush_on_worker(timeout_s: float = CHECKPOINT_WAIT_S) -> bool:
    """Wait (at most `timeout_s`, and not at all while the server is unreachable) until the
    metrics queued so far are in MLflow -> whether they are."""
    queue = metric_queue.current()
    return queue.flush(timeout_s) if queue is not None else True


def end_on_worker(status: str = "FINISHED", timeout_s: float = END_WAIT_S) -> None:
    """Send the queued metrics (waiting at most `timeout_s` for an unreachable server to come
    back), then end the active run `resume_on_worker` started: FINISHED, or FAILED on an
    error. A run that cannot be ended (the server still down) is left to the driver, which ends
    it too (`pipeline.stages.train`), with a warning."""
    import mlflow
    from mlflow.exceptions import MlflowException

    metric_queue.close_current(timeout_s)
    try:
        mlflow.end_run(status=status)
    except MlflowException as e:
        logger.warning("could not end the MLflow run as %s (%s); the driver ends it", status, e)


def loss_history(uri: str, run_id: str) -> list[dict[str, float]]:
    """Per-step `train/loss*` and `train/lr` metrics of a run from MLflow, one row per step (a
    resumed run is one curve), without the prefix: {"step": 20, "loss": ..., "lr": ...}. The
    loss names are whatever the model's loss dict held."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    keys = sorted(k for k in client.get_run(run_id).data.metrics if names.is_loss_or_lr(k))
    rows: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            rows.setdefault(m.step, {"step": m.step})[names.short(key)] = m.value
    return [rows[s] for s in sorted(rows)]


VAL_PREFIX = names.VAL  # periodic validation's metrics: val/bbox_AP, val/segm_AP, ...


def val_history(uri: str, run_id: str) -> list[dict[str, float]]:
    """The periodic validations of a run (`val/<iou type>_AP`), one row per validated
    iteration: {"step": iteration, "bbox_AP": ..., "segm_AP": ...}; [] without validation."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    keys = sorted(
        k
        for k in client.get_run(run_id).data.metrics
        if k.startswith(VAL_PREFIX) and not k.startswith(names.FINAL)
    )
    rows: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            rows.setdefault(m.step, {"step": m.step})[key.removeprefix(VAL_PREFIX)] = m.value
    return [rows[s] for s in sorted(rows)]


def log_outcome(
    uri: str,
    run_id: str,
    metrics: Mapping[str, float],
    files: Iterable[Path],
    artifact_path: str,
    tags: Mapping[str, str] | None = None,
) -> None:
    """What the driver adds to the run once training is over (the run need not be active):
    `metrics`, `tags` and `files` (artifacts under `artifact_path`)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path)
