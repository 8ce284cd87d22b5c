"""Trial records from Tune's results (a hand-built stand-in for a ResultGrid) and the best
trial: status, iterations against the planned ones, metrics, curves, ties."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pytest

from pipeline.search_space import parse_space
from pipeline.sweep import records
from pipeline.sweep.config import Sweep
from pipeline.sweep.records import COMPLETED, FAILED, STOPPED, TrialRecord, best_trial

DATASET = {"num_classes": 4, "image_size": 64, "class_names": ("bg", "a", "b", "c")}


def _rec(trial_id, status=COMPLETED, ap=None, iteration=6) -> TrialRecord:
    metrics = {} if ap is None else {"segm_AP": ap}
    return TrialRecord(trial_id, status, {}, iteration=iteration, metrics=metrics)


def test_best_trial_by_mode_ignoring_failed_and_non_finite():
    recs = [
        _rec("a", ap=0.3),
        _rec("b", FAILED, ap=0.9),  # failed trials never win
        _rec("c", STOPPED, ap=0.5, iteration=2),
        _rec("d", ap=math.nan),
        _rec("e"),  # never reported the metric
    ]
    assert best_trial(recs, "segm_AP", "max").trial_id == "c"
    assert best_trial(recs, "segm_AP", "min").trial_id == "a"
    assert best_trial(recs[1:2] + recs[3:], "segm_AP", "max") is None
    assert best_trial([], "segm_AP", "max") is None


def test_ties_go_to_the_longer_then_the_earlier_trial():
    recs = [_rec("a", ap=0.5, iteration=2), _rec("b", ap=0.5), _rec("c", ap=0.5)]
    assert best_trial(recs, "segm_AP", "max").trial_id == "b"
    assert best_trial(recs[::-1], "segm_AP", "max").trial_id == "c"


def test_finite():
    assert records.finite(1) and records.finite(0.5)
    assert not records.finite(math.inf) and not records.finite(math.nan)
    assert not records.finite(None) and not records.finite("0.5")


# ---- trial_records ----------------------------------------------------------------------------


@dataclass
class _Result:
    path: str
    config: dict[str, Any] | None
    metrics: dict[str, Any] | None
    error: Exception | None = None
    metrics_dataframe: pd.DataFrame | None = None


@dataclass
class _Grid:
    results: list[_Result]
    experiment_path: str = "/runs/sweep"
    filesystem: Any = None

    def __iter__(self):
        return iter(self.results)


class _Analysis:
    """Every trial's config, as Ray Tune's ExperimentAnalysis reads it from the experiment."""

    configs: dict[str, dict[str, Any]] = {}

    def __init__(self, path, storage_filesystem=None) -> None:
        assert path == "/runs/sweep"

    def get_all_configs(self) -> dict[str, dict[str, Any]]:
        return self.configs


@pytest.fixture()
def sweep() -> Sweep:
    base = {
        "train": {"iterations": 6, "batch_size": 2, "reference_batch": 2, "num_workers": 1},
        "model": {},
    }
    check = Sweep("t", base, None, DATASET, "", "").trial_params  # type: ignore[arg-type]
    space = parse_space(
        {
            "train.batch_size": {"choice": [2, 4]},  # 4 halves the planned iterations
            "model.anchors.sizes": {"choice": [[8, 16, 32, 64, 128], [4, 8, 16, 32, 64]]},
        },
        check=check,
    )
    return Sweep("t", base, space, DATASET, "", "")


def test_trial_records_from_a_result_grid(sweep, monkeypatch):
    import ray.tune

    _Analysis.configs = {"00002": {"train.batch_size": 2, "model.anchors.sizes": 0}}
    monkeypatch.setattr(ray.tune, "ExperimentAnalysis", _Analysis)
    curve = pd.DataFrame({"iteration": [2, 4, 6], "segm_AP": [0.1, None, 0.3], "loss": [3, 2, 1]})
    grid = _Grid(
        [
            _Result(
                "/runs/sweep/trial-00001",
                {"train.batch_size": 4, "model.anchors.sizes": 1},
                {"iteration": 3, "segm_AP": 0.25, "bbox_AP": 0.5, "loss": 1.5, "lr": 0.1},
                metrics_dataframe=curve.iloc[:1],
            ),
            _Result(  # never reported: no config in its Result, read from the experiment
                "/runs/sweep/trial-00002", None, None, error=RuntimeError("worker died")
            ),
            _Result(
                "/runs/sweep/trial-00000",
                {"train.batch_size": 2, "model.anchors.sizes": 0},
                {"iteration": 4, "segm_AP": 0.2},
                metrics_dataframe=curve,
            ),
        ]
    )
    out = records.trial_records(grid, sweep, "segm_AP")
    assert [r.trial_id for r in out] == ["00000", "00001", "00002"]
    stopped, done, failed = out
    assert (stopped.status, stopped.iteration, stopped.planned_iterations) == (STOPPED, 4, 6)
    assert stopped.values == {"train.batch_size": 2, "model.anchors.sizes": [8, 16, 32, 64, 128]}
    assert stopped.curve == [(2, 0.1), (6, 0.3)]  # the row without the metric is left out
    assert (done.status, done.iteration, done.planned_iterations) == (COMPLETED, 3, 3)
    assert done.metrics == {"segm_AP": 0.25, "bbox_AP": 0.5, "loss": 1.5}  # no lr
    assert done.values["model.anchors.sizes"] == [4, 8, 16, 32, 64]
    assert failed.status == FAILED and failed.error == "RuntimeError: worker died"
    assert failed.iteration == 0 and failed.metrics == {} and failed.curve == []
    assert failed.values["train.batch_size"] == 2
