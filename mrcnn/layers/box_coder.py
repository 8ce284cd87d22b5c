"""Box deltas (R-CNN parameterisation, Girshick et al. 2014, appendix C) and clipping.

A box is encoded relative to a reference (anchor or RoI) as
    dx = wx (cx - cx_ref) / w_ref     dw = ww log(w / w_ref)
    dy = wy (cy - cy_ref) / h_ref     dh = wh log(h / h_ref)
The RPN uses weights (1, 1, 1, 1), the box head (10, 10, 5, 5) so both regress unit-variance
targets. All functions broadcast over leading dimensions ([..., 4]) so whole batches go at once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Largest log-scale change decoded: exp(4.135) = 1000 / 16 (as Detectron and torchvision).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def encode(boxes: Tensor, reference: Tensor, weights: tuple[float, ...]) -> Tensor:
    """Deltas [..., 4] that turn `reference` [..., 4] into `boxes` [..., 4]."""
    wx, wy, ww, wh = weights
    ref_w = reference[..., 2] - reference[..., 0]
    ref_h = reference[..., 3] - reference[..., 1]
    ref_cx = reference[..., 0] + 0.5 * ref_w
    ref_cy = reference[..., 1] + 0.5 * ref_h
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    cx = boxes[..., 0] + 0.5 * w
    cy = boxes[..., 1] + 0.5 * h
    return torch.stack(
        [
            wx * (cx - ref_cx) / ref_w,
            wy * (cy - ref_cy) / ref_h,
            ww * torch.log(w / ref_w),
            wh * torch.log(h / ref_h),
        ],
        dim=-1,
    )


def decode(deltas: Tensor, reference: Tensor, weights: tuple[float, ...]) -> Tensor:
    """Boxes [..., 4] from `deltas` [..., 4] applied to `reference` [..., 4] (broadcast)."""
    reference = reference.to(deltas.dtype)
    wx, wy, ww, wh = weights
    ref_w = reference[..., 2] - reference[..., 0]
    ref_h = reference[..., 3] - reference[..., 1]
    ref_cx = reference[..., 0] + 0.5 * ref_w
    ref_cy = reference[..., 1] + 0.5 * ref_h
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=BBOX_XFORM_CLIP)
    dh = (deltas[..., 3] / wh).clamp(max=BBOX_XFORM_CLIP)
    cx = dx * ref_w + ref_cx
    cy = dy * ref_h + ref_cy
    half_w = 0.5 * (torch.exp(dw) * ref_w)
    half_h = 0.5 * (torch.exp(dh) * ref_h)
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


def clip_to_windows(boxes: Tensor, windows: Tensor) -> Tensor:
    """Clip boxes [B, ..., 4] to each image's window [B, 4] = (y1, x1, y2, x2)."""
    shape = (windows.shape[0],) + (1,) * (boxes.dim() - 2)
    y1, x1, y2, x2 = (windows[:, i].reshape(shape).to(boxes.dtype) for i in range(4))
    return torch.stack(
        [
            torch.minimum(torch.maximum(boxes[..., 0], x1), x2),
            torch.minimum(torch.maximum(boxes[..., 1], y1), y2),
            torch.minimum(torch.maximum(boxes[..., 2], x1), x2),
            torch.minimum(torch.maximum(boxes[..., 3], y1), y2),
        ],
        dim=-1,
    )


def box_sizes_at_least(boxes: Tensor, min_size: float) -> Tensor:
    """bool [...]: both sides of each box [..., 4] are >= min_size."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & (
        (boxes[..., 3] - boxes[..., 1]) >= min_size
    )
