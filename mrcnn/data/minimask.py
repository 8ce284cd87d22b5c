"""Mini-masks: each instance's mask cut to its box and resized to m x m.

A full-resolution mask costs H x W per instance (1 MB at 1024 px); a 56 x 56 mini-mask costs 3 KB
and keeps what training needs, since mask targets are cut from the box region anyway (matterport's
USE_MINI_MASK, the seeds' memory trick).

Convention (shared with `mrcnn.modeling.targets.mask_targets`): the mini-mask covers the box
exactly. Boxes are `(x1, y1, x2, y2)` with x2/y2 exclusive (a mask whose columns run 3..7 has x1=3,
x2=8); mini pixel (i, j) is centred at `(y1 + (i + .5) h / m, x1 + (j + .5) w / m)`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import roi_align

from mrcnn.layers.resample import paste_separable


def boxes_from_masks(masks: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """bool [N, H, W] -> float32 [N, 4] tight xyxy boxes (x2/y2 exclusive); zeros for empty."""
    as_numpy = isinstance(masks, np.ndarray)
    m = torch.as_tensor(masks).bool()
    n, h, w = m.shape
    rows, cols = m.any(dim=2), m.any(dim=1)  # [N, H], [N, W]
    ar_h = torch.arange(h, dtype=torch.float32)
    ar_w = torch.arange(w, dtype=torch.float32)
    inf = torch.tensor(float("inf"))
    y1 = torch.where(rows, ar_h, inf).amin(dim=1)
    y2 = torch.where(rows, ar_h + 1, -inf).amax(dim=1)
    x1 = torch.where(cols, ar_w, inf).amin(dim=1)
    x2 = torch.where(cols, ar_w + 1, -inf).amax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    boxes[~rows.any(dim=1)] = 0
    return boxes.numpy() if as_numpy else boxes


def make_mini_masks(
    masks: Tensor | np.ndarray, boxes: Tensor | np.ndarray, size: int
) -> Tensor | np.ndarray:
    """Full masks bool [N, H, W] + their boxes [N, 4] -> uint8 [N, size, size] (0/1).

    Each mini pixel is the area average of the mask under it (RoIAlign with adaptive sampling),
    thresholded at 0.5.
    """
    as_numpy = isinstance(masks, np.ndarray)
    m = torch.as_tensor(masks)
    b = torch.as_tensor(boxes, dtype=torch.float32)
    n = m.shape[0]
    if n == 0:
        out = torch.zeros((0, size, size), dtype=torch.uint8)
    else:
        rois = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], b], dim=1)
        pooled = roi_align(
            m[:, None].float(),
            rois,
            (size, size),
            spatial_scale=1.0,
            sampling_ratio=0,
            aligned=True,
        )
        out = (pooled[:, 0] >= 0.5).to(torch.uint8)
    return out.numpy() if as_numpy else out


def expand_mini_masks(
    boxes: Tensor | np.ndarray, mini_masks: Tensor | np.ndarray, shape: tuple[int, int]
) -> Tensor | np.ndarray:
    """Mini-masks [N, m, m] back to full-frame bool [N, H, W] at `shape = (H, W)`.

    The inverse of `make_mini_masks`: each frame pixel whose centre lies inside the box samples
    the mini-mask bilinearly; pixels outside the box are False.
    """
    as_numpy = isinstance(mini_masks, np.ndarray)
    mm = torch.as_tensor(mini_masks)
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n, size = mm.shape[0], mm.shape[-1]
    h, w = int(shape[0]), int(shape[1])
    centres_y = torch.arange(h, dtype=torch.float32) + 0.5  # [H]
    centres_x = torch.arange(w, dtype=torch.float32) + 0.5  # [W]
    x1, y1, x2, y2 = (b[:, i : i + 1] for i in range(4))  # each [N, 1]
    bw = (x2 - x1).clamp(min=1e-6)
    bh = (y2 - y1).clamp(min=1e-6)
    ys = (centres_y - y1) * (size / bh) - 0.5  # [N, H] mini index coordinates
    xs = (centres_x - x1) * (size / bw) - 0.5
    y_valid = (centres_y >= y1) & (centres_y < y2)
    x_valid = (centres_x >= x1) & (centres_x < x2)
    out = paste_separable(mm.float().reshape(n, size, size), ys, y_valid, xs, x_valid, 0.5)
    return out.numpy() if as_numpy else out


def pack_mini_masks(mini_masks: np.ndarray) -> np.ndarray:
    """uint8/bool [N, m, m] -> bit-packed uint8 [N, ceil(m*m/8)] (8x smaller on disk)."""
    n, mh, mw = mini_masks.shape
    return np.packbits(mini_masks.reshape(n, mh * mw).astype(bool), axis=1)


def unpack_mini_masks(packed: np.ndarray, size: int) -> np.ndarray:
    """Inverse of `pack_mini_masks` -> uint8 [N, size, size]."""
    n = packed.shape[0]
    bits = np.unpackbits(packed, axis=1, count=size * size)
    return bits.reshape(n, size, size)
