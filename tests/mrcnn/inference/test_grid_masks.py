"""mrcnn.inference.grid_masks: COCO RLE from the mask grid is the RLE of the pasted mask
(`mrcnn.inference.mask_paste.paste_masks_in_image`) wherever the boxes lie (image edges, outside it,
boxes taller than the image whose runs continue into the next column, sub-pixel boxes), except
at pixels whose interpolated value is within float rounding of the threshold."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from mrcnn.evaluation.coco_results import decode_masks, encode_masks
from mrcnn.inference.grid_masks import GridMasks, rles_from_runs
from mrcnn.inference.mask_paste import crop_weights, grown_boxes, paste_masks_in_image


def _values64(probs: np.ndarray, boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """The interpolated value of every pixel, float64 [N, H, W], with the paste's geometry (its
    float32 crop coordinates and weights), to tell pixels at the threshold apart."""
    n, m = probs.shape[0], probs.shape[-1]
    x0, y0, x1, y1 = grown_boxes(boxes, m)
    out = np.zeros((n, h, w))
    for k in range(n):
        top, wy = crop_weights(int(y0[k]), int(y1[k]), h, m + 2)
        left, wx = crop_weights(int(x0[k]), int(x1[k]), w, m + 2)
        padded = np.pad(probs[k].astype(np.float64), 1)
        crop = wy.astype(np.float64) @ padded @ wx.astype(np.float64).T
        out[k, top : top + len(wy), left : left + len(wx)] = crop
    return out


def _case(rng: np.random.Generator, n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    smooth = np.stack(
        [
            np.add.outer(
                np.sin(np.linspace(0, rng.uniform(1, 6), 28)), np.cos(np.linspace(0, 4, 28))
            )
            for _ in range(n)
        ]
    )
    probs = (0.5 * np.clip(smooth, 0, 1) + 0.5 * rng.random((n, 28, 28))).astype(np.float32)
    xy = rng.uniform(-0.3, 1.1, (n, 2)) * [w, h]
    wh = rng.uniform(0, 1, (n, 2)) ** 2 * [1.5 * w, 1.5 * h] + rng.uniform(0.01, 2, (n, 2))
    return probs, np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_runs_are_the_pasted_masks_up_to_rounding_at_the_threshold() -> None:
    rng = np.random.default_rng(0)
    masks = differing = touching = 0
    for h, w in [(97, 131), (64, 48), (13, 200), (1, 1), (300, 7)]:
        probs, boxes = _case(rng, 40, h, w)
        pasted = paste_masks_in_image(probs, boxes, (h, w))
        grid = GridMasks(probs, boxes, (h, w))
        rles = grid.encode()
        got = decode_masks(rles, (h, w))
        assert got.shape == (40, h, w)
        wrong = got != pasted
        values = _values64(probs, boxes, h, w)
        assert np.abs(values[wrong] - 0.5).max(initial=0) < 1e-5  # only at the threshold
        masks += 40
        differing += int(wrong.any(axis=(1, 2)).sum())
        touching += int((got[:, -1, :-1] & got[:, 0, 1:]).sum())
        same = ~wrong.any(axis=(1, 2))
        assert [rles[i] for i in np.flatnonzero(same)] == [
            r for i, r in enumerate(encode_masks(pasted)) if same[i]
        ]
        np.testing.assert_array_equal(grid.full(), got)
    assert differing <= masks // 100
    assert touching > 20  # runs that continue from the bottom of a column to the next top


def test_a_full_box_mask_covers_the_grown_box_less_its_border_pixels() -> None:
    """All-ones probabilities in box (2, 3, 20, 25) of a 32 x 32 image: the box grows by 30 / 28
    (columns 1..20, rows 2..25) and its outermost pixels sample mostly the zero border (< 0.5),
    so the mask is columns 2..19 x rows 3..24 (as `MaskRCNN.postprocess` pastes it)."""
    boxes = np.array([[2.0, 3, 20, 25]], dtype=np.float32)
    [rle] = GridMasks(np.ones((1, 28, 28)), boxes, (32, 32)).encode()
    expected = np.zeros((1, 32, 32), dtype=bool)
    expected[0, 3:25, 2:20] = True
    assert rle == encode_masks(expected)[0]
    assert rle["size"] == [32, 32]


def _image(runs: list[tuple[int, int]], h: int, w: int) -> np.ndarray:
    """bool [H, W] from runs of column-major positions (x * H + y)."""
    col_major = np.zeros(h * w, dtype=bool)
    for s, e in runs:
        col_major[s:e] = True
    return col_major.reshape(w, h).T


def test_hand_made_runs_join_across_columns() -> None:
    """A 4 x 3 image: runs 7..8 and 10..12 of mask 0; runs 2..4 and 4..6 of mask 1 (one run
    over the boundary of columns 0 and 1); mask 2 empty."""
    starts, ends, owner = np.array([7, 10, 2, 4]), np.array([8, 12, 4, 6]), np.array([0, 0, 1, 1])
    rles = rles_from_runs(starts, ends, owner, 3, (4, 3))
    expected = np.stack([_image([(7, 8), (10, 12)], 4, 3), _image([(2, 6)], 4, 3)])
    expected = np.concatenate([expected, np.zeros((1, 4, 3), bool)])
    assert rles == encode_masks(expected)
    assert rles[1]["counts"] == encode_masks(expected[1:2])[0]["counts"]
    assert rles_from_runs(starts[:0], ends[:0], owner[:0], 0, (4, 3)) == []


def test_no_masks_pickles_and_bad_input() -> None:
    rng = np.random.default_rng(1)
    probs, boxes = _case(rng, 5, 40, 50)
    grid = GridMasks(probs, boxes, (40, 50), 0.6)
    assert len(grid) == 5 and grid.shape == (5, 40, 50)
    assert pickle.loads(pickle.dumps(grid)).encode() == grid.encode()
    pasted = paste_masks_in_image(probs, boxes, (40, 50), 0.6)
    assert (grid.full() != pasted).sum() <= 2
    none = GridMasks(probs[:0], boxes[:0], (40, 50))
    assert none.encode() == [] and none.full().shape == (0, 40, 50)
    with pytest.raises(ValueError, match="threshold must be > 0"):
        GridMasks(probs, boxes, (40, 50), 0.0)
    with pytest.raises(ValueError, match="5 masks but 4 boxes"):
        GridMasks(probs, boxes[:4], (40, 50))
    with pytest.raises(ValueError, match=r"\[N, M, M\]"):
        GridMasks(probs[:, :3], boxes, (40, 50))
