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
    """N binary masks of one H x W image, each stored as the crop of its box.

    crops:      bool  [N, h, w]; mask n's pixel (y0 + r, x0 + c) is `crops[n, r, c]`; all of a
                mask's pixels outside its crop are False, as are crop pixels past its own box
                (crops of different sizes share one zero-padded array) or past the image edge
    origins:    int64 [N, 2] (y0, x0) of each crop's top-left pixel in the image (>= 0)
    image_size: (H, W)
    """

    crops: np.ndarray
    origins: np.ndarray
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, H, W): the shape of the full masks (`full()`)."""
        return (len(self), int(self.image_size[0]), int(self.image_size[1]))

    def full(self) -> np.ndarray:
        """The full masks, bool [N, H, W] (N whole images: for drawing a few, not for COCO)."""
        n, h, w = self.shape
        out = np.zeros((n, h, w), dtype=bool)
        ch, cw = self.crops.shape[1:]
        for i, (y0, x0) in enumerate(self.origins.tolist()):
            hh, ww = min(ch, h - y0), min(cw, w - x0)
            if hh > 0 and ww > 0:
                out[i, y0 : y0 + hh, x0 : x0 + ww] = self.crops[i, :hh, :ww]
        return out


def encode_box_masks(masks: BoxMasks) -> list[dict[str, Any]]:
    """N box masks -> N COCO RLEs `{"size": [H, W], "counts": str}` of the full H x W masks,
    equal to `mrcnn.coco_results.encode_masks(masks.full())` but without building the full masks.

    Vectorised over the N masks: one pass over the crops finds every run of 1s; the compressed
    `counts` strings come from pycocotools (`frPyObjects` of the uncompressed counts).
    """
    n, height, width = masks.shape
    if n == 0:
        return []
    crops = np.asarray(masks.crops, dtype=bool)
    _, ch, cw = crops.shape
    origins = np.asarray(masks.origins, dtype=np.int64).reshape(n, 2)
    if (origins < 0).any():
        raise ValueError("BoxMasks origins must be >= 0 (crops start inside the image)")
    # Crop pixels past the image edge are dropped (they would wrap into the next column).
    inside_rows = origins[:, 0:1] + np.arange(ch) < height  # [N, h]
    inside_cols = origins[:, 1:2] + np.arange(cw) < width  # [N, w]
    if not (inside_rows.all() and inside_cols.all()):
        crops = crops & inside_rows[:, :, None] & inside_cols[:, None, :]
    # Column-major with a 0 above and below each crop column: +1 steps start runs, -1 end them.
    cols = np.zeros((n, cw, ch + 2), dtype=np.int8)
    cols[:, :, 1:-1] = crops.transpose(0, 2, 1)
    step = np.diff(cols, axis=2)  # [N, w, h + 1]
    sn, sc, sr = np.nonzero(step == 1)  # sorted by (n, c, r): runs appear in image order
    _, ec, er = np.nonzero(step == -1)  # same order; end positions are exclusive
    column_start = (origins[sn, 1] + sc) * height + origins[sn, 0]
    starts = column_start + sr
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

from mrcnn.mask_ops import paste_separable  # noqa: E402


def paste_masks_in_boxes(
    masks: Tensor, boxes: Tensor, image_shape: tuple[int, int], threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Paste M x M mask probabilities into their boxes of an H x W image, crops only.

    masks [N, M, M], boxes [N, 4] in the image's pixels -> crops bool [N, h, w] (zero-padded
    to the largest crop) and origins int64 [N, 2] (y0, x0), as `BoxMasks` holds them. Each crop
    pixel is computed exactly as `paste_masks_in_image` computes that image pixel (torchvision's
    geometry), so placing the crops in empty images gives `paste_masks_in_image`'s masks.
    """
    m = masks.shape[-1]
    h, w = int(image_shape[0]), int(image_shape[1])
    n = masks.shape[0]
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
    xs, x_valid, ox = _crop_coords(x0, x1, w, mp)
    ys, y_valid, oy = _crop_coords(y0, y1, h, mp)
    if n == 0:
        return torch.zeros((0, 1, 1), dtype=torch.bool, device=masks.device), torch.zeros(
            (0, 2), dtype=torch.int64, device=masks.device
        )
    crops = paste_separable(padded, ys, y_valid, xs, x_valid, threshold)
    return crops, torch.stack([oy, ox], dim=1)


def _crop_coords(start: Tensor, end: Tensor, size: int, src: int) -> tuple[Tensor, Tensor, Tensor]:
    """Like `_resize_coords` of `paste_masks_in_image`, for the pixels of each box's crop only:
    -> coords [N, L], valid [N, L] and the crop's first pixel [N]; L = the longest crop."""
    length = (end - start + 1).clamp(min=1)  # [N]
    first = start.clamp(0, size)
    last = (start + length).clamp(0, size)  # exclusive
    span = int((last - first).max()) if start.numel() else 0
    pix = first[:, None] + torch.arange(max(span, 1), device=start.device)  # [N, L]
    dst = pix - start[:, None]
    valid = (dst >= 0) & (dst < length[:, None]) & (pix < size)
    ratio = src / length.to(torch.float32)
    coords = ((dst.to(torch.float32) + 0.5) * ratio[:, None] - 0.5).clamp(min=0)
    return coords, valid, first
