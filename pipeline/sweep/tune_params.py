"""The `tune` section of params.yaml (`TuneParams`), read by `pipeline.params.validate_file`
with the others and by `pipeline.sweep.config.load_sweep` for a sweep."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.paramfile import check

TUNE_METRICS = {"segm_AP": "max", "bbox_AP": "max", "loss": "min"}  # what train_loop reports


@dataclass
class TuneParams:
    """`tune`: Ray Tune sweeps (`pipeline.tune`; not a DVC stage). Trials are training runs of the
    `train` and `model` sections with the sampled values applied and these keys overriding.

    The search space `tune.space` is a mapping parsed by `pipeline.search_space` (not a field).
    """

    name: str = "shapes"  # sweeps/<name>/ and the Ray Tune experiment <storage_path>/<name>
    num_samples: int = 6  # trials (times each grid, when the space has grids)
    metric: str = "segm_AP"  # segm_AP | bbox_AP (val AP, mode max) | loss (mode min)
    mode: str = "max"
    scheduler: str = "asha"  # asha (stops bad trials at rungs) | fifo (every trial runs out)
    grace_period: int = 100  # ASHA: iterations before a trial can be stopped (first rung)
    reduction_factor: float = 2.0  # ASHA: keep the best 1/factor of trials at each rung
    search_alg: str = "random"  # random | optuna | hyperopt (those two need their package)
    seed: int = 0  # of the search algorithm's sampling
    iterations: int = 300  # per trial, replaces train.iterations (same units, reference batch)
    eval_every: int = 100  # val AP every N iterations: what ASHA compares (train.eval_every)
    eval_images: int = 50  # val images in those evaluations (train.eval_images)
    time_budget_s: float = 0.0  # stop starting / running trials after this; 0 = no budget
    max_concurrent_trials: int = 0  # 0 = from the cluster: CPUs (GPUs) / those of one trial
    max_failures: int = 0  # Tune restarts of a trial whose driver died (0: recorded as failed)
    storage_path: str = ""  # Ray Tune storage, a folder or s3://...; "" = <train.storage_path>/tune
    out_dir: str = "sweeps"  # best_params.yaml, trials table and picture: <out_dir>/<name>/

    def validate(self) -> None:
        check(
            re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name) is not None,
            "name",
            "must be letters, digits, '.', '_', '-'",
        )
        check(self.num_samples >= 1, "num_samples", "must be >= 1")
        check(self.metric in TUNE_METRICS, "metric", f"must be one of {tuple(TUNE_METRICS)}")
        check(
            self.mode == TUNE_METRICS.get(self.metric, self.mode),
            "mode",
            f"must be {TUNE_METRICS.get(self.metric)} for metric {self.metric}",
        )
        check(self.scheduler in ("asha", "fifo"), "scheduler", "must be asha or fifo")
        check(self.grace_period >= 1, "grace_period", "must be >= 1")
        check(self.reduction_factor > 1, "reduction_factor", "must be > 1")
        check(
            re.fullmatch(r"[a-z_]+", self.search_alg) is not None,
            "search_alg",
            "must be a name such as random, optuna or hyperopt",
        )
        for name in ("iterations", "eval_every", "eval_images"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(self.time_budget_s >= 0, "time_budget_s", "must be >= 0 (0 = no budget)")
        check(self.max_concurrent_trials >= 0, "max_concurrent_trials", "must be >= 0 (0 = auto)")
        check(self.max_failures >= 0, "max_failures", "must be >= 0")
        check(bool(self.out_dir.strip()), "out_dir", "must not be empty")
