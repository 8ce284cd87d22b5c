"""mrcnn.evaluation.coco_eval: the ground truth fed back as predictions gives AP = 1; degraded
predictions give the AP that COCO's definition says; no detections at all is AP 0, not a
crash."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from mrcnn.evaluation.coco_eval import (
    METRIC_NAMES,
    EvaluationInputError,
    coco_evaluate,
    ground_truth_results,
    pr_curves,
)
from tests.coco_helpers import CATEGORIES, make_coco, write_annotations

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
# COCOeval's precision is tp / (tp + fp + eps): a perfect score is 1 up to that epsilon.
ONE = pytest.approx(1.0, abs=1e-12)

# Small (< 32^2 px), medium and large (> 96^2 px) objects, so that APs, APm and APl are all
# defined. Non-contiguous category ids 3, 7, 11 (tests/coco_helpers.py).
SIZES = [(60, 80), (64, 48), (200, 240), (240, 200), (330, 300), (300, 360)]


@pytest.fixture(scope="module")
def coco_gt(tmp_path_factory: pytest.TempPathFactory) -> COCO:
    root = tmp_path_factory.mktemp("coco")
    doc = make_coco(root, "val", SIZES, seed=3, per_image=(2, 4))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations" / "instances_val.json"))
        for ann in doc["annotations"]:  # make_coco writes area 0: use the real mask areas
            ann["area"] = float(gt.annToMask(gt.anns[ann["id"]]).sum())
        crowd = dict(doc["annotations"][0], id=999_999, iscrowd=1)  # ignored by COCOeval
        doc["annotations"].append(crowd)
        write_annotations(root, "val", doc)
        return COCO(str(root / "annotations" / "instances_val.json"))


def _metric_values(scores) -> dict[str, float]:
    return {f"{t}.{k}": v for t, m in scores.metrics.items() for k, v in m.items()}


def test_ground_truth_as_predictions_gives_ap_1(coco_gt: COCO) -> None:
    results = ground_truth_results(coco_gt)
    n_gt = len(coco_gt.getAnnIds(iscrowd=False))
    assert len(results) == n_gt and all(r["score"] == 1.0 for r in results)
    areas = [a["area"] for a in coco_gt.loadAnns(coco_gt.getAnnIds(iscrowd=False))]
    assert min(areas) < 32**2 < 96**2 < max(areas)  # every area range has ground truth
    assert any(96**2 > a > 32**2 for a in areas)

    scores = coco_evaluate(coco_gt, results)

    assert list(scores.metrics) == ["bbox", "segm"]
    for iou_type in ("bbox", "segm"):
        assert list(scores.metrics[iou_type]) == list(METRIC_NAMES)
    assert _metric_values(scores) == {
        f"{t}.{k}": ONE for t in ("bbox", "segm") for k in METRIC_NAMES
    }
    assert scores.per_category == {c["name"]: {"bbox_AP": ONE, "segm_AP": ONE} for c in CATEGORIES}
    curves = pr_curves(scores)
    for iou_type in ("bbox", "segm"):
        for values in curves[iou_type].values():
            np.testing.assert_array_equal(values, np.ones(101))
    assert "IoU=0.50:0.95" in scores.summary["segm"]
    assert "area" not in results[0] and "id" not in results[0]  # inputs are not modified


def test_boxes_shifted_to_iou_two_thirds(coco_gt: COCO) -> None:
    """Each box moved right by 0.2 of its width: IoU = 0.8 / 1.2 = 2/3 with its ground truth,
    a hit at IoU thresholds .50 .. .65 and a miss from .70 on, so bbox AP = 4/10 exactly; the
    masks are untouched, so segm AP stays 1."""
    results = ground_truth_results(coco_gt)
    for r in results:
        r["bbox"][0] += 0.2 * r["bbox"][2]
    scores = coco_evaluate(coco_gt, results)
    assert scores.metrics["bbox"]["AP"] == pytest.approx(0.4, abs=1e-12)
    assert (scores.metrics["bbox"]["AP50"], scores.metrics["bbox"]["AP75"]) == (1.0, 0.0)
    assert scores.metrics["segm"]["AP"] == 1.0
    curves = pr_curves(scores)["bbox"]
    np.testing.assert_array_equal(curves["iou50"], np.ones(101))
    np.testing.assert_array_equal(curves["iou75"], np.zeros(101))
    np.testing.assert_allclose(curves["iou50_95"], np.full(101, 0.4))


def test_missed_and_wrong_and_extra_detections(coco_gt: COCO) -> None:
    truth = ground_truth_results(coco_gt)
    # Every second instance missed: precision 1 up to the recall reached, 0 after.
    half = coco_evaluate(coco_gt, truth[::2], ["bbox"])
    assert 0.3 < half.metrics["bbox"]["AP"] < 0.7
    assert "segm" not in half.metrics

    # Extra low-score false positives after every true positive leave AP at 1 (COCO
    # interpolates precision from the right); the same ones scored above change it.
    extra = [
        dict(r, category_id=CATEGORIES[0]["id"] if r["category_id"] != 3 else 7) for r in truth
    ]
    low = [dict(r, score=0.5) for r in extra]
    assert coco_evaluate(coco_gt, truth + low).metrics["segm"]["AP"] == 1.0
    high = coco_evaluate(
        coco_gt, [dict(r, score=0.5) for r in truth] + [dict(r, score=0.9) for r in extra]
    )
    assert high.metrics["segm"]["AP"] < 0.9

    # Every label wrong: nothing matches.
    wrong = coco_evaluate(coco_gt, extra)
    assert wrong.metrics["bbox"]["AP"] == wrong.metrics["segm"]["AP50"] == 0.0
    assert all(e["segm_AP"] == 0.0 for e in wrong.per_category.values())


def test_no_detections_is_ap_0_with_a_warning(
    coco_gt: COCO, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mrcnn.evaluation.coco_eval"):
        scores = coco_evaluate(coco_gt, [])
    assert "no detections" in caplog.text
    assert _metric_values(scores) == {
        f"{t}.{k}": 0.0 for t in ("bbox", "segm") for k in METRIC_NAMES
    }
    assert all(e["bbox_AP"] == e["segm_AP"] == 0.0 for e in scores.per_category.values())
    np.testing.assert_array_equal(pr_curves(scores)["segm"]["iou50"], np.zeros(101))


def test_image_subset_and_undefined_ranges(coco_gt: COCO) -> None:
    """Evaluated on the two small images only: the other images' ground truth is not counted
    (AP stays 1), and with no large objects there APl is COCO's -1 (undefined)."""
    small = [i for i in coco_gt.getImgIds() if coco_gt.imgs[i]["height"] < 100]
    results = ground_truth_results(coco_gt, small)
    scores = coco_evaluate(coco_gt, results, image_ids=small)
    assert scores.metrics["segm"]["AP"] == 1.0
    assert scores.metrics["segm"]["APl"] == -1.0
    present = {coco_gt.cats[r["category_id"]]["name"] for r in results}
    for name, entry in scores.per_category.items():  # categories absent from these images: None
        assert (entry["segm_AP"] is None) == (name not in present)
    assert len(present) < len(CATEGORIES)  # (so that the line above checks a None)
    # ... while against all images the same results miss most of the ground truth
    assert coco_evaluate(coco_gt, results).metrics["segm"]["AP"] < 0.5


