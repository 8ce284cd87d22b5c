"""COCO run-length encoding of masks kept in their boxes, with no full-image copy.

A detection's mask is zero outside its box, so a full `H x W` mask per detection (what
`pycocotools.mask.encode` needs) is mostly zeros: 100 detections on a 640 x 480 image are 30 MB of
booleans per image, encoded one by one. `BoxMasks` keeps each mask as the crop of its box only,
and `encode_box_masks` writes the RLE of the full image straight from the crops.

COCO's RLE reads the image column by column (column-major, "Fortran order"): pixel (y, x) is at
position `x * H + y`, and `counts` alternates run lengths of 0s and 1s, starting with 0s (a first
count of 0 when pixel 0 is set; no trailing run of 0s after the last 1). A crop whose top-left
pixel is `(y0, x0)` covers, in that order, one stretch `[(x0 + c) * H + y0, ... + h)` of each of
its columns c, so the runs of 1s found inside the crop's columns are runs of the full image after
an offset; two runs that touch across a column boundary (a crop as tall as the image) are merged.
The result is identical, byte for byte, to `pycocotools.mask.encode` of the full mask
(tests/mrcnn/test_mask_rle.py).

Shape shorthand: N masks, H x W the image, h x w the crops (padded to a common size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


@dataclass
class BoxMasks:
    """N binary masks of one H x W image, each stored as the crop of its box, in G groups of
    crops of similar size (as `paste_masks_in_boxes` makes them, one batched op per group).

    crops:      G arrays bool [n_g, h_g, w_g]: mask `index[g][k]`'s pixel (y0 + r, x0 + c) is
                `crops[g][k, r, c]`; a mask's pixels outside its crop are False, as are crop
                pixels past its own box (a group's crops are zero-padded to its largest) or
                past the image edge
    origins:    G arrays int64 [n_g, 2]: (y0, x0) of each crop's top-left pixel (>= 0)
    index:      G arrays int64 [n_g]: which of the N masks each crop is (together 0..N-1)
    image_size: (H, W)
    Pickled with the crops bit-packed (8x smaller, for worker processes).
    """

    crops: list[np.ndarray]
    origins: list[np.ndarray]
    index: list[np.ndarray]
    image_size: tuple[int, int]

    @classmethod
    def from_groups(
        cls, groups: Sequence[tuple[Any, Any, Any]], image_size: tuple[int, int]
    ) -> BoxMasks:
        """From `mrcnn.mask_paste.paste_masks_in_boxes`'s (crops, origins, index) tensors (on
        any device)."""
        arrays = [[t.cpu().numpy() for t in group] for group in groups]
        return cls(
            crops=[a[0] for a in arrays],
            origins=[a[1] for a in arrays],
            index=[a[2] for a in arrays],
            image_size=(int(image_size[0]), int(image_size[1])),
        )

    def __len__(self) -> int:
        return sum(len(i) for i in self.index)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, H, W): the shape of the full masks (`full()`)."""
        return (len(self), int(self.image_size[0]), int(self.image_size[1]))

    def full(self) -> np.ndarray:
        """The full masks, bool [N, H, W] (N whole images: for drawing a few, not for COCO)."""
        n, h, w = self.shape
        out = np.zeros((n, h, w), dtype=bool)
        for crops, origins, index in zip(self.crops, self.origins, self.index, strict=True):
            ch, cw = crops.shape[1:]
            for k, (y0, x0) in enumerate(np.asarray(origins).tolist()):
                hh, ww = min(ch, h - y0), min(cw, w - x0)
                if hh > 0 and ww > 0:
                    out[int(index[k]), y0 : y0 + hh, x0 : x0 + ww] = crops[k, :hh, :ww]
        return out

    def __getstate__(self) -> dict[str, Any]:
        packed = [(np.packbits(c, axis=None), c.shape) for c in self.crops]
        return {
            "packed": packed,
            "origins": self.origins,
            "index": self.index,
            "image_size": self.image_size,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.crops = [
            np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).view(bool)
            for bits, shape in state["packed"]
        ]
        self.origins = state["origins"]
        self.index = state["index"]
        self.image_size = state["image_size"]


