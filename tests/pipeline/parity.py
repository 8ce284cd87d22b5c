"""Eager vs ONNX Runtime detections: the parity tolerances of issue 10, for the pipeline tests."""

from __future__ import annotations

import numpy as np

from mrcnn.inference.detections import Detections

BOX_TOL = 1e-2  # px, in the model's input frame (scaled to each image's pixels below)
SCORE_TOL = 1e-4
MIN_MASK_IOU = 0.98


def assert_same_detections(
    expected: list[Detections], actual: list[Detections], scales: list[float] | None = None
) -> None:
    """Same detections per image, in order: labels equal, boxes within `BOX_TOL / scale` px of
    the original image (`scales[i]` = input side / original side; 1 when not given), scores
    within `SCORE_TOL`, masks of the same shape with IoU >= `MIN_MASK_IOU` (two empty masks
    agree)."""
    assert len(expected) == len(actual)
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        scale = scales[i] if scales else 1.0
        assert len(e) == len(a), f"image {i}: {len(e)} vs {len(a)} detections"
        np.testing.assert_array_equal(a.labels, e.labels)
        np.testing.assert_allclose(a.boxes, e.boxes, rtol=0, atol=BOX_TOL / scale)
        np.testing.assert_allclose(a.scores, e.scores, rtol=0, atol=SCORE_TOL)
        assert np.shape(a.masks) == np.shape(e.masks)
        for j, (ma, mb) in enumerate(zip(np.asarray(e.masks), np.asarray(a.masks), strict=True)):
            union = (ma | mb).sum()
            iou = 1.0 if union == 0 else (ma & mb).sum() / union
            assert iou >= MIN_MASK_IOU, f"image {i} detection {j}: mask IoU {iou:.3f}"


def assert_same_results(expected: list[dict], actual: list[dict], box_tol: float) -> None:
    """Two COCO results lists (`pipeline.predict`'s results.json) hold the same detections in
    the same order: ids, file names and categories equal, `bbox` [x, y, w, h] within `box_tol`
    px (2 x for w and h), scores within `SCORE_TOL`, mask IoU >= `MIN_MASK_IOU`."""
    from mrcnn.evaluation.coco_results import decode_masks

    assert len(actual) == len(expected) > 0
    for e, a in zip(expected, actual, strict=True):
        assert (a["image_id"], a["file_name"], a["category_id"]) == (
            e["image_id"],
            e["file_name"],
            e["category_id"],
        )
        np.testing.assert_allclose(a["bbox"], e["bbox"], rtol=0, atol=2 * box_tol)
        assert abs(a["score"] - e["score"]) <= SCORE_TOL
        ma, mb = decode_masks([e["segmentation"], a["segmentation"]])
        union = (ma | mb).sum()
        assert union == 0 or (ma & mb).sum() / union >= MIN_MASK_IOU
