"""`match_detections` on hand-built raw outputs: one-to-one matching by label, box and score
tolerance within each image, and the report's counts, differences and mask IoUs."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn.export.compare import match_detections

M = 4  # mask side


def _raw(dets_per_image: list[list[tuple]], d: int = 3) -> dict[str, np.ndarray]:
    """[(label, box, score, mask rows set)] per image -> the five raw outputs, [B, D, ...]."""
    b = len(dets_per_image)
    out = {
        "boxes": np.zeros((b, d, 4), np.float32),
        "scores": np.zeros((b, d), np.float32),
        "labels": np.zeros((b, d), np.int64),
        "valid": np.zeros((b, d), bool),
        "mask_probs": np.zeros((b, d, M, M), np.float32),
    }
    for i, dets in enumerate(dets_per_image):
        for j, (label, box, score, rows) in enumerate(dets):
            out["boxes"][i, j], out["scores"][i, j] = box, score
            out["labels"][i, j], out["valid"][i, j] = label, True
            out["mask_probs"][i, j, rows] = 0.9
    return out


BOX_A = [10.0, 10.0, 50.0, 40.0]
BOX_B = [60.0, 5.0, 90.0, 35.0]


def test_matches_one_to_one_within_tolerances():
    expected = _raw(
        [
            [(1, BOX_A, 0.9, slice(0, 2)), (2, BOX_B, 0.8, slice(0, 4))],
            [(1, BOX_A, 0.7, slice(0, 1))],
        ]
    )
    actual = _raw(
        [
            # image 0 in the other order; B's box 0.005 px off, its score 5e-5 off, its mask
            # half the expected one (IoU 0.5); A's identical
            [(2, [60.005, 5, 90, 35], 0.80005, slice(0, 2)), (1, BOX_A, 0.9, slice(0, 2))],
            # image 1: same box, other label -> no match; and one more detection
            [(3, BOX_A, 0.7, slice(0, 1)), (1, BOX_B, 0.6, slice(0, 1))],
        ]
    )
    report = match_detections(expected, actual)
    assert report["expected"] == 3 and report["actual"] == 4 and report["matched"] == 2
    assert report["matched_fraction"] == pytest.approx(2 / 4)
    assert report["max_box_diff"] == pytest.approx(0.005, abs=1e-5)
    assert report["max_score_diff"] == pytest.approx(5e-5, abs=1e-6)
    assert report["min_mask_iou"] == pytest.approx(0.5)
    assert report["mean_mask_iou"] == pytest.approx(0.75)


def test_a_detection_in_another_image_does_not_match():
    expected = _raw([[(1, BOX_A, 0.9, slice(0, 1))], []])
    actual = _raw([[], [(1, BOX_A, 0.9, slice(0, 1))]])
    assert match_detections(expected, actual)["matched"] == 0


@pytest.mark.parametrize(
    ("box", "score", "matched"),
    [  # offsets exact in binary floating point: on the tolerance is in, a hair past it out
        ([10.0, 10, 50, 40.5], 0.5, 1),
        ([10.0, 10, 50, 40.5 + 2**-10], 0.5, 0),
        ([9.5, 10, 50, 40], 0.75, 1),
        (BOX_A, 0.75 + 2**-10, 0),
    ],
)
def test_tolerances_are_inclusive(box, score, matched):
    expected = _raw([[(1, BOX_A, 0.5, slice(0, 1))]])
    actual = _raw([[(1, box, score, slice(0, 1))]])
    report = match_detections(expected, actual, box_tol=0.5, score_tol=0.25)
    assert report["matched"] == matched


def test_each_actual_detection_matches_once():
    """Two identical expected detections and one actual: one match, not two."""
    det = (1, BOX_A, 0.9, slice(0, 1))
    report = match_detections(_raw([[det, det]]), _raw([[det]]))
    assert (report["matched"], report["matched_fraction"]) == (1, 0.5)


def test_mask_threshold_and_empty_masks():
    expected = _raw([[(1, BOX_A, 0.9, slice(0, 0))]])  # an empty mask on both sides: IoU 1
    actual = _raw([[(1, BOX_A, 0.9, slice(0, 0))]])
    assert match_detections(expected, actual)["min_mask_iou"] == 1.0
    actual["mask_probs"][0, 0, 0] = 0.4  # below 0.5: still empty; above 0.3: a row
    assert match_detections(expected, actual)["min_mask_iou"] == 1.0
    assert match_detections(expected, actual, mask_thresh=0.3)["min_mask_iou"] == 0.0


def test_nothing_on_either_side():
    report = match_detections(_raw([[]]), _raw([[]]))
    assert report == {
        "expected": 0,
        "actual": 0,
        "matched": 0,
        "matched_fraction": 1.0,
        "max_box_diff": 0.0,
        "max_score_diff": 0.0,
        "min_mask_iou": 1.0,
        "mean_mask_iou": 1.0,
    }
    only_one_side = match_detections(_raw([[(1, BOX_A, 0.9, slice(0, 1))]]), _raw([[]]))
    assert only_one_side["matched_fraction"] == 0.0
