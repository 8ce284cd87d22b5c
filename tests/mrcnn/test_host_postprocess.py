"""mrcnn.host_postprocess: numpy box mapping + mask paste = the eager torch ones."""

from __future__ import annotations

import numpy as np
import torch

from mrcnn import host_postprocess
from mrcnn.mask_paste import paste_masks_in_image
from mrcnn.structures import Batch, RawDetections
from tests.mrcnn.scenes import tiny_model


def _random_masks(rng: np.random.Generator, n: int, m: int = 28) -> np.ndarray:
    """Smooth probabilities (blurred noise), so the 0.5 contour runs through the masks."""
    x = rng.random((n, m // 4, m // 4)).astype(np.float32)
    return np.kron(x, np.ones((4, 4), np.float32))[:, :m, :m]


def test_paste_matches_torch():
    rng = np.random.default_rng(0)
    masks = _random_masks(rng, 12)
    xy = rng.uniform(-10, 90, (12, 2))
    wh = rng.uniform(0.5, 60, (12, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    boxes[0] = [3.2, 4.7, 3.9, 5.1]  # under a pixel
    boxes[1] = [-20, -20, 200, 150]  # larger than the image
    boxes[2] = [140, 10, 170, 30]  # right of the image: no pixel
    ours = host_postprocess.paste_masks_in_image(masks, boxes, (70, 101), 0.5)
    ref = paste_masks_in_image(torch.from_numpy(masks), torch.from_numpy(boxes), (70, 101), 0.5)
    assert ours.shape == (12, 70, 101) and ours.dtype == bool
    assert ref.numpy().sum() > 5000  # real masks were compared
    assert not ours[2].any()
    # Different matmul kernels may round a value sitting exactly on the threshold differently.
    assert (ours != ref.numpy()).sum() <= 2


def test_empty_paste():
    out = host_postprocess.paste_masks_in_image(
        np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (5, 7)
    )
    assert out.shape == (0, 5, 7)


def test_to_detections_matches_postprocess():
    rng = np.random.default_rng(1)
    b, d = 2, 5
    xy = rng.uniform(0, 80, (b, d, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 40, (b, d, 2))], axis=2).astype(np.float32)
    raw = {
        "boxes": boxes,
        "scores": rng.random((b, d)).astype(np.float32),
        "labels": rng.integers(1, 3, (b, d)),
        "valid": np.array([[True, True, True, False, False], [False] * 5]),
        "mask_probs": _random_masks(rng, b * d).reshape(b, d, 28, 28),
    }
    windows = np.array([[0, 0, 100, 128], [0, 0, 128, 64]], np.float32)
    scales = np.array([1.6, 0.5], np.float32)
    sizes = [(63, 80), (256, 128)]
    ours = host_postprocess.to_detections(
        **raw, windows=windows, scales=scales, original_sizes=sizes, mask_thresh=0.5
    )
    batch = Batch(
        images=torch.zeros(b, 3, 128, 128, dtype=torch.uint8),
        windows=torch.from_numpy(windows),
        scales=torch.from_numpy(scales),
        original_sizes=torch.tensor(sizes),
        image_ids=torch.arange(b),
    )
    eager = tiny_model().postprocess(
        RawDetections(**{k: torch.from_numpy(np.asarray(v)) for k, v in raw.items()}), batch
    )
    assert [len(x) for x in ours] == [3, 0]
    for a, e in zip(ours, eager, strict=True):
        np.testing.assert_array_equal(a.boxes, e.boxes)
        np.testing.assert_array_equal(a.scores, e.scores)
        np.testing.assert_array_equal(a.labels, e.labels)
        assert a.masks.shape == e.masks.shape
        assert (a.masks != e.masks).sum() <= 2