def test_results_for_unknown_images_raise(coco_gt: COCO, tmp_path: Path) -> None:
    stray = copy.deepcopy(ground_truth_results(coco_gt)[:1])
    stray[0]["image_id"] = 12345
    with pytest.raises(EvaluationInputError, match="12345"):
        coco_evaluate(coco_gt, stray)
    with pytest.raises(EvaluationInputError, match="777"):
        coco_evaluate(coco_gt, [], image_ids=[777])
    with pytest.raises(ValueError, match="iou_types"):
        coco_evaluate(coco_gt, [], iou_types=["proposals"])


def test_a_shared_category_name_keeps_both_categories() -> None:
    """Two categories called "shape" (ids 1, 2): per_category keeps them apart by id."""
    rle = {"size": [8, 8], "counts": "0440`1"}  # rows 0..3 of columns 0..1
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "height": 8, "width": 8}],
        "categories": [{"id": 1, "name": "shape"}, {"id": 2, "name": "shape"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": rle,
                "area": 8.0,
                "bbox": [0, 0, 2, 4],
                "iscrowd": 0,
            },
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    scores = coco_evaluate(gt, ground_truth_results(gt))
    assert scores.per_category == {
        "shape (1)": {"bbox_AP": ONE, "segm_AP": ONE},
        "shape (2)": {"bbox_AP": None, "segm_AP": None},
    }
