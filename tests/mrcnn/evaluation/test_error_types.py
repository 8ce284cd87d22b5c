"""mrcnn.evaluation.error_types: every detection gets TIDE's type, every object its fate, on
hand-built scenes whose answer is known box by box."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn.evaluation.coco_eval import EvaluationInputError
from mrcnn.evaluation.error_types import DET_TYPES, assign_error_types
from mrcnn.evaluation.matching import greedy_match
from tests.mrcnn.evaluation.box_scenes import A, B, C, det, make_gt, shifted

O0, O1, O2 = (10, 10, 40, 40), (100, 10, 40, 40), (10, 100, 40, 40)
O3, O4 = (100, 100, 40, 40), (150, 150, 40, 40)


def every_type_scene():
    """Image 1: one detection of each type; image 2: a crowd region; image 3: no objects."""
    gt = make_gt(
        {
            1: [(A, O0), (B, O1), (C, O2), (A, O3), (A, O4)],
            2: [(A, (10, 10, 100, 100), 1)],
        },
        n_images=3,
    )
    results = [
        det(1, A, shifted(O0, 4), 0.8),  # IoU .82 with O0, which the 0.9 one takes: dupe
        det(1, C, O1, 0.85),  # a dog called a car: cls
        det(1, A, O0, 0.9),  # tp
        det(1, C, shifted(O2, 20), 0.7),  # IoU 1/3 with the car: loc (the best one at O2)
        det(1, C, shifted(O2, 24), 0.6),  # IoU .25: loc, suppressed by the 0.7 one
        det(1, B, shifted(O3, 20), 0.5),  # IoU 1/3 with a cat, as a dog: both
        det(1, A, (60, 150, 20, 20), 0.4),  # on nothing: bkg
        det(2, A, (20, 20, 30, 30), 0.9),  # inside the crowd of cats: ignored
        det(2, B, (60, 60, 30, 30), 0.8),  # inside it but a dog: bkg (no objects there)
        det(3, C, (0, 0, 50, 50), 0.3),  # an image without objects: bkg
        det(1, A, shifted(O0, 25), 0.45),  # IoU .23 with the matched O0: loc, nothing to fix
    ]
    return gt, results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_each_detection_gets_its_tide_type(iou_type: str) -> None:
    gt, results = every_type_scene()
    t = assign_error_types(gt, results, iou_type)
    types = [DET_TYPES[k] for k in t.det_type]
    assert types == [
        "tp",
        "cls",
        "dupe",
        "loc",
        "loc",
        "both",
        "loc",
        "bkg",
        "ignored",
        "bkg",
        "bkg",
    ]
    assert t.det_result.tolist() == [2, 1, 0, 3, 4, 5, 10, 6, 7, 8, 9]  # image, then score order
    assert t.det_rank.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 0]
    assert t.det_gt.tolist() == [0, 1, 0, 2, 2, 3, 0, -1, -1, -1, -1]
    # the oracle fixes the best cls / loc error of each unmatched object only
    fixes = np.zeros(11, bool)
    fixes[[1, 3]] = True
    assert t.det_fixes.tolist() == fixes.tolist()
    assert t.gt_det.tolist() == [0, -1, -1, -1, -1]
    # O1 and O2 are explained by their cls / loc errors; O3 only by a both error: missed
    assert t.gt_missed.tolist() == [False, False, False, True, True]
    assert t.gt_ann.tolist() == [1, 2, 3, 4, 5]  # the crowd region is not an object
    expected_iou = [1, 36 / 44, 20 / 60, 16 / 64, 15 / 65]
    np.testing.assert_allclose(t.det_iou[[0, 2, 3, 4, 6]], expected_iou, atol=0.02)


def test_thresholds_move_the_boundaries() -> None:
    """With t_b = 0.3 the detection at IoU .25 with its object is background (IoU <= t_b with
    every object); the one at 1/3 stays a loc error."""
    gt, results = every_type_scene()
    t = assign_error_types(gt, results, "bbox", bg_thresh=0.3)
    assert DET_TYPES[t.det_type[4]] == "bkg"
    assert DET_TYPES[t.det_type[3]] == "loc"  # IoU 1/3 >= 0.3


def test_max_dets_keeps_the_best_scores_per_image() -> None:
    gt, results = every_type_scene()
    t = assign_error_types(gt, results, "bbox", max_dets=2)
    assert t.det_result.tolist() == [2, 1, 7, 8, 9]
    assert t.gt_missed.tolist() == [False, False, True, True, True]  # the loc errors are gone


def test_empty_results_miss_every_object() -> None:
    gt, _ = every_type_scene()
    t = assign_error_types(gt, [], "segm")
    assert len(t.det_type) == 0 and t.gt_missed.all() and (t.gt_det == -1).all()


def test_results_of_unknown_images_are_refused() -> None:
    gt, results = every_type_scene()
    with pytest.raises(EvaluationInputError, match="not in the ground truth"):
        assign_error_types(gt, [*results, det(99, A, O0, 0.5)], "bbox")


def test_bad_arguments() -> None:
    gt, results = every_type_scene()
    with pytest.raises(ValueError, match="keypoints are not typed"):
        assign_error_types(gt, results, "keypoints")
    with pytest.raises(ValueError, match="bg_thresh"):
        assign_error_types(gt, results, "bbox", pos_thresh=0.1, bg_thresh=0.5)


def test_segm_reads_polygon_and_uncompressed_results() -> None:
    """A result mask given as a polygon or as an uncompressed RLE is typed like its RLE."""
    gt, results = every_type_scene()
    x, y, w, h = O0
    poly = dict(results[2], segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]])
    grid = np.zeros((200, 200), np.uint8)
    x, y, w, h = O1
    grid[y : y + h, x : x + w] = 1
    flat = grid.reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    raw = dict(results[1], segmentation={"size": [200, 200], "counts": counts})
    raw["category_id"] = B  # the dog found as a dog: now a true positive
    t = assign_error_types(gt, [poly, raw], "segm")
    assert [DET_TYPES[k] for k in t.det_type] == ["tp", "tp"]


def test_greedy_match_takes_the_best_free_iou_in_score_order() -> None:
    iou = np.array([[[0.6, 0.8], [0.0, 0.7]], [[0.55, 0.0], [0.9, 0.0]]])
    match, taken = greedy_match(iou, 0.5)
    assert match.tolist() == [[1, -1], [0, -1]]  # image 2's second detection finds it taken
    assert taken.tolist() == [[False, True], [True, False]]
    match, _ = greedy_match(iou, 0.5, taken=np.array([[False, True], [False, False]]))
    assert match.tolist() == [[0, -1], [0, -1]]
