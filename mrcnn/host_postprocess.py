"""Fixed-shape detections -> `Detections` in original-image pixels, in numpy (no torch).

The host side of an exported model (`mrcnn.onnx_model.OnnxModel`): boxes leave the padded frame,
invalid slots are dropped, and each M x M mask probability map is pasted into its image. The
arithmetic is `MaskRCNN.postprocess` / `mrcnn.mask_paste.paste_masks_in_image` step for step in
float32 (torchvision's paste geometry: a one-pixel border, the box grown by (M + 2) / M and
truncated to whole pixels, bilinear resize with align_corners=False, done as a separable
matmul), so eager and exported models give the same masks up to matmul rounding at the
threshold.

Shape shorthand: B images, D detection slots, M mask side, N kept detections, H x W an image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mrcnn.detections import Detections

# Output pixels pasted per chunk: bounds the float32 [chunk, H, W] intermediate (~256 MB).
_CHUNK_PIXELS = 64 * 1024 * 1024


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
    """Paste mask probabilities [N, M, M] at boxes [N, 4] (image pixels) -> bool [N, H, W]."""
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
    xs, x_valid = _resize_coords(x0, x1, w, mp)
    ys, y_valid = _resize_coords(y0, y1, h, mp)
    n = padded.shape[0]
    out = np.zeros((n, h, w), dtype=bool)
    chunk = max(1, _CHUNK_PIXELS // max(1, h * w))
    for s in range(0, n, chunk):  # chunks bound memory; each is one batched matmul
        e = min(n, s + chunk)
        wy = _bilinear_matrix(ys[s:e], y_valid[s:e], mp)  # [c, H, M+2]
        wx = _bilinear_matrix(xs[s:e], x_valid[s:e], mp)  # [c, W, M+2]
        out[s:e] = (wy @ padded[s:e] @ wx.transpose(0, 2, 1)) >= np.float32(threshold)
    return out


def _resize_coords(
    start: np.ndarray, end: np.ndarray, size: int, src: int
) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates of image pixels 0..size-1 when a length-`src` signal is resized to
    `end - start + 1` pixels placed at `start`: float32 [N, size] + validity [N, size]."""
    length = np.maximum(end - start + 1, 1)
    dst = np.arange(size)[None] - start[:, None]
    valid = (dst >= 0) & (dst < length[:, None])
    ratio = np.float32(src) / length.astype(np.float32)
    coords = (dst.astype(np.float32) + np.float32(0.5)) * ratio[:, None] - np.float32(0.5)
    return np.maximum(coords, np.float32(0)), valid


def _bilinear_matrix(coords: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray:
    """float32 [N, L] source indices -> [N, L, size] interpolation weights (zero rows where not
    valid); as `mrcnn.mask_paste.bilinear_matrix`."""
    c = np.clip(coords, 0, size - 1)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, size - 1)
    frac = (c - i0).astype(np.float32)
    w = np.zeros((*coords.shape, size), dtype=np.float32)
    np.put_along_axis(w, i0[..., None], (1 - frac)[..., None], axis=-1)
    # i1 == i0 at the last index: add, as the eager scatter_add does
    w1 = np.take_along_axis(w, i1[..., None], axis=-1) + frac[..., None]
    np.put_along_axis(w, i1[..., None], w1, axis=-1)
    return w * valid[..., None]
