"""Mini-masks: tight boxes from masks, masks cut to their box and resized (exact on
hand-drawn cases), the way back to the full frame, and bit packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrcnn.data.minimask import (
    boxes_from_masks,
    expand_mini_masks,
    make_mini_masks,
    pack_mini_masks,
    unpack_mini_masks,
)


def _masks() -> np.ndarray:
    m = np.zeros((3, 12, 16), bool)
    m[0, 2:6, 3:8] = True  # rows 2..5, columns 3..7
    m[1, 0, 15] = True  # one pixel in the top-right corner
    return m  # mask 2 empty


def test_boxes_from_masks_are_tight_with_exclusive_ends():
    boxes = boxes_from_masks(_masks())
    assert isinstance(boxes, np.ndarray) and boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, [[3, 2, 8, 6], [15, 0, 16, 1], [0, 0, 0, 0]])
    as_tensor = boxes_from_masks(torch.from_numpy(_masks()))
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_array_equal(as_tensor.numpy(), boxes)


def test_mini_mask_of_a_full_box_is_full_and_of_a_half_is_half():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 0:8, 0:4] = True  # the left half of its 8 x 8 box
    boxes = np.array([[2, 2, 6, 6], [0, 0, 8, 8]], np.float32)
    mini = make_mini_masks(masks, boxes, 4)
    assert mini.dtype == np.uint8 and mini.shape == (2, 4, 4)
    np.testing.assert_array_equal(mini[0], np.ones((4, 4)))
    np.testing.assert_array_equal(mini[1], np.tile([1, 1, 0, 0], (4, 1)))
    assert make_mini_masks(masks[:0], boxes[:0], 4).shape == (0, 4, 4)


def test_mini_pixels_are_area_averages_thresholded_at_half():
    """A 4 x 4 box into 2 x 2: each mini pixel averages a 2 x 2 block; 2 of 4 set is 0.5
    (kept), 1 of 4 is 0.25 (dropped)."""
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 0, 0:2] = True  # top-left block: 2 of 4
    mask[0, 2, 2] = True  # bottom-right block: 1 of 4
    mini = make_mini_masks(mask, np.array([[0, 0, 4, 4]], np.float32), 2)
    np.testing.assert_array_equal(mini[0], [[1, 0], [0, 0]])


def test_expand_mini_masks_inverts_make_mini_masks_for_boxes_on_the_grid():
    rng = np.random.default_rng(0)
    blocks = rng.random((3, 4, 4)) < 0.5
    # Each mini pixel a k x k block of the full mask: the round trip is exact.
    full = np.zeros((3, 30, 40), bool)
    boxes = np.array([[0, 0, 8, 8], [10, 6, 22, 18], [36, 26, 40, 30]], np.float32)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        k = (x2 - x1) // 4
        full[i, y1:y2, x1:x2] = blocks[i].repeat(k, 0).repeat(k, 1)
    mini = make_mini_masks(full, boxes, 4)
    np.testing.assert_array_equal(mini, blocks)
    back = expand_mini_masks(boxes, mini, (30, 40))
    assert back.dtype == bool and back.shape == (3, 30, 40)
    inside = np.zeros_like(full)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        inside[i, y1:y2, x1:x2] = True
    assert not back[~inside].any()  # nothing outside the boxes
    # Block interiors come back exactly; only pixels next to a block edge are interpolated.
    for i in range(3):
        for r in range(4):
            for c in range(4):
                k = int(boxes[i, 2] - boxes[i, 0]) // 4
                y, x = int(boxes[i, 1]) + r * k + k // 2, int(boxes[i, 0]) + c * k + k // 2
                assert back[i, y, x] == blocks[i, r, c]


def test_expand_of_an_all_ones_mini_mask_fills_exactly_its_box():
    # A pixel is in the box when its centre is, x1 <= x + 0.5 < x2: columns 2..6 (centre 2.5
    # in, 7.5 out), rows 1..3 (1.5 in, 4.5 out).
    box = np.array([[2.5, 1.5, 7.5, 4.5]], np.float32)
    out = expand_mini_masks(box, np.ones((1, 5, 5), np.uint8), (6, 10))
    expected = np.zeros((6, 10), bool)
    expected[1:4, 2:7] = True
    np.testing.assert_array_equal(out[0], expected)
    t = expand_mini_masks(torch.from_numpy(box), torch.ones(1, 5, 5), (6, 10))
    assert isinstance(t, torch.Tensor) and torch.equal(t[0], torch.from_numpy(expected))


@pytest.mark.parametrize("m", [7, 8, 28])
def test_pack_round_trip(m):
    rng = np.random.default_rng(m)
    masks = (rng.random((5, m, m)) < 0.3).astype(np.uint8)
    packed = pack_mini_masks(masks)
    assert packed.dtype == np.uint8 and packed.shape == (5, -(-m * m // 8))
    np.testing.assert_array_equal(unpack_mini_masks(packed, m), masks)
    assert pack_mini_masks(masks[:0]).shape == (0, -(-m * m // 8))
