"""mrcnn.box_masks: the COCO RLE built from box crops is pycocotools' RLE of the full mask, byte
for byte, wherever the crops lie (image edges, crops as tall as the image whose runs continue
into the next column, empty masks); pickling keeps the masks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from mrcnn.box_masks import BoxMasks, encode_box_masks, encode_crops
from mrcnn.coco_results import decode_masks, encode_masks
from mrcnn.mask_paste import paste_masks_in_boxes, paste_masks_in_image

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_random_crops_encode_as_the_full_masks() -> None:
    rng = np.random.default_rng(0)
    touching = 0
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        n = int(rng.integers(0, 6))
        ch, cw = (int(v) for v in rng.integers(1, 35, 2))  # may run past the image
        crops = rng.random((n, ch, cw)) > rng.random()
        origins = np.stack([rng.integers(0, h, n), rng.integers(0, w, n)], axis=1)
        masks = BoxMasks([crops], [origins], [np.arange(n)], (h, w))
        full = masks.full()
        assert full.shape == (n, h, w)
        assert encode_box_masks(masks) == encode_masks(full)
        touching += int((full[:, -1, :-1] & full[:, 0, 1:]).sum())
    assert touching > 100  # runs that continue from the bottom of a column to the next top


def test_hand_made_runs() -> None:
    """A 4 x 3 image: one crop at (2, 1) 2 x 2 with a run over the column boundary."""
    crops = np.array([[[0, 1], [1, 1]]], dtype=bool)
    [rle] = encode_crops(crops, np.array([[2, 1]]), (4, 3))
    full = np.zeros((4, 3), bool)
    full[2:4, 1:3] = crops[0]
    # column-major: col 1 = 0 0 0 1, col 2 = 0 0 1 1 -> runs 7 zeros, 1 one, 2 zeros, 2 ones
    assert rle == encode_masks(full[None])[0]
    assert rle["size"] == [4, 3]
    np.testing.assert_array_equal(decode_masks([rle])[0], full)
    empty = encode_crops(np.zeros((1, 2, 2), bool), np.array([[0, 0]]), (4, 3))
    assert empty == encode_masks(np.zeros((1, 4, 3), bool))
    assert encode_crops(np.zeros((0, 1, 1), bool), np.zeros((0, 2)), (4, 3)) == []


def test_pasted_detections_encode_as_the_full_paste() -> None:
    """The model's path: paste into crops (groups of sizes), encode; against pasting full
    images and pycocotools' encode; and through pickle (bit-packed crops)."""
    g = torch.Generator().manual_seed(1)
    n, h, w = 60, 97, 131
    masks = torch.rand(n, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w + 40.0, h + 40]) - 30
    wh = torch.rand(n, 2, generator=g) ** 2 * 160 + 0.5  # some larger than the image
    boxes = torch.cat([xy, xy + wh], dim=1)
    full = paste_masks_in_image(masks, boxes, (h, w), 0.5).numpy()
    box_masks = BoxMasks.from_groups(paste_masks_in_boxes(masks, boxes, (h, w), 0.5), (h, w))
    assert len(box_masks) == n and box_masks.shape == (n, h, w) and len(box_masks.crops) > 1
    expected = encode_masks(full)
    assert encode_box_masks(box_masks) == expected
    assert full.any(axis=(1, 2)).sum() > n // 2
    restored = pickle.loads(pickle.dumps(box_masks))
    assert encode_box_masks(restored) == expected
    padded_bytes = sum(c.nbytes for c in box_masks.crops)
    assert len(pickle.dumps(box_masks)) < padded_bytes / 4
    empty = BoxMasks.from_groups(paste_masks_in_boxes(masks[:0], boxes[:0], (h, w)), (h, w))
    assert len(empty) == 0 and encode_box_masks(empty) == []
