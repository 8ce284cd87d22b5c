"""Mask paste: each detection's M x M mask probabilities resized into its box of the image and
thresholded (Mask R-CNN sec. 3, "Inference"), in numpy: the one paste of eager and exported
models.

Geometry (torchvision's, so masks match its models): the mask gets a one-pixel zero border
(M + 2 samples), the box grows by (M + 2) / M about its centre and is truncated to whole pixels
(`grown_boxes`), and the bordered mask is resized to that many pixels with bilinear
interpolation, align_corners=False. `mrcnn.inference.grid_masks` computes COCO RLEs with the
same geometry without pasting.

Bilinear resizing is separable: a mask resized into its crop is `Wy @ mask @ Wx^T` with `Wy`
[rows, M + 2] and `Wx` [cols, M + 2] holding each output pixel's two interpolation weights. Each
mask is resampled into its box's crop only (all it can cover; the rest stays False): with 100
detections on a 640 x 480 image the crops are a few hundred thousand pixels where full masks
would be 30 M.

Shape shorthand: N masks, M mask side, H x W the image.
"""

from __future__ import annotations

import numpy as np


def grown_boxes(boxes: np.ndarray, m: int) -> tuple[np.ndarray, ...]:
    """boxes float [N, 4] xyxy (image pixels), mask side M -> the pasted extent of each mask:
    x0, y0, x1, y1 int64 [N] (inclusive ends), the box grown by (M + 2) / M about its centre
    (room for the one-pixel border) and truncated to whole pixels, as torchvision's
    `expand_boxes` + `.to(int64)`, in float32."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scale = np.float32((m + 2) / m)
    half_w = (b[:, 2] - b[:, 0]) * np.float32(0.5) * scale
    half_h = (b[:, 3] - b[:, 1]) * np.float32(0.5) * scale
    cx = (b[:, 2] + b[:, 0]) * np.float32(0.5)
    cy = (b[:, 3] + b[:, 1]) * np.float32(0.5)
    trunc = np.trunc  # towards zero, as a float -> int64 cast
    return tuple(
        trunc(v).astype(np.int64) for v in (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    )


def paste_masks_in_image(
    masks: np.ndarray, boxes: np.ndarray, image_shape: tuple[int, int], threshold: float = 0.5
) -> np.ndarray:
    """Paste mask probabilities float [N, M, M] at boxes float [N, 4] (image pixels) of an
    H x W image -> bool [N, H, W], True where the resized probability is >= `threshold`."""
    masks = np.asarray(masks, dtype=np.float32)
    h, w = int(image_shape[0]), int(image_shape[1])
    out = np.zeros((masks.shape[0], h, w), dtype=bool)
    if masks.shape[0] == 0:
        return out
    m = masks.shape[-1]
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))  # [N, M + 2, M + 2]
    x0, y0, x1, y1 = grown_boxes(boxes, m)
    for i, mask in enumerate(padded):
        top, wy = crop_weights(int(y0[i]), int(y1[i]), h, m + 2)  # [rows, M + 2]
        left, wx = crop_weights(int(x0[i]), int(x1[i]), w, m + 2)  # [cols, M + 2]
        out[i, top : top + len(wy), left : left + len(wx)] = (wy @ mask @ wx.T) >= threshold
    return out


def crop_weights(start: int, end: int, size: int, src: int) -> tuple[int, np.ndarray]:
    """Along one axis: a length-`src` signal resized to `end - start + 1` pixels (at least 1)
    placed at `start`, seen through the image's pixels 0..size-1 -> the first covered pixel
    and float32 bilinear weights [L, src] of the L covered pixels (L = 0 off the image), each
    row two weights summing to 1 (align_corners=False, edges clamped)."""
    length = max(end - start + 1, 1)
    first = min(max(start, 0), size)
    dst = np.arange(first, max(first, min(start + length, size))) - start
    ratio = np.float32(src) / np.float32(length)
    coords = (dst.astype(np.float32) + np.float32(0.5)) * ratio - np.float32(0.5)
    c = np.clip(coords, 0, src - 1)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, src - 1)
    frac = (c - i0).astype(np.float32)
    weights = np.zeros((len(dst), src), dtype=np.float32)
    rows = np.arange(len(dst))
    weights[rows, i0] = 1 - frac
    weights[rows, i1] += frac  # i1 == i0 at the last index: both weights land there
    return first, weights
