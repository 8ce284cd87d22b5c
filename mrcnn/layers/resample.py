"""Separable bilinear resampling of small masks into frames (mini-mask expansion).

Bilinear resampling is separable: resizing a mask `M [m, m]` into rows `ys` and columns `xs` of
a frame is `Wy @ M @ Wx^T`, where `Wy [H, m]` holds each output row's two interpolation weights
(zero outside the mask's box). One batched matmul resamples N masks at once, with no per-mask
Python loop and the same arithmetic on CPU and GPU. `mrcnn.data.minimask.expand_mini_masks`
uses it; detection masks are pasted into their boxes' crops by `mrcnn.inference.mask_paste`.

Shape shorthand: N masks, m mask side, H x W the frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Output pixels resampled per chunk: bounds the float [chunk, H, W] intermediate (~256 MB).
_CHUNK_PIXELS = 64 * 1024 * 1024


def bilinear_matrix(coords: Tensor, valid: Tensor, size: int) -> Tensor:
    """Interpolation weights for sampling a length-`size` signal at continuous indices.

    coords: float [N, L] source index per output position (pixel centres at integers)
    valid:  bool  [N, L] output positions inside the source's box (others get a zero row)
    -> float [N, L, size]; each valid row holds two weights summing to 1 (edges clamp).
    """
    c = coords.clamp(0, size - 1)
    i0 = c.floor().long()
    i1 = (i0 + 1).clamp(max=size - 1)
    frac = c - i0
    w = coords.new_zeros(*coords.shape, size)
    w.scatter_add_(-1, i0.unsqueeze(-1), (1 - frac).unsqueeze(-1))
    w.scatter_add_(-1, i1.unsqueeze(-1), frac.unsqueeze(-1))
    return w * valid.unsqueeze(-1)


def paste_separable(
    masks: Tensor,
    ys: Tensor,
    y_valid: Tensor,
    xs: Tensor,
    x_valid: Tensor,
    threshold: float,
) -> Tensor:
    """Resample N masks into N full images and threshold them.

    masks: float [N, m, m]; ys/y_valid: [N, H]; xs/x_valid: [N, W] (see `bilinear_matrix`)
    -> bool [N, H, W], true where the interpolated value is >= threshold.
    """
    n, mh, mw = masks.shape
    h, w = ys.shape[1], xs.shape[1]
    out = torch.zeros((n, h, w), dtype=torch.bool, device=masks.device)
    if n == 0:
        return out
    masks = masks.float()
    chunk = max(1, _CHUNK_PIXELS // max(1, h * w))
    for s in range(0, n, chunk):  # chunks bound memory; each chunk is one batched matmul
        e = min(n, s + chunk)
        wy = bilinear_matrix(ys[s:e].float(), y_valid[s:e], mh)  # [c, H, m]
        wx = bilinear_matrix(xs[s:e].float(), x_valid[s:e], mw)  # [c, W, m]
        out[s:e] = torch.bmm(torch.bmm(wy, masks[s:e]), wx.transpose(1, 2)) >= threshold
    return out
