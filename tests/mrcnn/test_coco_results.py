"""mrcnn.coco_results: lossless RLE, COCO bbox convention, category mapping."""

from __future__ import annotations

import json

import numpy as np

from mrcnn.coco_results import decode_masks, encode_masks, to_coco_results
from mrcnn.structures import Detections


def test_rle_round_trip_and_results() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((3, 7, 9)) > 0.5
    rles = encode_masks(masks)
    assert all(isinstance(r["counts"], str) and r["size"] == [7, 9] for r in rles)
    assert np.array_equal(decode_masks(json.loads(json.dumps(rles))), masks)
    assert decode_masks([], (7, 9)).shape == (0, 7, 9)
    det = Detections(
        boxes=np.array([[1, 2, 4, 7], [0, 0, 9, 7], [2, 2, 3, 3]], np.float32),
        scores=np.array([0.9, 0.5, 0.25], np.float32),
        labels=np.array([1, 2, 1]),
        masks=masks,
    )
    out = to_coco_results(det, 42, {1: 18, 2: 44}, file_name="a.jpg")
    assert out[0] == {
        "image_id": 42,
        "file_name": "a.jpg",
        "category_id": 18,
        "bbox": [1.0, 2.0, 3.0, 5.0],
        "score": 0.8999999761581421,  # float32 0.9, exactly
        "segmentation": rles[0],
    }
    assert [r["category_id"] for r in out] == [18, 44, 18]
    assert [r["category_id"] for r in to_coco_results(det, 1)] == [1, 2, 1]
