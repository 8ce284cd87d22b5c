"""Fixed-shape detections -> `Detections` in each image's own pixels, in numpy: the one
post-processing of the eager model (`MaskRCNN.postprocess`) and the exported one
(`mrcnn.export.OnnxModel`).

Boxes (and keypoints) leave the padded frame (minus the window's offset, divided by the resize
scale), are clipped to the image, invalid slots are dropped, and each M x M mask is pasted into
its box (`mrcnn.inference.mask_paste`) or kept as its grid (`GridMasks`, for COCO evaluation).
This is where shapes stop being fixed: each image has its own size.

Shape shorthand: B images, D detection slots, M mask side, Kp keypoint types, N the kept
detections of an image, H x W that image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mrcnn.inference.detections import Detections
from mrcnn.inference.grid_masks import GridMasks
from mrcnn.inference.mask_paste import paste_masks_in_image


def to_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    valid: np.ndarray,
    mask_probs: np.ndarray | None,
    windows: np.ndarray,
    scales: np.ndarray,
    original_sizes: Sequence[Sequence[int]] | np.ndarray,
    mask_thresh: float,
    *,
    keypoints: np.ndarray | None = None,
    mask_scores: np.ndarray | None = None,
    grid_masks: bool = False,
) -> list[Detections]:
    """One `Detections` per image, in its original pixels.

    Args:
        boxes: float [B, D, 4] xyxy in the padded frame.
        scores: float [B, D]; labels: int [B, D]; valid: bool [B, D] (which slots are real).
        mask_probs: float [B, D, M, M] the label's mask probabilities, or None (a model without
            a mask head: masks come out [N, 0, 0]).
        windows: float [B, 4] (y1, x1, y2, x2) of each real image in the padded frame.
        scales: float [B] the resize factor original -> padded frame.
        original_sizes: (h, w) of each image.
        mask_thresh: a pasted pixel is in the mask where its probability is >= this.
        keypoints: float [B, D, Kp, 3] (x, y, score) in the padded frame, or None.
        mask_scores: float [B, D] (Mask Scoring R-CNN), or None.
        grid_masks: keep each mask as its M x M grid and box (`GridMasks`: what COCO evaluation
            encodes straight to RLE) instead of pasting [N, H, W] pixels.

    -> B `Detections`: boxes float32 [N, 4] clipped to the image, scores float32 [N], labels
    int64 [N], masks bool [N, H, W] (or `GridMasks`), keypoints float32 [N, Kp, 3] and
    mask_scores float32 [N] when given.
    """
    offsets = np.asarray(windows, dtype=np.float32)[:, [1, 0, 1, 0]]  # (x1, y1, x1, y1)
    scales = np.asarray(scales, dtype=np.float32)
    boxes = (np.asarray(boxes, dtype=np.float32) - offsets[:, None]) / scales[:, None, None]
    if keypoints is not None:  # (x, y) to original pixels as the boxes; scores stay
        keypoints = np.array(keypoints, dtype=np.float32)
        keypoints[..., :2] = (keypoints[..., :2] - offsets[:, None, None, :2]) / scales[
            :, None, None, None
        ]
    out = []
    for i, (h, w) in enumerate(original_sizes):  # each image has its own output size
        h, w = int(h), int(w)
        keep = np.asarray(valid[i], dtype=bool)
        b = np.clip(boxes[i][keep], 0, np.array([w, h, w, h], dtype=np.float32))
        masks: np.ndarray | GridMasks
        if mask_probs is None:
            masks = np.zeros((len(b), 0, 0), dtype=bool)
        elif grid_masks:
            masks = GridMasks(mask_probs[i][keep], b, (h, w), mask_thresh)
        else:
            masks = paste_masks_in_image(mask_probs[i][keep], b, (h, w), mask_thresh)
        det = Detections(
            boxes=b,
            scores=np.asarray(scores[i][keep], dtype=np.float32),
            labels=np.asarray(labels[i][keep], dtype=np.int64),
            masks=masks,
        )
        if keypoints is not None:
            det.keypoints = keypoints[i][keep]
        if mask_scores is not None:
            det.mask_scores = np.asarray(mask_scores[i][keep], dtype=np.float32)
        out.append(det)
    return out
