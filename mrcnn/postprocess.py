"""Fixed-shape `RawDetections` -> `Detections` in each image's own pixels (torch; the exported
model's numpy twin is `mrcnn.host_postprocess`)."""

from __future__ import annotations

import numpy as np
import torch

from mrcnn.grid_masks import GridMasks
from mrcnn.mask_paste import paste_masks_in_image
from mrcnn.structures import Batch, Detections, RawDetections


def to_detections(
    raw: RawDetections, batch: Batch, mask_thresh: float, *, grid_masks: bool = False
) -> list[Detections]:
    """Fixed-shape detections -> one `Detections` per image in original-image pixels.

    raw: `RawDetections` [B, D, ...] of `batch` (its windows, scales, original_sizes are
    used) -> B `Detections`: boxes float32 [N, 4] xyxy clipped to the image, scores
    float32 [N], labels int64 [N], masks bool [N, H, W]; N = valid slots of the image.
    grid_masks: keep each mask as its M x M probabilities and box (`mrcnn.grid_masks.
    GridMasks`: no pixels pasted; what COCO evaluation encodes, straight to RLE) instead of
    [N, H, W].

    A loop over images: each has its own output size, so this is where shapes stop being
    fixed. Box mapping is vectorised; full masks are pasted on the model's device, crops of
    similar size in one batched matmul (`mrcnn.mask_paste`).
    """
    offsets = batch.windows[:, [1, 0, 1, 0]].to(raw.boxes)  # (x1, y1, x1, y1)
    scales = batch.scales.to(raw.boxes)
    boxes = (raw.boxes - offsets[:, None]) / scales[:, None, None]
    keypoints = None
    if raw.keypoints is not None:  # (x, y) to original pixels as the boxes; scores stay
        keypoints = raw.keypoints.clone()
        keypoints[..., :2] = (keypoints[..., :2] - offsets[:, None, None, :2]) / scales[
            :, None, None, None
        ]
    out = []
    for i in range(len(batch)):
        h, w = (int(v) for v in batch.original_sizes[i])
        keep = raw.valid[i]
        b = boxes[i][keep]
        b = torch.stack(
            [
                b[:, 0].clamp(0, w),
                b[:, 1].clamp(0, h),
                b[:, 2].clamp(0, w),
                b[:, 3].clamp(0, h),
            ],
            dim=1,
        )
        masks: np.ndarray | GridMasks
        if raw.mask_probs is None:  # a model without a mask head
            masks = np.zeros((len(b), 0, 0), dtype=bool)
        elif grid_masks:
            probs = raw.mask_probs[i][keep].float().cpu().numpy()
            masks = GridMasks(probs, b.float().cpu().numpy(), (h, w), mask_thresh)
        else:
            probs = raw.mask_probs[i][keep]
            masks = paste_masks_in_image(probs, b, (h, w), mask_thresh).cpu().numpy()
        det = Detections(
            boxes=b.float().cpu().numpy(),
            scores=raw.scores[i][keep].float().cpu().numpy(),
            labels=raw.labels[i][keep].cpu().numpy(),
            masks=masks,
        )
        if keypoints is not None:
            det.keypoints = keypoints[i][keep].float().cpu().numpy()
        if raw.mask_scores is not None:
            det.mask_scores = raw.mask_scores[i][keep].float().cpu().numpy()
        out.append(det)
    return out
