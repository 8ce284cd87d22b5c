"""mrcnn.evaluation.coco_index: the results index built in batch is faster-coco-eval's loadRes.

The reference is faster-coco-eval's own `loadRes` on the same copies: every field it sets ("id",
"iscrowd", "area", and for segm results the mask's "bbox") must come out equal, and the index
must answer the same image / category queries. The evaluations on top are held to pycocotools
by test_coco_eval_backends.
"""

from __future__ import annotations

import contextlib
import copy
import io

import pytest
from pycocotools.coco import COCO

from mrcnn.evaluation.coco_index import (
    faster_ground_truth,
    load_results,
    results_for,
    results_index,
)
from tests.mrcnn.evaluation.test_coco_eval_backends import _noisy_detections, coco_gt  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_results_index_sets_what_load_res_sets(coco_gt: COCO, iou_type: str) -> None:  # noqa: F811
    import faster_coco_eval

    gt = faster_ground_truth(coco_gt)
    results = _noisy_detections(coco_gt, 2)
    for r in results[::3]:
        r["segm_score"] = r["score"] / 2  # Mask Scoring results: segm ranks by these
    copies = results_for(iou_type, results)
    ours = results_index(gt, copy.deepcopy(copies), iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = load_results(gt, copy.deepcopy(copies), faster_coco_eval.COCO)

    assert len(ours.anns) == len(ref.anns) == len(results)
    for ann_id, want in ref.anns.items():
        got = ours.anns[ann_id]
        assert got["image_id"] == want["image_id"] and got["category_id"] == want["category_id"]
        assert got["score"] == want["score"] and got["iscrowd"] == want["iscrowd"] == 0
        assert got["area"] == pytest.approx(float(want["area"]), abs=1e-9)
        if iou_type == "bbox":
            assert got["bbox"] == want["bbox"]
        else:  # no box is computed from a segm result's mask: the segm evaluation reads none
            assert "bbox" not in got
    if iou_type == "segm":  # the areas are the masks' pixel counts, not the boxes'
        boxes = {r["id"]: r["bbox"] for r in ref.anns.values()}
        assert any(a["area"] < boxes[i][2] * boxes[i][3] - 1 for i, a in ours.anns.items())
        assert {a["score"] for a in ours.anns.values()} >= {r["segm_score"] for r in results[::3]}
    for img_id in coco_gt.getImgIds():
        assert sorted(ours.getAnnIds(imgIds=[img_id])) == sorted(ref.getAnnIds(imgIds=[img_id]))
    assert ours.getCatIds() == ref.getCatIds()
    assert ours.getImgIds() == ref.getImgIds()


def test_results_index_of_nothing_is_empty(coco_gt: COCO) -> None:  # noqa: F811
    index = results_index(faster_ground_truth(coco_gt), [], "segm")
    assert index.anns == {} and sorted(index.getImgIds()) == sorted(coco_gt.getImgIds())


def test_keypoint_results_keep_only_their_fields() -> None:
    results = [
        {
            "image_id": 1,
            "category_id": 1,
            "score": 0.5,
            "bbox": [0, 0, 1, 1],
            "keypoints": [1, 2, 2],
        },
        {"image_id": 1, "category_id": 1, "score": 0.4, "bbox": [0, 0, 1, 1]},
    ]
    assert results_for("keypoints", results) == [
        {"image_id": 1, "category_id": 1, "score": 0.5, "keypoints": [1, 2, 2]}
    ]
    assert "segmentation" not in results_for("bbox", [dict(results[0], segmentation={})])[0]
    assert "bbox" not in results_for("segm", [dict(results[0], segmentation={})])[0]