def encode_box_masks(masks: BoxMasks) -> list[dict[str, Any]]:
    """N box masks -> N COCO RLEs `{"size": [H, W], "counts": str}` of the full H x W masks,
    equal to `mrcnn.coco_results.encode_masks(masks.full())` but without building them."""
    out: list[dict[str, Any]] = [{}] * len(masks)
    for crops, origins, index in zip(masks.crops, masks.origins, masks.index, strict=True):
        rles = encode_crops(crops, origins, masks.image_size)
        for k, rle in zip(np.asarray(index).tolist(), rles, strict=True):
            out[k] = rle
    return out


def encode_crops(
    crops: np.ndarray, origins: np.ndarray, image_size: tuple[int, int]
) -> list[dict[str, Any]]:
    """crops bool [n, h, w] at origins int [n, 2] (y0, x0) of an H x W image -> n COCO RLEs of
    the full masks (pixels outside the crops False; crop pixels past the image edge dropped).

    Vectorised over the n crops: one pass finds every run of 1s; the compressed `counts`
    strings come from pycocotools (`frPyObjects` of the uncompressed counts).
    """
    height, width = int(image_size[0]), int(image_size[1])
    crops = np.asarray(crops, dtype=bool)
    n, ch, cw = crops.shape
    if n == 0:
        return []
    origins = np.asarray(origins, dtype=np.int64).reshape(n, 2)
    if (origins < 0).any():
        raise ValueError("BoxMasks origins must be >= 0 (crops start inside the image)")
    # Crop pixels past the image edge are dropped (they would wrap into the next column).
    inside_rows = origins[:, 0:1] + np.arange(ch) < height  # [N, h]
    inside_cols = origins[:, 1:2] + np.arange(cw) < width  # [N, w]
    if not (inside_rows.all() and inside_cols.all()):
        crops = crops & inside_rows[:, :, None] & inside_cols[:, None, :]
    # A 0 row above and below each crop: along each column, +1 steps start runs of 1s and -1
    # steps end them (exclusive). Found in row-major order, then sorted into COCO's column-major
    # order (a sort of the few steps, not a transposed copy of the pixels).
    framed = np.zeros((n, ch + 2, cw), dtype=np.int8)
    framed[:, 1:-1] = crops
    step = framed[:, 1:] - framed[:, :-1]  # [n, h + 1, w]
    where = np.flatnonzero(step)
    up = step.reshape(-1)[where] == 1
    sn, sr, sc = np.unravel_index(where[up], step.shape)
    en, er, ec = np.unravel_index(where[~up], step.shape)
    s_order = np.lexsort((sr, sc, sn))  # by mask, column, row
    e_order = np.lexsort((er, ec, en))
    sn, sr, sc = sn[s_order], sr[s_order], sc[s_order]
    er, ec = er[e_order], ec[e_order]
    starts = (origins[sn, 1] + sc) * height + origins[sn, 0] + sr
    ends = (origins[sn, 1] + ec) * height + origins[sn, 0] + er
    # A run ending at the bottom of a column and one starting at the top of the next are one.
    touch = np.zeros(len(starts), dtype=bool)
    touch[1:] = (starts[1:] == ends[:-1]) & (sn[1:] == sn[:-1])
    keep_start = ~touch
    keep_end = np.ones_like(touch)
    keep_end[:-1] = ~touch[1:]
    starts, start_n = starts[keep_start], sn[keep_start]
    ends = ends[keep_end]
    bounds = np.stack([starts, ends], axis=1).reshape(-1)  # [s0, e0, s1, e1, ...]
    split = np.searchsorted(start_n, np.arange(1, n))
    total = height * width
    uncompressed = []
    for b in np.split(bounds, split * 2):
        counts = np.diff(b, prepend=0)
        if b.size == 0 or b[-1] != total:
            counts = np.append(counts, total - (b[-1] if b.size else 0))
        uncompressed.append({"size": [height, width], "counts": counts.astype(np.uint32)})
    rles = mask_utils.frPyObjects(uncompressed, height, width)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
        rle["size"] = [height, width]
    return rles
