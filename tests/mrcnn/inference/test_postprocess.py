"""mrcnn.inference.postprocess: fixed slots in the padded frame -> `Detections` in each image's
pixels, the same for the eager model (`MaskRCNN.postprocess`) and the exported one."""

from __future__ import annotations

import numpy as np
import torch

from mrcnn.inference.grid_masks import GridMasks
from mrcnn.inference.mask_paste import paste_masks_in_image
from mrcnn.inference.postprocess import to_detections
from mrcnn.structures import Batch, RawDetections
from tests.mrcnn.scenes import tiny_model


def _random_masks(rng: np.random.Generator, n: int, m: int = 28) -> np.ndarray:
    """Smooth probabilities (blocky noise), so the 0.5 contour runs through the masks."""
    x = rng.random((n, m // 4, m // 4)).astype(np.float32)
    return np.kron(x, np.ones((4, 4), np.float32))[:, :m, :m]


def _raw(rng: np.random.Generator, b: int = 2, d: int = 5) -> dict[str, np.ndarray]:
    xy = rng.uniform(0, 80, (b, d, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 40, (b, d, 2))], axis=2).astype(np.float32)
    return {
        "boxes": boxes,
        "scores": rng.random((b, d)).astype(np.float32),
        "labels": rng.integers(1, 3, (b, d)),
        "valid": np.array([[True, True, True, False, False], [False] * d]),
        "mask_probs": _random_masks(rng, b * d).reshape(b, d, 28, 28),
    }


WINDOWS = np.array([[0, 0, 100, 128], [0, 0, 128, 64]], np.float32)
SCALES = np.array([1.6, 0.5], np.float32)
SIZES = [(63, 80), (256, 128)]


def test_boxes_leave_the_padded_frame_and_are_clipped():
    raw = _raw(np.random.default_rng(1))
    raw["boxes"][0, 0] = [16.0, 8.0, 200.0, 120.0]  # runs past the image
    raw["keypoints"] = np.zeros((2, 5, 1, 3), np.float32)
    raw["keypoints"][0, 0, 0] = [32.0, 16.0, 7.0]
    dets = to_detections(
        **raw, windows=WINDOWS, scales=SCALES, original_sizes=SIZES, mask_thresh=0.5
    )
    assert [len(x) for x in dets] == [3, 0]
    # (16, 8) / 1.6 = (10, 5); (200, 120) / 1.6 = (125, 75) clipped to the 80 x 63 image
    np.testing.assert_allclose(dets[0].boxes[0], [10, 5, 80, 63])
    np.testing.assert_allclose(dets[0].keypoints[0, 0], [20, 10, 7])  # the score stays
    assert dets[0].masks.shape == (3, 63, 80) and dets[1].masks.shape == (0, 256, 128)
    assert dets[0].labels.dtype == np.int64 and dets[0].scores.dtype == np.float32
    pasted = paste_masks_in_image(raw["mask_probs"][0, :3], dets[0].boxes, (63, 80), 0.5)
    np.testing.assert_array_equal(dets[0].masks, pasted)
    assert pasted.any()


def test_grid_masks_and_no_mask_head():
    raw = _raw(np.random.default_rng(2))
    grid = to_detections(
        **raw,
        windows=WINDOWS,
        scales=SCALES,
        original_sizes=SIZES,
        mask_thresh=0.5,
        grid_masks=True,
    )
    assert isinstance(grid[0].masks, GridMasks) and grid[0].masks.shape == (3, 63, 80)
    full = to_detections(
        **raw, windows=WINDOWS, scales=SCALES, original_sizes=SIZES, mask_thresh=0.5
    )
    assert (grid[0].masks.full() != full[0].masks).sum() <= 2
    raw["mask_probs"] = None
    none = to_detections(
        **raw, windows=WINDOWS, scales=SCALES, original_sizes=SIZES, mask_thresh=0.5
    )
    assert none[0].masks.shape == (3, 0, 0)


def test_the_eager_model_post_processes_with_the_same_function():
    raw = _raw(np.random.default_rng(3))
    raw["mask_scores"] = np.random.default_rng(4).random((2, 5)).astype(np.float32)
    batch = Batch(
        images=torch.zeros(2, 3, 128, 128, dtype=torch.uint8),
        windows=torch.from_numpy(WINDOWS),
        scales=torch.from_numpy(SCALES),
        original_sizes=torch.tensor(SIZES),
        image_ids=torch.arange(2),
    )
    eager = tiny_model().postprocess(
        RawDetections(**{k: torch.from_numpy(np.asarray(v)) for k, v in raw.items()}), batch
    )
    host = to_detections(
        **raw, windows=WINDOWS, scales=SCALES, original_sizes=SIZES, mask_thresh=0.5
    )
    for a, e in zip(host, eager, strict=True):
        for field in ("boxes", "scores", "labels", "masks", "mask_scores"):
            np.testing.assert_array_equal(getattr(a, field), getattr(e, field))
