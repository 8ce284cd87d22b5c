"""Which checkpoint becomes the model: Ray Train's checkpoint scoring on the validation metric.

With periodic validation (`train.eval_every` > 0) every checkpoint reports `SCORE_KEY`: the
value of `train.select_metric` when it was validated, -inf when it was not (a checkpoint taken
between validations for crash safety, ranked last). Ray's `CheckpointConfig(num_to_keep=1,
checkpoint_score_attribute=SCORE_KEY, checkpoint_score_order="max")` then keeps the best one
beside the latest (Ray never deletes the latest) and records both in the run's storage, so a
crashed run that is started again keeps the best of its attempts. `choose` reads Ray's best
(`Result.best_checkpoints`, in Ray's order: by score, a tie going to the later one) and
`train.keep` decides whether the model is made of it (`best`) or of the latest (`last`).
Without validation there is nothing to rank: the latest is kept and no best is named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mrcnn.config import Config
from pipeline.train_params import TrainParams
from pipeline.training.periodic_eval import iou_types_of

SCORE_KEY = "val_score"  # in every checkpoint's reported metrics (Ray ranks them on it)
UNSCORED = float("-inf")  # the score of a checkpoint taken between validations


def resolve_metric(select_metric: str, cfg: Config) -> str:
    """`train.select_metric` for this model: `auto` is keypoints_AP for a keypoint model (of
    COCO's 17 person keypoints), segm_AP with a mask head, else bbox_AP; a metric periodic
    validation cannot give for this model raises."""
    available = [f"{t}_AP" for t in iou_types_of(cfg)]
    if select_metric == "auto":
        return next(m for m in ("keypoints_AP", "segm_AP", "bbox_AP") if m in available)
    if select_metric not in available:
        raise ValueError(
            f"params key 'train.select_metric' is {select_metric}, but this model is validated "
            f"on {', '.join(available)} only (segm needs a mask head; keypoints a keypoint head "
            "of COCO's 17 person keypoints): use auto or one of those"
        )
    return select_metric


def checkpoint_config(params: TrainParams):
    """Ray's `CheckpointConfig`: the best by `SCORE_KEY` and the latest with validation on,
    the last two without."""
    from ray.train import CheckpointConfig

    if not params.eval_every:
        return CheckpointConfig(num_to_keep=2)
    return CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute=SCORE_KEY, checkpoint_score_order="max"
    )


@dataclass(frozen=True)
class Choice:
    """The checkpoint the model is made of and what the run's best was.

    checkpoint: a `ray.train.Checkpoint`; kept: "best" or "last" (what it is);
    best_iteration / best_value: the best validated checkpoint's (None without validation)."""

    checkpoint: Any
    kept: str
    best_iteration: int | None
    best_value: float | None


def choose(result: Any, keep: str) -> Choice:
    """`train.keep` applied to a Ray Train `Result`: Ray's best checkpoint, or the latest."""
    ranked = result.best_checkpoints or []
    best, metrics = ranked[-1] if ranked else (None, {})
    score = metrics.get(SCORE_KEY, UNSCORED)
    if best is None or not math.isfinite(score):  # nothing validated: nothing to choose from
        return Choice(result.checkpoint, "last", None, None)
    iteration = int(metrics["iteration"])
    if keep == "best":
        return Choice(best, "best", iteration, float(score))
    return Choice(result.checkpoint, "last", iteration, float(score))
