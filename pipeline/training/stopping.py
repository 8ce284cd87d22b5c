"""When a run stops before its last iteration: early stopping on the validation metric
(`train.patience`) and the wall-clock budget (`train.max_minutes`).

Why a run stopped is one of `STOPPED` and travels in the last checkpoint (and from there to
`metrics/train.json` and the MLflow run): `iterations` (it ran them all), `early_stop`
(`patience` validations in a row did not beat the best), `time_budget` (the training time
reached `max_minutes`; a checkpoint is saved first). Both states are saved in every checkpoint,
so a resumed run counts on: the validations since the best, and the training time of the
attempts before (the minutes between a crash and its last checkpoint are not counted).
"""

from __future__ import annotations

import math
import time
from typing import Any

STOPPED = ("iterations", "early_stop", "time_budget")


class Patience:
    """The best validation value so far, its iteration, and the validations since.

    `validated(it, value) -> improved`; `exhausted` once `patience` (> 0) validations in a row
    did not improve (strictly) on the best. patience 0 never stops."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best: float | None = None
        self.best_iteration: int | None = None
        self.since_best = 0

    def validated(self, iteration: int, value: float) -> bool:
        improved = math.isfinite(value) and (self.best is None or value > self.best)
        if improved:
            self.best, self.best_iteration, self.since_best = value, iteration, 0
        else:
            self.since_best += 1
        return improved

    @property
    def exhausted(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_iteration": self.best_iteration,
            "since_best": self.since_best,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_iteration = state["best"], state["best_iteration"]
        self.since_best = int(state["since_best"])


class Budget:
    """Training time against `max_minutes` (0 = no budget), counted from `already_s` (the
    time of the attempts before, from the checkpoint)."""

    def __init__(self, max_minutes: float, already_s: float = 0.0) -> None:
        self.limit_s = max_minutes * 60.0
        self.start = time.monotonic() - already_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def exhausted(self) -> bool:
        return self.limit_s > 0 and self.elapsed() >= self.limit_s


def still_stopped(stopped: str | None, patience: Patience, budget: Budget) -> bool:
    """Whether a run resumed from a checkpoint that says it `stopped` stays stopped under
    today's params: yes unless `train.patience` or `train.max_minutes` was raised (or turned
    off) since, which continues the run from that checkpoint."""
    return (stopped == "early_stop" and patience.exhausted) or (
        stopped == "time_budget" and budget.exhausted
    )
