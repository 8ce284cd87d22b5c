"""Detection masks kept as the mask head's M x M grid, and their COCO RLE computed from it.

A detection's mask is its M x M probabilities resized to its box and thresholded (Mask R-CNN sec. 3;
`mrcnn.inference.mask_paste` has the geometry: torchvision's one-pixel zero border, box grown by (M
+ 2) / M and truncated to whole pixels, bilinear with align_corners=False). COCO evaluation needs
each mask as run-length encoding of the full H x W image, column by column. Pasting the pixels first
(100 detections on a COCO image are ~1.4 M pixels in their boxes) and then searching them for runs
is what makes COCO-scale evaluation slow. Here no pixel is pasted.

Bilinear resizing is separable, so each output column x of a mask is one column profile: the
mask's (M + 2) rows resampled horizontally at x, `col [M + 2]`. Along that column the value at
source row coordinate c is the straight line between `col[j]` and `col[j + 1]` (j = floor(c)).
So the set where it is >= the threshold is a union of intervals whose ends are the crossings
of those lines (at most M + 1 per column, found in one vectorised pass). Output row r of the box
samples c = (r + 0.5) * ratio - 0.5, so the rows of an interval [u, d] are
ceil((u + 0.5) / ratio - 0.5) .. floor((d + 0.5) / ratio - 0.5). The zero border makes every
column start and end below the threshold (the threshold must be > 0), so crossings alternate up
and down. The work is (columns x M) per mask instead of (pixels x M).

The runs are those of `mrcnn.inference.mask_paste.paste_masks_in_image`: the same RLE except where a
pixel's interpolated value is within float rounding of the threshold (the paste multiplies
rows then columns in float32, this resamples columns first; tests/mrcnn/inference/test_grid_masks.py
holds the differences to such pixels). `GridMasks.full()` decodes this module's own RLE, so
pictures and COCO results of a `GridMasks` always agree.

Shape shorthand: N masks, M the mask side, H x W the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from mrcnn.inference.mask_paste import grown_boxes


@dataclass
class GridMasks:
    """N binary masks of one H x W image, kept as the mask head's output and their boxes.

    probs:      float32 [N, M, M] mask probabilities (the predicted class's channel)
    boxes:      float32 [N, 4] xyxy in the image's pixels (what the masks are resized to)
    image_size: (H, W)
    threshold:  a pixel is in the mask where its interpolated probability is >= this (0, 1]
    Small to pickle (M x M floats per mask, for encoding in worker processes).
    """

    probs: np.ndarray
    boxes: np.ndarray
    image_size: tuple[int, int]
    threshold: float = 0.5

    def __post_init__(self) -> None:
        self.probs = np.ascontiguousarray(self.probs, dtype=np.float32)
        self.boxes = np.ascontiguousarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if self.probs.ndim != 3 or self.probs.shape[1] != self.probs.shape[2]:
            raise ValueError(f"probs must be [N, M, M], got shape {self.probs.shape}")
        if len(self.probs) != len(self.boxes):
            raise ValueError(f"{len(self.probs)} masks but {len(self.boxes)} boxes")
        if not self.threshold > 0:
            raise ValueError(
                f"threshold must be > 0 (the zero border is outside), got {self.threshold}"
            )

    def __len__(self) -> int:
        return len(self.probs)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, H, W): the shape of the full masks (`full()`)."""
        return (len(self), *self.image_size)

    def encode(self) -> list[dict[str, Any]]:
        """N COCO RLEs `{"size": [H, W], "counts": str}` of the full masks."""
        starts, ends, owner = mask_runs(self.probs, self.boxes, self.image_size, self.threshold)
        return rles_from_runs(starts, ends, owner, len(self), self.image_size)

    def full(self) -> np.ndarray:
        """bool [N, H, W]: the masks as whole images (for drawing a few, not for COCO)."""
        n, h, w = self.shape
        if n == 0:
            return np.zeros((0, h, w), dtype=bool)
        fixed = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in self.encode()]
        return mask_utils.decode(fixed).transpose(2, 0, 1).astype(bool)


