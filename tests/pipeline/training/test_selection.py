"""Which checkpoint becomes the model (`choose`) from a Ray Train `Result`, and which val AP
ranks them (`resolve_metric`). Ray's own ranking runs in tests/pipeline/stages (slow)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from mrcnn import presets
from pipeline.train_params import TrainParams
from pipeline.training.selection import (
    SCORE_KEY,
    UNSCORED,
    checkpoint_config,
    choose,
    resolve_metric,
)


@dataclass
class _Checkpoint:
    path: str


@dataclass
class _Result:
    """Ray Train V2's `Result`: `best_checkpoints` sorted by score, worst first (Ray's
    `_insert_into_sorted_list`), the latest checkpoint apart."""

    checkpoint: _Checkpoint
    best_checkpoints: list[tuple[_Checkpoint, dict[str, Any]]] = field(default_factory=list)


def _ranked(*scores: tuple[int, float]) -> list[tuple[_Checkpoint, dict[str, Any]]]:
    found = [(_Checkpoint(f"ckpt_{it}"), {"iteration": it, SCORE_KEY: s}) for it, s in scores]
    return sorted(found, key=lambda c: c[1][SCORE_KEY])


def test_keep_best_takes_the_peak_and_keep_last_the_latest():
    result = _Result(_Checkpoint("ckpt_6"), _ranked((6, UNSCORED), (4, 0.7), (2, 0.3)))
    best = choose(result, "best")
    assert (best.checkpoint.path, best.kept, best.best_iteration, best.best_value) == (
        "ckpt_4",
        "best",
        4,
        0.7,
    )
    last = choose(result, "last")
    assert (last.checkpoint.path, last.kept, last.best_iteration, last.best_value) == (
        "ckpt_6",
        "last",
        4,
        0.7,
    )


def test_without_a_validation_the_latest_is_kept_and_no_best_is_named():
    for ranked in ([], _ranked((2, UNSCORED), (4, UNSCORED))):
        c = choose(_Result(_Checkpoint("ckpt_4"), ranked), "best")
        assert (c.checkpoint.path, c.kept, c.best_iteration, c.best_value) == (
            "ckpt_4",
            "last",
            None,
            None,
        )


def test_ray_ranks_on_the_score_with_validation_and_keeps_two_without():
    ranked = checkpoint_config(TrainParams(eval_every=10))
    assert (ranked.num_to_keep, ranked.checkpoint_score_attribute) == (1, SCORE_KEY)
    assert ranked.checkpoint_score_order == "max"
    plain = checkpoint_config(TrainParams())
    assert (plain.num_to_keep, plain.checkpoint_score_attribute) == (2, None)


def test_auto_picks_segm_with_masks_and_bbox_without():
    masks = presets.shapes_small(num_classes=4)
    assert resolve_metric("auto", masks) == "segm_AP"
    assert resolve_metric("bbox_AP", masks) == "bbox_AP"
    boxes = presets.shapes_small(num_classes=4, roi_heads={"masks": False})
    assert resolve_metric("auto", boxes) == "bbox_AP"
    with pytest.raises(ValueError, match="select_metric' is segm_AP"):
        resolve_metric("segm_AP", boxes)
