"""The outcome of each trial (`TrialRecord`), read from Tune's ResultGrid, and the best one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.sweep.config import Sweep, planned_iterations

COMPLETED, STOPPED, FAILED = "completed", "stopped_early", "failed"
METRIC_KEYS = ("segm_AP", "bbox_AP", "loss")


@dataclass
class TrialRecord:
    trial_id: str
    status: str  # completed | stopped_early | failed
    values: dict[str, Any]  # dotted key -> sampled params value
    iteration: int = 0  # last iteration reported
    planned_iterations: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # last reported segm_AP, ...
    curve: list[tuple[int, float]] = field(default_factory=list)  # (iteration, metric)
    error: str = ""
    mlflow_run_id: str = ""


def best_trial(records: Sequence[TrialRecord], metric: str, mode: str) -> TrialRecord | None:
    """The trial whose last reported `metric` is best (failed trials excluded); ties go to the
    trial that trained longer, then the earlier one."""
    scored = [r for r in records if r.status != FAILED and finite(r.metrics.get(metric))]
    if not scored:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda r: (sign * r.metrics[metric], r.iteration))


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def trial_records(grid, sweep: Sweep, metric: str) -> list[TrialRecord]:
    """One TrialRecord per trial of Tune's ResultGrid."""
    from ray.tune import ExperimentAnalysis

    # Every trial's config (a restored grid has none in the Result of a trial that never
    # reported).
    configs = ExperimentAnalysis(
        grid.experiment_path, storage_filesystem=grid.filesystem
    ).get_all_configs()  # the experiment may be in S3: its own filesystem reads it
    records = []
    for result in grid:
        trial_id = Path(result.path).name.removeprefix("trial-")
        values = sweep.space.decode(result.config or configs[trial_id])
        metrics = result.metrics or {}
        try:
            planned = planned_iterations(sweep.trial_params(values)[0])
        except ValueError:
            planned = 0
        iteration = int(metrics.get("iteration", 0) or 0)
        if result.error is not None:
            status = FAILED
        else:
            status = COMPLETED if iteration >= planned else STOPPED
        curve = []
        df = result.metrics_dataframe
        if df is not None and metric in df and "iteration" in df:
            rows = df[["iteration", metric]].dropna()
            curve = [
                (int(i), float(v)) for i, v in zip(rows["iteration"], rows[metric], strict=True)
            ]
        records.append(
            TrialRecord(
                trial_id=trial_id,
                status=status,
                values=values,
                iteration=iteration,
                planned_iterations=planned,
                metrics={k: float(metrics[k]) for k in METRIC_KEYS if k in metrics},
                curve=curve,
                error=f"{type(result.error).__name__}: {result.error}" if result.error else "",
            )
        )
    return sorted(records, key=lambda r: r.trial_id)
