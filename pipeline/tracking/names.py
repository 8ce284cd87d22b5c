"""The MLflow metric names of a training run, chosen for the order the MLflow UI shows them in.

The run page's *Model metrics* tab (MLflow 3.x) puts a run's charts into sections named after
the part of the metric name before its last "/", shows the named sections in alphabetical
order, then the metrics without a "/" (section "Model metrics"), then MLflow's `system/`
metrics; within a section the charts are in alphabetical order, titled with the last part. A
metric logged at several steps is a line chart, one logged once a bar. So the curves of
training come first and the single numbers after:

    section          metrics                                         logged by
    train            loss, loss_<term>, lr                           rank 0, every log step
    train/perf       images_per_s, memory_gb                         rank 0, every log step
    train/summary    wall_s, images_seen, best_iteration, best_<m>   the train stage, once
    val              <iou type>_AP                                   periodic validation
    val/final        <iou type>_<AP, AP50, ...>                      the evaluate stage, once
    val/final/errors, val/final/per_category/<class>                 the evaluate stage, once

(`val/final` is the model in models/final on the val split; `val` is the same split's first
`train.eval_images` during training.) Everything is prefixed: an unprefixed name would land in
"Model metrics", after every AP section.
"""

from __future__ import annotations

from collections.abc import Mapping

TRAIN = "train/"  # losses and lr, per log step
PERF = "train/perf/"  # throughput and memory, per log step
SUMMARY = "train/summary/"  # once, when training is over
VAL = "val/"  # periodic validation, per validated iteration
FINAL = "val/final/"  # the evaluate stage's scores of the final model


def prefixed(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """{"loss": 0.7} -> {"train/loss": 0.7} for `prefix` "train/"."""
    return {f"{prefix}{key}": value for key, value in metrics.items()}


def short(key: str) -> str:
    """A training metric's name without its prefix ("train/loss" -> "loss"); names logged
    before the prefixes (a run resumed across the change) are returned as they are."""
    return key.removeprefix(TRAIN)


def is_loss_or_lr(key: str) -> bool:
    """Whether `key` is one of the per-step loss terms or the learning rate (with or without the
    `train/` prefix)."""
    name = short(key)
    return name.startswith("loss") or name == "lr"
