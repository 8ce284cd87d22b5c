"""MLflow side of a sweep: one run per trial nested under the sweep's run, and what the parent
gets at the end (statuses, the trial table, the files of `pipeline.sweep.report`, the best
values).

    client, run_id = trial_run(sweep, trial_id, values)     # in the trial: found or created
    finish_trial_runs(records, sweep)                        # after the sweep: statuses
    log_parent(records, best, sweep, tp, files, wall)        # into the active parent run
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pipeline.paramfile import to_dict
from pipeline.sweep import report as sweep_report
from pipeline.sweep.records import COMPLETED, FAILED, STOPPED, TrialRecord

if TYPE_CHECKING:
    from pipeline.sweep.config import Sweep
    from pipeline.train_params import TrainParams, TuneParams


def trial_run(sweep: Sweep, trial_id: str, values: dict[str, Any]):
    """The trial's MLflow run under the parent: found again after a restart, else created."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import store as tracking

    client = MlflowClient(sweep.tracking_uri)
    found = client.search_runs(
        [sweep.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{sweep.parent_run_id}' "
        f"and tags.trial_id = '{trial_id}'",
        max_results=1,
    )
    if found:
        client.set_tag(found[0].info.run_id, "tune.status", "running")
        return client, found[0].info.run_id
    run = client.create_run(
        sweep.experiment_id,
        run_name=f"{sweep.name}-{trial_id}",
        tags={
            "mlflow.parentRunId": sweep.parent_run_id,
            "trial_id": trial_id,
            "sweep": sweep.name,
            "stage": "tune",
            "tune.status": "running",
            "tune.swept": ",".join(values),
        },
    )
    run_id = run.info.run_id
    # What was sampled, as drawn (the full params follow once they are valid).
    client.log_batch(
        run_id,
        params=[_param(f"sampled.{k}", v) for k, v in tracking.flatten(values).items()],
    )
    return client, run_id


def log_trial_params(client, run_id: str, params: TrainParams, cfg) -> None:
    from pipeline.tracking import store as tracking

    flat = tracking.flatten({"train": to_dict(params), "model": cfg.to_dict()})
    items = [_param(k, v) for k, v in flat.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)


def finish_trial_runs(records: list[TrialRecord], sweep: Sweep) -> None:
    """Status of each trial's nested MLflow run (FINISHED / KILLED for stopped / FAILED)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep.tracking_uri)
    runs = client.search_runs(
        [sweep.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{sweep.parent_run_id}'",
        max_results=10000,
    )
    by_trial = {r.data.tags.get("trial_id"): r for r in runs}
    mlflow_status = {COMPLETED: "FINISHED", STOPPED: "KILLED", FAILED: "FAILED"}
    for rec in records:
        run = by_trial.get(rec.trial_id)
        if run is None:  # the trial failed before its run existed
            continue
        rec.mlflow_run_id = run.info.run_id
        client.set_tag(rec.mlflow_run_id, "tune.status", rec.status)
        client.set_tag(rec.mlflow_run_id, "tune.iterations", str(rec.iteration))
        if rec.error:
            client.set_tag(rec.mlflow_run_id, "tune.error", rec.error[:5000])
        for k, v in rec.metrics.items():
            client.log_metric(rec.mlflow_run_id, f"final/{k}", v, step=rec.iteration)
        client.set_terminated(rec.mlflow_run_id, mlflow_status[rec.status])


def log_parent(records, best, sweep: Sweep, tp: TuneParams, files, wall: float) -> None:
    import mlflow

    rows = sweep_report.table_rows(records, sweep.space)
    if rows:
        mlflow.log_table({c: [r[c] for r in rows] for c in rows[0]}, "sweep/trials.json")
    for path in files.values():
        mlflow.log_artifact(str(path), "sweep")
    mlflow.log_metrics(
        {
            "sweep/trials": len(records),
            "sweep/stopped_early": sum(r.status == STOPPED for r in records),
            "sweep/failed": sum(r.status == FAILED for r in records),
            "sweep/wall_s": wall,
        }
    )
    if best is not None:
        mlflow.log_metric(f"best/{tp.metric}", best.metrics[tp.metric])
        # Tags, not params: a resumed sweep may find a new best (params cannot change).
        mlflow.set_tags({f"best.{k}": json.dumps(v) for k, v in best.values.items()})
        mlflow.set_tags({"best.trial_id": best.trial_id, "best.run_id": best.mlflow_run_id})
