"""Mask paste: small mask probabilities into full images, vectorised (Mask R-CNN sec. 3,
"Inference": the M x M mask is resized to the box and binarised at 0.5).

Shape shorthand: N masks, M mask side (28 for the mask head, m for mini-masks), H x W the
image the masks are pasted into.

Bilinear resampling is separable: resizing a mask `M [m, m]` into rows `ys` and columns `xs` of
an image is `Wy @ M @ Wx^T`, where `Wy [H, m]` holds each output row's two interpolation weights
(zero outside the mask's box). One batched matmul pastes N masks at once, with no per-mask Python
loop and the same arithmetic on CPU and GPU.

Detections (`paste_masks_in_boxes`, torchvision's geometry) are pasted into their box crops
only: a crop is all a detection's mask can cover, and 100 full 640 x 480 masks per image are
30 M pixels where the crops are a few hundred thousand. Crops of similar size share one
zero-padded batch (one matmul per group); `paste_masks_in_image` places them in full images
for users. COCO evaluation pastes nothing: `mrcnn.grid_masks` finds the same runs from the
M x M grid.
Mini-mask expansion (`mrcnn.data.minimask.expand_mini_masks`) pastes into whole frames with
`paste_separable`.
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

    masks [N, M, M], boxes [N, 4] in the image's pixels. The crops of `paste_masks_in_boxes`
    placed in empty images (so both give the same pixels, bit for bit).
    """
    n = masks.shape[0]
    h, w = int(image_shape[0]), int(image_shape[1])
    out = torch.zeros((n, h, w), dtype=torch.bool, device=masks.device)
    for crops, origins, index in paste_masks_in_boxes(masks, boxes, image_shape, threshold):
        k, r, c = crops.nonzero(as_tuple=True)  # set pixels only: no [n, H, W] temporary
        out[index[k], origins[k, 0] + r, origins[k, 1] + c] = True
    return out


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
