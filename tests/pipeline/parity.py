"""Eager vs ONNX Runtime detections: the parity tolerances of issue 10, for the pipeline tests."""

from __future__ import annotations

import numpy as np

from mrcnn.detections import Detections

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
