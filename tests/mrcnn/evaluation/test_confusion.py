"""mrcnn.evaluation.confusion: exact counts on a hand-built scene, the score threshold, crowd
regions, the DVC CSV."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mrcnn.evaluation.confusion import confusion_matrix, write_confusion_csv
from tests.mrcnn.evaluation.box_scenes import A, B, C, det, make_gt, shifted

NAMES = ["cat", "dog", "car", "never", "background"]


def scene():
    a0, b0, c0, a1 = (10, 10, 40, 40), (100, 10, 40, 40), (10, 100, 40, 40), (100, 100, 40, 40)
    gt = make_gt(
        {
            1: [(A, a0), (B, b0), (C, c0), (A, a1)],
            2: [(A, (10, 10, 100, 100), 1)],  # a crowd of cats
            3: [(B, a0)],
        }
    )
    results = [
        det(1, A, a0, 0.9),  # cat as cat
        det(1, A, shifted(a0, 2), 0.8),  # the cat again: (background, cat)
        det(1, A, b0, 0.85),  # the dog as a cat: (dog, cat)
        det(1, C, (150, 150, 30, 30), 0.7),  # nothing: (background, car)
        det(1, A, a1, 0.3),  # below the score threshold: the cat a1 is missed
        det(1, B, shifted(c0, 25), 0.6),  # IoU .23 with the car: (background, dog), car missed
        det(2, A, (20, 20, 30, 30), 0.9),  # in the crowd of cats: ignored
        det(2, B, (20, 20, 30, 30), 0.9),  # a dog there: (background, dog)
        det(3, C, a0, 0.9),  # the dog as a car: (dog, car)
        det(3, A, shifted(a0, 4), 0.8),  # the dog is taken: (background, cat)
    ]
    return gt, results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_counts_on_a_hand_built_scene(iou_type: str) -> None:
    gt, results = scene()
    cm = confusion_matrix(gt, results, iou_type)
    assert cm.names == NAMES and cm.category_ids == [A, B, C, 9]
    expected = [
        [1, 0, 0, 0, 1],  # cat: one found, a1 missed (its detection scored 0.3)
        [1, 0, 1, 0, 0],  # dog: taken for a cat once, for a car once
        [0, 0, 0, 0, 1],  # car: missed
        [0, 0, 0, 0, 0],  # never
        [2, 2, 1, 0, 0],  # detections of nothing
    ]
    assert cm.counts.tolist() == expected
    pairs = Counter(zip(cm.actual.tolist(), cm.predicted.tolist(), strict=True))
    assert pairs == Counter(
        {(r, c): n for r, row in enumerate(expected) for c, n in enumerate(row) if n}
    )
    norm = cm.normalized
    np.testing.assert_allclose(norm[0], [0.5, 0, 0, 0, 0.5])
    assert np.isnan(norm[3]).all()
    np.testing.assert_allclose(np.nansum(norm, 1), [1, 1, 1, 0, 1])


def test_score_threshold_sets_the_operating_point() -> None:
    gt, results = scene()
    cm = confusion_matrix(gt, results, "bbox", score_thresh=0.2)
    assert cm.counts[0].tolist() == [2, 0, 0, 0, 0]  # a1's 0.3 detection now counts
    cm = confusion_matrix(gt, results, "bbox", score_thresh=0.95)
    assert cm.counts[:4, 4].tolist() == [2, 2, 1, 0] and cm.counts[4].sum() == 0


def test_empty_results_leave_every_object_undetected() -> None:
    gt, _ = scene()
    cm = confusion_matrix(gt, [], "segm")
    assert cm.counts[:, 4].tolist() == [2, 2, 1, 0, 0] and cm.counts[:, :4].sum() == 0


def test_csv_for_dvc(tmp_path: Path) -> None:
    gt, results = scene()
    cm = confusion_matrix(gt, results, "bbox")
    path = write_confusion_csv(cm, tmp_path / "plots" / "confusion.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["actual", "predicted"]
    got = Counter(tuple(r) for r in rows[1:])
    assert got == Counter(
        {
            ("cat", "cat"): 1,
            ("cat", "background"): 1,
            ("dog", "cat"): 1,
            ("dog", "car"): 1,
            ("car", "background"): 1,
            ("background", "cat"): 2,
            ("background", "dog"): 2,
            ("background", "car"): 1,
        }
    )
    assert not list(tmp_path.glob("plots/*.tmp"))
