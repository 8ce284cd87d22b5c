"""Mask paste: small mask probabilities into full images, vectorised (Mask R-CNN sec. 3,
"Inference": the M x M mask is resized to the box and binarised at 0.5).

Shape shorthand: N masks, M mask side (28 for the mask head, m for mini-masks), H x W the
image the masks are pasted into.

Bilinear resampling is separable: resizing a mask `M [m, m]` into rows `ys` and columns `xs` of
an image is `Wy @ M @ Wx^T`, where `Wy [H, m]` holds each output row's two interpolation weights
(zero outside the mask's box). One batched matmul pastes N masks at once, with no per-mask Python
loop and the same arithmetic on CPU and GPU.

Used by the model's postprocessing (`paste_masks_in_image`, torchvision's geometry) and by
mini-mask expansion (`mrcnn.data.minimask.expand_mini_masks`); the two differ only in how they
place the source coordinates, then share `paste_separable`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Output pixels pasted per chunk: bounds the float [chunk, H, W] intermediate (~256 MB).
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


def paste_masks_in_image(
    masks: Tensor, boxes: Tensor, image_shape: tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """Paste M x M mask probabilities into an H x W image at their boxes -> bool [N, H, W].

    Same geometry as torchvision's `paste_masks_in_image` (so its checkpoints give the same
    masks): the mask gets a one-pixel border, the box grows by (M + 2) / M and is truncated to
    whole pixels, and the mask is resized to the box's size with bilinear interpolation
    (align_corners=False). Here the resize is a separable matmul for all N masks at once.
    masks [N, M, M], boxes [N, 4] in the image's pixels.
    """
    m = masks.shape[-1]
    h, w = int(image_shape[0]), int(image_shape[1])
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
    xs, x_valid = _resize_coords(x0, x1, w, mp)
    ys, y_valid = _resize_coords(y0, y1, h, mp)
    return paste_separable(padded, ys, y_valid, xs, x_valid, threshold)


def _resize_coords(start: Tensor, end: Tensor, size: int, src: int) -> tuple[Tensor, Tensor]:
    """Source coordinates of image pixels 0..size-1 when a length-`src` signal is resized to
    `end - start + 1` pixels (at least 1) placed at `start`: [N, size] coords + validity."""
    length = (end - start + 1).clamp(min=1)  # [N]
    pix = torch.arange(size, device=start.device)
    dst = pix[None] - start[:, None]  # [N, size] position inside the resized mask
    valid = (dst >= 0) & (dst < length[:, None])
    ratio = src / length.to(torch.float32)  # area_pixel_compute_scale (align_corners=False)
    coords = ((dst.to(torch.float32) + 0.5) * ratio[:, None] - 0.5).clamp(min=0)
    return coords, valid
