"""mrcnn.evaluation.coco_results: lossless RLE, COCO bbox convention, category mapping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mrcnn.evaluation.coco_results import (
    ResultsEncoder,
    decode_masks,
    encode_masks,
    to_coco_results,
)
from mrcnn.inference.detections import Detections
from mrcnn.inference.grid_masks import GridMasks


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


def _detections(rng: np.random.Generator, n: int, h: int, w: int) -> Detections:
    probs = rng.random((n, 28, 28)).astype(np.float32)
    xy = rng.uniform(-10, [w, h], (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 60, (n, 2))], axis=1).astype(np.float32)
    return Detections(
        boxes=boxes,
        scores=rng.random(n).astype(np.float32),
        labels=rng.integers(1, 3, n),
        masks=GridMasks(probs, boxes, (h, w)),
    )


def test_grid_masks_and_workers_give_the_same_results() -> None:
    """Results from grid masks equal those from their full masks; a ResultsEncoder with 0 or 2
    worker processes gives them in the order the images were added."""
    rng = np.random.default_rng(3)
    images = [
        (_detections(rng, int(rng.integers(0, 12)), 40 + k, 50 - k), 100 + k) for k in range(9)
    ]
    cats = {1: 18, 2: 44}
    expected = []
    for det, image_id in images:
        full = Detections(det.boxes, det.scores, det.labels, det.masks.full())
        from_full = to_coco_results(full, image_id, cats)
        assert to_coco_results(det, image_id, cats) == from_full
        expected += from_full
    assert len(expected) > 30
    for workers in (0, 2):
        with ResultsEncoder(cats, num_workers=workers) as encoder:
            for s in range(0, len(images), 2):  # batches of two images
                chunk = images[s : s + 2]
                encoder.add([d for d, _ in chunk], [i for _, i in chunk])
            assert encoder.results() == expected
    with pytest.raises(ValueError, match="num_workers"):
        ResultsEncoder(cats, num_workers=-1)
