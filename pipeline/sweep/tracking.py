"""MLflow side of a sweep: one run per trial nested under the sweep's run, and what the parent
gets at the end (statuses, the trial table, the files of `pipeline.sweep.report`, the best
values). The MLflow calls are `pipeline.tracking.trials` and `pipeline.tracking.active`.

    run_id = trial_run(sweep, trial_id, values)              # in the trial: found or created
    log_trial_params(sweep, run_id, params, cfg)             # once the trial's params are valid
    finish_trial_runs(records, sweep)                        # after the sweep: statuses
    log_parent(records, best, sweep, tp, files, wall)        # into the active parent run
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pipeline.paramfile import to_dict
from pipeline.sweep import report as sweep_report
from pipeline.sweep.records import COMPLETED, FAILED, STOPPED, TrialRecord
from pipeline.tracking import active, names, trials
from pipeline.tracking.store import flatten

if TYPE_CHECKING:
    from pipeline.sweep.config import Sweep
    from pipeline.train_params import TrainParams, TuneParams

# A trial's outcome -> the status its MLflow run ends with.
RUN_STATUS = {COMPLETED: "FINISHED", STOPPED: "KILLED", FAILED: "FAILED"}


def trial_run(sweep: Sweep, trial_id: str, values: dict[str, Any]) -> str:
    """The trial's MLflow run under the parent -> its id: found again after a restart (the
    error of an attempt that failed, `tune.error`, removed: Tune is trying again), else created
    with what was sampled, as drawn, as params (the full params follow once valid)."""
    tags = {"sweep": sweep.name, "stage": "tune", "tune.status": "running"}
    tags["tune.swept"] = ",".join(values)
    sampled = {f"sampled.{k}": v for k, v in flatten(values).items()}
    return trials.trial_run(
        sweep.tracking_uri,
        sweep.experiment_id,
        sweep.parent_run_id,
        trial_id,
        f"{sweep.name}-{trial_id}",
        tags,
        sampled,
        clear=("tune.error",),
    )


def log_trial_params(sweep: Sweep, run_id: str, params: TrainParams, cfg) -> None:
    flat = flatten({"train": to_dict(params), "model": cfg.to_dict()})
    trials.log_params(sweep.tracking_uri, run_id, flat)


def fail_trial(sweep: Sweep, run_id: str, error: BaseException) -> None:
    """The trial raised: its run ends FAILED, with the error as tag `tune.error`."""
    tags = {"tune.status": FAILED, "tune.error": f"{type(error).__name__}: {error}"[:5000]}
    trials.end_run(sweep.tracking_uri, run_id, RUN_STATUS[FAILED], tags)


def finish_trial_runs(records: list[TrialRecord], sweep: Sweep) -> None:
    """Status of each trial's nested MLflow run (FINISHED / KILLED for stopped / FAILED)."""
    runs = trials.trial_runs(sweep.tracking_uri, sweep.experiment_id, sweep.parent_run_id)
    for rec in records:
        run_id = runs.get(rec.trial_id)
        if run_id is None:  # the trial failed before its run existed
            continue
        rec.mlflow_run_id = run_id
        tags = {"tune.status": rec.status, "tune.iterations": str(rec.iteration)}
        if rec.error:
            tags["tune.error"] = rec.error[:5000]
        final = names.prefixed(names.SUMMARY, rec.metrics)  # after the curves in the UI
        trials.end_run(
            sweep.tracking_uri, run_id, RUN_STATUS[rec.status], tags, final, rec.iteration
        )


def log_parent(records, best, sweep: Sweep, tp: TuneParams, files, wall: float) -> None:
    rows = sweep_report.table_rows(records, sweep.space)
    if rows:
        active.log_table({c: [r[c] for r in rows] for c in rows[0]}, "sweep/trials.json")
    for path in files.values():
        active.log_artifact(path, "sweep")
    active.log_metrics(
        {
            "sweep/trials": len(records),
            "sweep/stopped_early": sum(r.status == STOPPED for r in records),
            "sweep/failed": sum(r.status == FAILED for r in records),
            "sweep/wall_s": wall,
        }
    )
    if best is not None:
        active.log_metrics({f"best/{tp.metric}": best.metrics[tp.metric]})
        # Tags, not params: a resumed sweep may find a new best (params cannot change).
        active.set_tags({f"best.{k}": json.dumps(v) for k, v in best.values.items()})
        active.set_tags({"best.trial_id": best.trial_id, "best.run_id": best.mlflow_run_id})
