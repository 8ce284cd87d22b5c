"""mrcnn.evaluation.coco_eval with keypoints (OKS) and Mask Scoring R-CNN's segm scores."""

from __future__ import annotations

import contextlib
import copy
import io
import math

import numpy as np
import pytest
from pycocotools.coco import COCO

from mrcnn.evaluation.coco_eval import coco_evaluate, ground_truth_results
from mrcnn.evaluation.coco_results import to_coco_results
from mrcnn.inference.detections import Detections

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
ONE = pytest.approx(1.0, abs=1e-12)
SIGMAS = (0.1, 0.1, 0.1, 0.1)
AREA = 2000.0  # a medium object (32^2 .. 96^2): APm defined, APl undefined (-1)


def _gt() -> COCO:
    """Two images, three 4-keypoint "shape" objects; one keypoint unlabelled (v = 0)."""
    anns, rng = [], np.random.default_rng(0)
    for i, (image_id, x, y) in enumerate([(1, 20, 30), (1, 120, 40), (2, 50, 60)]):
        w, h = 50.0, 40.0
        kps = []
        for k in range(4):
            v = 0 if (i, k) == (1, 3) else 2
            kx, ky = (x + rng.uniform(0, w), y + rng.uniform(0, h)) if v else (0.0, 0.0)
            kps += [float(kx), float(ky), v]
        anns.append(
            {
                "id": i + 1,
                "image_id": image_id,
                "category_id": 1,
                "bbox": [x, y, w, h],
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                "area": AREA,
                "iscrowd": 0,
                "keypoints": kps,
                "num_keypoints": sum(1 for v in kps[2::3] if v > 0),
            }
        )
    gt = COCO()
    gt.dataset = {
        "images": [{"id": j, "height": 200, "width": 200} for j in (1, 2)],
        "categories": [{"id": 1, "name": "shape", "keypoints": ["a", "b", "c", "d"]}],
        "annotations": anns,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def test_ground_truth_keypoints_fed_back_give_ap_1():
    gt = _gt()
    results = ground_truth_results(gt)
    assert all(len(r["keypoints"]) == 12 for r in results)
    scores = coco_evaluate(gt, results, ["keypoints", "bbox"], oks_sigmas=SIGMAS)
    kp = scores.metrics["keypoints"]
    assert list(kp) == ["AP", "AP50", "AP75", "APm", "APl"]
    assert kp["AP"] == ONE and kp["AP50"] == ONE and kp["APm"] == ONE and kp["APl"] == -1
    assert scores.metrics["bbox"]["AP"] == ONE
    assert scores.per_category == {"shape": {"keypoints_AP": ONE, "bbox_AP": ONE}}


def test_keypoints_moved_to_oks_0_62_pass_three_of_ten_thresholds():
    """OKS = mean exp(-d^2 / (2 area (2 sigma)^2)) over labelled keypoints: moving each by
    d = sqrt(-ln 0.62 * 2 * area * 0.04) gives OKS 0.62, which passes thresholds .50, .55, .60
    of the ten: AP = 0.3, AP50 = 1, AP75 = 0."""
    gt = _gt()
    d = math.sqrt(-math.log(0.62) * 2 * AREA * (2 * SIGMAS[0]) ** 2)
    results = copy.deepcopy(ground_truth_results(gt))
    for r in results:
        r["keypoints"][0::3] = [x + d for x in r["keypoints"][0::3]]
    kp = coco_evaluate(gt, results, ["keypoints"], oks_sigmas=SIGMAS).metrics["keypoints"]
    assert kp["AP"] == pytest.approx(0.3, abs=1e-9)
    assert kp["AP50"] == ONE and kp["AP75"] == 0


def test_oks_sigmas_must_fit_the_keypoints():
    with pytest.raises(ValueError, match="oks_sigmas has 17 values"):
        coco_evaluate(_gt(), ground_truth_results(_gt()), ["keypoints"])  # COCO's 17 defaults


def test_segm_ranked_by_mask_scores_bbox_by_class_scores():
    """Two detections of one object: a good box with a bad mask scored high by class, and the
    reverse. Class scores rank the bbox results, mask scores the segm results."""
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "height": 40, "width": 40}],
        "categories": [{"id": 1, "name": "square"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 10, 20, 20],
                "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]],
                "area": 400.0,
                "iscrowd": 0,
            }
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    good = np.zeros((40, 40), bool)
    good[10:30, 10:30] = True
    bad = np.zeros((40, 40), bool)
    bad[10:30, 10:18] = True  # IoU 0.4
    det = Detections(
        boxes=np.array([[10, 10, 30, 30], [10, 10, 18, 30]], np.float32),
        scores=np.array([0.9, 0.8], np.float32),
        labels=np.array([1, 1]),
        masks=np.stack([bad, good]),
        mask_scores=np.array([0.2, 0.7], np.float32),
    )
    results = to_coco_results(det, 1)
    assert [r["segm_score"] for r in results] == pytest.approx([0.2, 0.7])
    scores = coco_evaluate(gt, results)
    assert scores.metrics["bbox"]["AP"] == ONE  # the good box ranks first by class score
    assert scores.metrics["segm"]["AP"] == ONE  # the good mask ranks first by mask score
    for r in results:
        del r["segm_score"]
    # Ranked by class score the bad mask (IoU 0.4, a false positive at every threshold) comes
    # first: precision 1/2 at full recall, AP 0.5.
    assert coco_evaluate(gt, results).metrics["segm"]["AP"] == pytest.approx(0.5, abs=1e-9)