def _axis(
    start: np.ndarray, end: np.ndarray, size: int, src: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Along one axis, the pasted extent [start, end] (int64 [N], `grown_boxes`) -> its first
    pixel (may be < 0) [N], its source step `ratio` float32 [N] (align_corners=False), and
    the pixels of it inside 0..size-1: [begin, end) [N] each."""
    length = np.maximum(end - start + 1, 1)
    ratio = np.float32(src) / length.astype(np.float32)
    return start, ratio, np.maximum(start, 0), np.minimum(start + length, size)


def mask_runs(
    probs: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int], threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of 1s of N masks (probs float32 [N, M, M] resized to boxes float32 [N, 4] of an
    H x W image, >= threshold) in COCO's column-major pixel order.

    -> starts int64 [R], ends int64 [R] (exclusive; pixel (y, x) is x * H + y), owner int64 [R]:
    which mask each run belongs to; sorted by mask, then position. A run that reaches the
    bottom of a column and one that starts at the top of the next are not joined here.
    """
    height, width = int(image_size[0]), int(image_size[1])
    n, m = probs.shape[0], probs.shape[-1]
    mp = m + 2
    padded = np.zeros((n, mp, mp), dtype=np.float32)  # torchvision's one-pixel zero border
    padded[:, 1:-1, 1:-1] = probs
    gx0, gy0, gx1, gy1 = grown_boxes(boxes, m)
    x0, x_ratio, x_begin, x_end = _axis(gx0, gx1, width, mp)
    y0, y_ratio, y_begin, y_end = _axis(gy0, gy1, height, mp)

    # Every image column of every mask: its mask and pixel x, then the source coordinate.
    ncols = np.maximum(x_end - x_begin, 0)
    col_mask = np.repeat(np.arange(n), ncols)  # [C]
    first_col = np.cumsum(ncols) - ncols
    x = x_begin[col_mask] + (np.arange(col_mask.size) - first_col[col_mask])
    c = ((x - x0[col_mask]).astype(np.float32) + np.float32(0.5)) * x_ratio[col_mask]
    c = np.clip(c - np.float32(0.5), 0, mp - 1)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, mp - 1)
    frac = (c - i0)[:, None]
    by_column = np.ascontiguousarray(padded.transpose(0, 2, 1))  # [N, mp columns, mp rows]
    profile = by_column[col_mask, i0]  # [C, mp]: (1 - frac) x left column + frac x right
    profile *= 1 - frac
    right = by_column[col_mask, i1]
    right *= frac
    profile += right

    # Threshold crossings between source rows j and j + 1: up, down, up, ... in each column.
    above = profile >= threshold
    col, j = np.nonzero(above[:, 1:] != above[:, :-1])
    a = profile[col, j].astype(np.float64)
    cross = j + (threshold - a) / (profile[col, j + 1] - a)  # source row coordinate
    up, down, col = cross[0::2], cross[1::2], col[0::2]
    owner = col_mask[col]
    ratio = y_ratio[owner].astype(np.float64)
    first = y0[owner] + np.ceil((up + 0.5) / ratio - 0.5).astype(np.int64)
    last = y0[owner] + np.floor((down + 0.5) / ratio - 0.5).astype(np.int64)
    top = np.maximum(first, y_begin[owner])
    bottom = np.minimum(last + 1, y_end[owner])
    keep = top < bottom
    offset = x[col][keep] * height
    return offset + top[keep], offset + bottom[keep], owner[keep]


def rles_from_runs(
    starts: np.ndarray,
    ends: np.ndarray,
    owner: np.ndarray,
    n: int,
    image_size: tuple[int, int],
) -> list[dict[str, Any]]:
    """Runs of 1s (starts/ends/owner int64 [R] as `mask_runs` gives them: column-major pixel
    positions, sorted by owner then position) -> n COCO RLEs `{"size": [H, W], "counts": str}`.

    Runs that touch (the bottom of one column and the top of the next) are joined; the
    compressed `counts` strings come from pycocotools (`frPyObjects` of the run lengths).
    """
    if n == 0:
        return []
    height, width = int(image_size[0]), int(image_size[1])
    total = height * width
    touch = np.zeros(len(starts), dtype=bool)
    touch[1:] = (starts[1:] == ends[:-1]) & (owner[1:] == owner[:-1])
    keep_end = np.ones_like(touch)
    keep_end[:-1] = ~touch[1:]
    starts, start_owner, ends = starts[~touch], owner[~touch], ends[keep_end]
    bounds = np.stack([starts, ends], axis=1).reshape(-1)  # [s0, e0, s1, e1, ...]
    counts = np.diff(bounds, prepend=0)  # run lengths, 0s and 1s alternating
    runs = np.bincount(start_owner, minlength=n)  # [n] runs of 1s per mask
    first = np.cumsum(2 * runs) - 2 * runs  # [n] where each mask's bounds begin
    with_runs = runs > 0
    counts[first[with_runs]] = bounds[first[with_runs]]  # a mask's first 0s count from pixel 0
    last = np.zeros(n, dtype=np.int64)
    last[with_runs] = bounds[first[with_runs] + 2 * runs[with_runs] - 1]
    tail = total - last  # [n] the 0s after the last run of 1s
    has_tail = (tail > 0) | ~with_runs
    sizes = 2 * runs + has_tail  # [n] counts per mask
    out_first = np.cumsum(sizes) - sizes
    lengths = np.empty(int(sizes.sum()), dtype=np.uint32)
    mask_of = np.repeat(np.arange(n), 2 * runs)
    lengths[out_first[mask_of] + np.arange(len(counts)) - first[mask_of]] = counts
    lengths[(out_first + 2 * runs)[has_tail]] = tail[has_tail]
    ends = np.cumsum(sizes).tolist()
    uncompressed = [
        {"size": [height, width], "counts": lengths[s:e]}
        for s, e in zip([0, *ends[:-1]], ends, strict=True)
    ]
    rles = mask_utils.frPyObjects(uncompressed, height, width)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
        rle["size"] = [height, width]
    return rles
