"""The evaluate reports: pr.csv rows from hand-set COCOeval precision arrays, the small
helpers of the overlays, and the folder written as a whole (a failed write keeps the last)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mrcnn.evaluation.coco_eval import CocoScores
from pipeline.reporting import evaluate as rep

T, R, K = 10, 101, 2


def _scores() -> CocoScores:
    """bbox: category 0 precision 0.8 everywhere, category 1 0.4 at IoU .50 only (undefined at
    the other IoUs); both undefined at recall 1.0. segm: nothing defined."""
    p = np.full((T, R, K, 4, 3), -1.0)
    p[:, :, 0, 0, -1] = 0.8
    p[0, :, 1, 0, -1] = 0.4
    p[:, -1] = -1.0
    p[:, :, :, 1:, :-1] = 0.123  # other areas / detection counts: never read
    metrics = {"AP": 0.78, "AP50": 0.6, "AP75": 0.8, "APs": -1.0, "APm": 0.5, "APl": 0.7}
    return CocoScores(
        metrics={"bbox": metrics, "segm": dict.fromkeys(metrics, 0.0)},
        per_category={
            "a": {"bbox_AP": 0.8, "segm_AP": 0.0},
            "b": {"bbox_AP": None, "segm_AP": None},
        },
        precision={"bbox": p, "segm": np.full((T, R, K, 4, 3), -1.0)},
        stats={},
        iou_thresholds=np.linspace(0.5, 0.95, T),
        recall_thresholds=np.linspace(0.0, 1.0, R),
        summary={},
    )


def test_pr_rows():
    rows = rep.pr_rows(_scores())
    assert len(rows) == R
    assert list(rows[0]) == [
        "recall",
        "bbox_iou50",
        "bbox_iou75",
        "bbox_iou50_95",
        "segm_iou50",
        "segm_iou75",
        "segm_iou50_95",
    ]
    assert rows[0]["recall"] == 0.0 and rows[37]["recall"] == 0.37 and rows[-1]["recall"] == 1.0
    # IoU .50: mean of 0.8 and 0.4; .75: category 0 alone; .50:.95: (0.6 + 9 x 0.8) / 10
    assert rows[10]["bbox_iou50"] == pytest.approx(0.6)
    assert rows[10]["bbox_iou75"] == pytest.approx(0.8)
    assert rows[10]["bbox_iou50_95"] == pytest.approx(0.78)
    assert rows[10]["segm_iou50"] == ""  # undefined: an empty cell, not NaN or -1
    assert rows[-1]["bbox_iou50"] == "" and rows[-1]["bbox_iou50_95"] == ""


def test_overlay_indices_spread_over_the_images():
    assert rep.overlay_indices(10, 4) == [0, 3, 6, 9]
    assert rep.overlay_indices(3, 8) == [0, 1, 2]
    assert rep.overlay_indices(7, 1) == [0]
    assert rep.overlay_indices(0, 4) == [] and rep.overlay_indices(5, 0) == []


def test_overlay_helpers():
    assert rep._xyxy([10, 20, 5, 7.5]) == [10.0, 20.0, 15.0, 27.5]
    masks = np.zeros((1, 2, 3), bool)
    masks[0, 1, 2] = True
    big = rep._zoom_masks(masks, 2)
    assert big.shape == (1, 4, 6) and big[0, 2:4, 4:6].all() and big.sum() == 4
    assert rep._zoom_masks(masks, 1) is masks
    entries = [{"keypoints": [1, 2, 2, 3, 4, 0]}, {"keypoints": [5, 6, 1, 7, 8, 2]}]
    kps = rep._keypoints(entries, 3)
    np.testing.assert_array_equal(kps, [[[3, 6, 2], [9, 12, 0]], [[15, 18, 1], [21, 24, 2]]])
    assert rep._keypoints([{"keypoints": [1, 2, 2]}, {"bbox": []}], 2) is None
    assert rep._keypoints([], 2) is None


def test_write_reports_replaces_the_folder_as_a_whole(tmp_path, monkeypatch):
    out = tmp_path / "evaluate"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    overlays = np.full((40, 60, 3), 200, np.uint8)
    results = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]
    steps = {"7_1_rpn": np.zeros((8, 8, 3), np.uint8)}
    rep.write_reports(out, _scores(), overlays, results, steps)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*rep.PICTURES, rep.PR_FILE, rep.RESULTS_FILE, rep.STEPS_DIR]
    )
    assert json.loads((out / rep.RESULTS_FILE).read_text()) == results
    assert [p.name for p in (out / rep.STEPS_DIR).iterdir()] == ["7_1_rpn.png"]
    with open(out / rep.PR_FILE) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == R and rows[10]["bbox_iou75"] == "0.8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluate"]  # no temporary left

    # A failure while writing the next one keeps this one whole.
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rep, "pr_rows", broken)
    with pytest.raises(OSError, match="disk full"):
        rep.write_reports(out, _scores(), overlays, None)
    assert (out / rep.RESULTS_FILE).is_file() and (out / rep.STEPS_DIR / "7_1_rpn.png").is_file()
    monkeypatch.undo()
    rep.write_reports(out, _scores(), overlays, None)  # no results asked: none kept
    assert not (out / rep.RESULTS_FILE).exists() and not list((out / rep.STEPS_DIR).iterdir())


def test_ground_truth_title_counts_an_ignored_region_once():
    """An `__ignore__` region is one crowd annotation per category (20 for 20 classes) but one
    region in the overlay's title, apart from the instances (issue 22 item 8)."""
    seg = [[70.0, 2.0, 94.0, 2.0, 94.0, 26.0]]
    objects = [
        {"image_id": 1, "category_id": c, "iscrowd": 0, "bbox": [c, 0, 5, 5]} for c in (1, 2)
    ]
    region = [
        {"image_id": 1, "category_id": c, "iscrowd": 1, "segmentation": seg} for c in range(1, 21)
    ]
    assert rep.ground_truth_title(objects + region) == "ground truth: 2 instances, 1 ignored region"
    assert rep.ground_truth_title(objects) == "ground truth: 2 instances"
