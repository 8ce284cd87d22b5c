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


# ---- crop paste (moves to mrcnn/mask_paste.py once that module exists on main) ----
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from mrcnn.mask_ops import bilinear_matrix  # noqa: E402

# Crops of similar size share one zero-padded batch: a group may hold at most this many times
# its own pixels (more padding wastes arithmetic, more groups cost a few ops each).
_MAX_PADDING = 2.5
# Pixels pasted per group at most: bounds the float [n, h, w] intermediate (~256 MB).
_GROUP_PIXELS = 64 * 1024 * 1024


def paste_masks_in_boxes(
    masks: Tensor, boxes: Tensor, image_shape: tuple[int, int], threshold: float = 0.5
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Paste M x M mask probabilities into their boxes of an H x W image, crops only.

    masks [N, M, M], boxes [N, 4] in the image's pixels -> groups of detections whose crops
    have similar sizes: (crops bool [n, h, w] zero-padded to the group's largest crop,
    origins int64 [n, 2] (y0, x0) in the image, index int64 [n] into the N detections).
    Same geometry as torchvision's `paste_masks_in_image` (the mask gets a one-pixel border,
    the box grows by (M + 2) / M and is truncated to whole pixels, bilinear resize with
    align_corners=False), as a separable resize: rows for all N at once (one batched matmul),
    then columns, one batched matmul per group. Pixels outside the crops are False.
    """
    n, m = masks.shape[0], masks.shape[-1]
    h, w = int(image_shape[0]), int(image_shape[1])
    if n == 0:
        return []
    padded = F.pad(masks.float(), (1, 1, 1, 1))  # [N, M+2, M+2]
    mp = m + 2
    scale = mp / m
    boxes = boxes.float()
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    x0 = (cx - half_w).to(torch.int64)  # truncation, as torchvision's .to(int64)
    x1 = (cx + half_w).to(torch.int64)
    y0 = (cy - half_h).to(torch.int64)
    y1 = (cy + half_h).to(torch.int64)
    xs, x_valid, x_first, x_span = _crop_coords(x0, x1, w, mp)  # [N, max w], ..., [N], list
    ys, y_valid, y_first, y_span = _crop_coords(y0, y1, h, mp)
    wx = bilinear_matrix(xs, x_valid, mp)  # [N, max w, M+2]
    rows = torch.bmm(bilinear_matrix(ys, y_valid, mp), padded)  # [N, max h, M+2]
    origins = torch.stack([y_first, x_first], dim=1)
    groups = []
    for index in _size_groups(y_span, x_span):
        gh, gw = max(y_span[i] for i in index), max(x_span[i] for i in index)
        idx = torch.as_tensor(index, device=masks.device)
        crops = torch.bmm(rows[idx, :gh], wx[idx, :gw].transpose(1, 2)) >= threshold
        groups.append((crops, origins[idx], idx))
    return groups


def _crop_coords(
    start: Tensor, end: Tensor, size: int, src: int
) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """Along one axis: a length-`src` signal resized to `end - start + 1` pixels (at least 1)
    placed at `start`, seen through each box's crop (its pixels inside 0..size-1) ->
    source coords [N, L] and validity [N, L] of the crop's pixels (L = the longest crop),
    the crop's first pixel [N] and its length (a list, at least 1)."""
    length = (end - start + 1).clamp(min=1)  # [N]
    first = start.clamp(0, size - 1)
    span = ((start + length).clamp(0, size) - first).clamp(min=1)  # [N]
    span_list = span.tolist()
    pix = first[:, None] + torch.arange(max(span_list), device=start.device)  # [N, L]
    dst = pix - start[:, None]  # position inside the resized mask
    valid = (dst >= 0) & (dst < length[:, None]) & (pix < size)
    ratio = src / length.to(torch.float32)  # area_pixel_compute_scale (align_corners=False)
    coords = ((dst.to(torch.float32) + 0.5) * ratio[:, None] - 0.5).clamp(min=0)
    return coords, valid, first, span_list


def _size_groups(heights: list[int], widths: list[int]) -> list[list[int]]:
    """Detections sorted by crop area, largest first, cut into groups whose padded crops
    (n x max h x max w) hold at most `_MAX_PADDING` times their own pixels."""
    order = sorted(range(len(heights)), key=lambda i: heights[i] * widths[i], reverse=True)
    groups: list[list[int]] = []
    gh = gw = area = 0
    for i in order:
        hh, ww = max(gh, heights[i]), max(gw, widths[i])
        a = area + heights[i] * widths[i]
        padded = (len(groups[-1]) + 1) * hh * ww if groups else 0
        if groups and padded <= _MAX_PADDING * a and padded <= _GROUP_PIXELS:
            groups[-1].append(i)
            gh, gw, area = hh, ww, a
        else:
            groups.append([i])
            gh, gw, area = heights[i], widths[i], heights[i] * widths[i]
    return groups
