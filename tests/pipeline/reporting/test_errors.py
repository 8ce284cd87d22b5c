"""The evaluate stage's error analysis helpers: what to try per dominant error type, eval.json's
compact section and its MLflow names, keypoints left out, and the overlays' keypoint threshold
(pixels)."""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import pytest
from pycocotools.coco import COCO

from mrcnn.evaluation.coco_eval import ground_truth_results
from mrcnn.evaluation.error_types import ERROR_TYPES
from pipeline.reporting import errors as rep
from pipeline.reporting.evaluate import draw_predictions
from pipeline.tracking.runs import mlflow_metrics

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _breakdown(**dap: float) -> dict:
    return {"AP50": 50.0, "dAP": {e: dap.get(e, 0.0) for e in ERROR_TYPES}, "fp": 9.0,
            "fn": 11.0, "counts": {"tp": 3}, "per_category": {"a": {}}}  # fmt: skip


def test_advice_for_the_dominant_error_types():
    """Dominant: >= half the largest dAP of its IoU type and >= 1 point; one line per type, the
    costliest first, naming the params to change."""
    breakdowns = {
        "bbox": _breakdown(cls=1.0, loc=6.0, both=0.2, dupe=3.5, bkg=0.5, miss=2.0),
        "segm": _breakdown(loc=8.0, miss=4.5, dupe=3.0),
    }
    assert rep.dominant(breakdowns) == {
        "loc": {"bbox": 6.0, "segm": 8.0},
        "miss": {"segm": 4.5},
        "dupe": {"bbox": 3.5},
    }
    lines = rep.advice(breakdowns)
    assert [line.split(" (")[0] for line in lines] == [
        "what to try for loc",
        "what to try for miss",
        "what to try for dupe",
    ]
    assert lines[0].startswith("what to try for loc (dAP bbox 6.0, segm 8.0): ")
    assert "mask_pool_size" in lines[0] and "IoU-weighted box loss" in lines[0]
    assert "model.anchors.sizes" in lines[1] and "model.inference.nms_thresh" in lines[2]
    # small costs only: nothing to try
    quiet = {"bbox": _breakdown(loc=0.9, miss=0.4)}
    assert rep.dominant(quiet) == {}
    assert rep.advice(quiet) == ["no error type costs 1 AP50 point or more: nothing stands out"]
    assert rep.advice({}) == []


def test_every_error_type_has_advice():
    assert set(rep.ADVICE) == set(ERROR_TYPES)
    for e in ERROR_TYPES:
        lines = rep.advice({"segm": _breakdown(**{e: 5.0})})
        assert lines == [f"what to try for {e} (dAP segm 5.0): {rep.ADVICE[e]}"]


def test_summary_and_its_mlflow_names():
    analysis = rep.ErrorAnalysis({}, {"bbox": _breakdown(loc=2.5)}, {})
    summary = analysis.summary()
    dap = {**dict.fromkeys(ERROR_TYPES, 0.0), "loc": 2.5}
    assert summary == {"bbox": {"AP50": 50.0, "dAP": dap, "fp": 9.0, "fn": 11.0}}
    assert analysis.lines()[0] == (
        "bbox errors (TIDE, AP50 points): AP50 50.00; dAP loc 2.50, cls 0.00, both 0.00, "
        "dupe 0.00, bkg 0.00, miss 0.00; fp 9.00, fn 11.00"
    )
    logged = mlflow_metrics({"bbox": {"AP": 0.5}, "errors": summary})
    assert logged == {
        "val/final/bbox_AP": 0.5,
        "val/final/errors/bbox_AP50": 50.0,
        **{f"val/final/errors/bbox_dAP_{e}": 2.5 if e == "loc" else 0.0 for e in ERROR_TYPES},
        "val/final/errors/bbox_fp": 9.0,
        "val/final/errors/bbox_fn": 11.0,
    }


def _scene() -> COCO:
    doc = {
        "images": [{"id": 1, "width": 64, "height": 48, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400,
             "iscrowd": 0, "segmentation": [[4, 4, 24, 4, 24, 24, 4, 24]]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 10, 20, 30], "area": 600,
             "iscrowd": 0, "segmentation": [[30, 10, 50, 10, 50, 40, 30, 40]]},
        ],
    }  # fmt: skip
    gt = COCO()
    gt.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def test_keypoints_are_not_analysed(caplog):
    gt = _scene()
    results = ground_truth_results(gt)
    results[1] = {**results[1], "category_id": 1}  # a classification error
    with caplog.at_level(logging.INFO, logger="pipeline.reporting.errors"):
        analysis = rep.analyze_errors(
            gt, results, ("bbox", "keypoints"), [1], confusion_thresh=0.5, pr=False
        )
    assert list(analysis.types) == list(analysis.breakdowns) == ["bbox"] == list(analysis.confusion)
    assert analysis.pr == {} and analysis.primary == "bbox"
    assert "no error analysis for keypoints" in caplog.text
    assert "PR breakdown off" in caplog.text
    assert analysis.breakdowns["bbox"]["counts"]["cls"] == 1
    assert analysis.confusion["bbox"].counts[1, 0] == 1  # a "b" taken for an "a"


@pytest.mark.parametrize("thresh", [2.0, 0.0])
def test_overlay_keypoints_below_the_threshold_are_hidden(thresh):
    """A detection's keypoint scoring 5 is drawn, one scoring 0.5 only when the threshold lets
    it through (the pixel under it stays black)."""
    image = np.zeros((64, 64, 3), np.uint8)
    result = {"image_id": 1, "category_id": 7, "bbox": [8, 8, 40, 40], "score": 0.9,
              "keypoints": [20, 30, 5.0, 35, 40, 0.5]}  # fmt: skip
    drawn = draw_predictions(image, 1, [result], {7: 1}, ["background", "a"], thresh)
    assert drawn[30, 20].any()  # the confident keypoint (row y, column x)
    assert drawn[40, 35].any() == (thresh < 0.5)
    # enlarged 2x: the keypoints move with the image
    big = draw_predictions(np.zeros((128, 128, 3), np.uint8), 2, [result], {7: 1}, ["bg", "a"], 2.0)
    assert big[60, 40].any() and not big[80, 70].any()
