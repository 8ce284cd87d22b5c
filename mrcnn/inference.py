"""Detection layer: class-specific boxes, per-class NMS, top-k; masks pasted into the image.

Shape shorthand: B images, R proposals per image, K classes incl. background, D detections per
image, M mask side (28), H x W an original image.

Like torchvision's `RoIHeads.postprocess_detections`, every (proposal, foreground class) pair
is a candidate with its own decoded box; candidates above the score threshold go through one
`batched_nms` grouped by (image, class), and each image keeps its D best, in fixed [B, D] slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mrcnn import box_coder
from mrcnn.mask_ops import paste_separable
from mrcnn.nms import batched_nms_top_k, gather_slots

MIN_BOX_SIZE = 1e-2  # drop degenerate boxes (torchvision's remove_small_boxes at inference)


@torch.no_grad()
def detection_layer(
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: Tensor,
    proposal_valid: Tensor,
    windows: Tensor,
    *,
    box_weights: tuple[float, ...],
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """class_logits [B, R, K], box_deltas [B, R, K * 4], proposals [B, R, 4] + valid [B, R],
    windows [B, 4] -> boxes [B, D, 4] (padded frame), scores [B, D], labels int64 [B, D],
    valid bool [B, D]; each row sorted by score.
    """
    b, r, k = class_logits.shape
    scores = F.softmax(class_logits.float(), dim=-1)[..., 1:]  # [B, R, K-1], background dropped
    deltas = box_deltas.float().reshape(b, r, k, 4)[:, :, 1:]
    boxes = box_coder.decode(deltas, proposals.float()[:, :, None], box_weights)  # [B,R,K-1,4]
    boxes = box_coder.clip_to_windows(boxes, windows)
    ok = (scores > score_thresh) & proposal_valid[..., None]
    ok &= box_coder.box_sizes_at_least(boxes, MIN_BOX_SIZE)
    labels = torch.arange(1, k, device=scores.device).repeat(r)  # [R * (K-1)], class-minor
    index, valid = batched_nms_top_k(
        boxes.reshape(b, -1, 4),
        scores.reshape(b, -1),
        labels,
        k,
        ok.reshape(b, -1),
        nms_thresh,
        detections_per_img,
    )
    out_boxes = gather_slots(boxes.reshape(b, -1, 4), index, valid)
    out_scores = gather_slots(scores.reshape(b, -1), index, valid)
    out_labels = torch.where(valid, labels[index], torch.zeros_like(index))
    return out_boxes, out_scores, out_labels, valid


def select_class_masks(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """mask_logits [N, K, M, M], labels [N] -> probabilities [N, M, M] of each label's mask."""
    n = labels.shape[0]
    return mask_logits[torch.arange(n, device=labels.device), labels].float().sigmoid()


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
