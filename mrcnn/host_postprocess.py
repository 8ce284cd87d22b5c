"""Fixed-shape detections -> `Detections` in original-image pixels, in numpy (no torch).

The host side of an exported model (`mrcnn.onnx_model.OnnxModel`): boxes leave the padded frame,
invalid slots are dropped, and each M x M mask probability map is pasted into its image. The
arithmetic is `MaskRCNN.postprocess` / `mrcnn.mask_paste.paste_masks_in_image` step for step in
float32 (torchvision's paste geometry: a one-pixel border, the box grown by (M + 2) / M and
truncated to whole pixels, bilinear resize with align_corners=False, done as a separable
matmul into the box's crop), so eager and exported models give the same masks up to matmul
rounding at the threshold.

Shape shorthand: B images, D detection slots, M mask side, N kept detections, H x W an image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mrcnn.detections import Detections


def to_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    valid: np.ndarray,
    mask_probs: np.ndarray,
    windows: np.ndarray,
    scales: np.ndarray,
    original_sizes: Sequence[tuple[int, int]],
    mask_thresh: float,
) -> list[Detections]:
    """boxes [B, D, 4] (padded frame), scores [B, D], labels [B, D], valid bool [B, D],
    mask_probs [B, D, M, M], windows [B, 4] (y1, x1, y2, x2), scales [B], original (h, w) per
    image -> one `Detections` per image (boxes clipped to the image, masks bool [N, H, W])."""
    boxes = np.asarray(boxes, dtype=np.float32)
    offsets = np.asarray(windows, dtype=np.float32)[:, [1, 0, 1, 0]]  # (x1, y1, x1, y1)
    boxes = (boxes - offsets[:, None]) / np.asarray(scales, dtype=np.float32)[:, None, None]
    out = []
    for i, (h, w) in enumerate(original_sizes):  # each image has its own output size
        keep = np.asarray(valid[i], dtype=bool)
        b = boxes[i][keep]
        b = np.stack(
            [
                np.clip(b[:, 0], 0, w),
                np.clip(b[:, 1], 0, h),
                np.clip(b[:, 2], 0, w),
                np.clip(b[:, 3], 0, h),
            ],
            axis=1,
        ).astype(np.float32)
        masks = paste_masks_in_image(mask_probs[i][keep], b, (int(h), int(w)), mask_thresh)
        out.append(
            Detections(
                boxes=b,
                scores=np.asarray(scores[i][keep], dtype=np.float32),
                labels=np.asarray(labels[i][keep], dtype=np.int64),
                masks=masks,
            )
        )
    return out


def paste_masks_in_image(
    masks: np.ndarray, boxes: np.ndarray, image_shape: tuple[int, int], threshold: float = 0.5
) -> np.ndarray:
    """Paste mask probabilities [N, M, M] at boxes [N, 4] (image pixels) -> bool [N, H, W].

    Each mask is resampled into its box's crop only (all it can cover; the rest stays False),
    as `mrcnn.mask_paste.paste_masks_in_boxes` does: two small matmuls per detection.
    """
    m = masks.shape[-1]
    h, w = int(image_shape[0]), int(image_shape[1])
    padded = np.pad(np.asarray(masks, dtype=np.float32), ((0, 0), (1, 1), (1, 1)))
    mp = m + 2
    scale = np.float32(mp / m)
    boxes = np.asarray(boxes, dtype=np.float32)
    half_w = (boxes[:, 2] - boxes[:, 0]) * np.float32(0.5) * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * np.float32(0.5) * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * np.float32(0.5)
    cy = (boxes[:, 3] + boxes[:, 1]) * np.float32(0.5)
    x0, x1 = (cx - half_w).astype(np.int64), (cx + half_w).astype(np.int64)  # truncation
    y0, y1 = (cy - half_h).astype(np.int64), (cy + half_h).astype(np.int64)
    out = np.zeros((padded.shape[0], h, w), dtype=bool)
    for i, mask in enumerate(padded):
        top, wy = _crop_weights(int(y0[i]), int(y1[i]), h, mp)  # [rows, M+2]
        left, wx = _crop_weights(int(x0[i]), int(x1[i]), w, mp)  # [cols, M+2]
        crop = (wy @ mask @ wx.T) >= np.float32(threshold)
        out[i, top : top + len(wy), left : left + len(wx)] = crop
    return out


def _crop_weights(start: int, end: int, size: int, src: int) -> tuple[int, np.ndarray]:
    """Along one axis: a length-`src` signal resized to `end - start + 1` pixels (at least 1)
    placed at `start`, seen through the image's pixels 0..size-1 -> the first covered pixel
    and float32 bilinear weights [L, src] of the L covered pixels (L = 0 off the image);
    the coordinates of `mrcnn.mask_paste._crop_coords`, each row two weights summing to 1."""
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
    weights[rows, i1] += frac  # i1 == i0 at the last index: add, as the eager scatter_add does
    return first, weights
