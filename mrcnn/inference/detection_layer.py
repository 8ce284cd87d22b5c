"""Detection layer: class-specific boxes, per-class NMS, top-k, in fixed [B, D] slots.

Shape shorthand: B images, R proposals per image, K classes incl. background, D detections per
image, M mask side (28).

Like torchvision's `RoIHeads.postprocess_detections`, every (proposal, foreground class) pair
is a candidate with its own decoded box; candidates above the score threshold go through one
`batched_nms` grouped by (image, class), and each image keeps its D best, in fixed [B, D] slots.
The kept boxes' masks are pasted into the image by `mrcnn.layers.resample`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mrcnn.layers import box_coder
from mrcnn.layers.nms import batched_nms_top_k, gather_slots

MIN_BOX_SIZE = 1e-2  # drop degenerate boxes (torchvision's remove_small_boxes at inference)


@torch.no_grad()
def detection_candidates(
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: Tensor,
    proposal_valid: Tensor,
    windows: Tensor,
    *,
    box_weights: tuple[float, ...],
    score_thresh: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The detection layer before its NMS: every (proposal, foreground class) pair.

    class_logits [B, R, K], box_deltas [B, R, K * 4], proposals [B, R, 4] + valid [B, R],
    windows [B, 4] -> boxes [B, R * (K-1), 4] (decoded with the class's deltas, clipped to the
    window), scores [B, R * (K-1)] (softmax), labels int64 [R * (K-1)] (class-minor: 1..K-1
    for proposal 0, then for proposal 1, ...), ok bool [B, R * (K-1)]: above `score_thresh`,
    from a valid proposal, not degenerate.
    """
    b, r, k = class_logits.shape
    scores = F.softmax(class_logits.float(), dim=-1)[..., 1:]  # [B, R, K-1], background dropped
    deltas = box_deltas.float().reshape(b, r, k, 4)[:, :, 1:]
    boxes = box_coder.decode(deltas, proposals.float()[:, :, None], box_weights)  # [B,R,K-1,4]
    boxes = box_coder.clip_to_windows(boxes, windows)
    ok = (scores > score_thresh) & proposal_valid[..., None]
    ok &= box_coder.box_sizes_at_least(boxes, MIN_BOX_SIZE)
    labels = torch.arange(1, k, device=scores.device).repeat(r)  # [R * (K-1)], class-minor
    return boxes.reshape(b, -1, 4), scores.reshape(b, -1), labels, ok.reshape(b, -1)


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
    valid bool [B, D]; each row sorted by score. `detection_candidates`, then one NMS per
    (image, class) and the D best.
    """
    k = class_logits.shape[-1]
    boxes, scores, labels, ok = detection_candidates(
        class_logits,
        box_deltas,
        proposals,
        proposal_valid,
        windows,
        box_weights=box_weights,
        score_thresh=score_thresh,
    )
    index, valid = batched_nms_top_k(boxes, scores, labels, k, ok, nms_thresh, detections_per_img)
    out_boxes = gather_slots(boxes, index, valid)
    out_scores = gather_slots(scores, index, valid)
    out_labels = torch.where(valid, labels[index], torch.zeros_like(index))
    return out_boxes, out_scores, out_labels, valid


def select_class_masks(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """mask_logits [N, K, M, M], labels [N] -> probabilities [N, M, M] of each label's mask."""
    n = labels.shape[0]
    return mask_logits[torch.arange(n, device=labels.device), labels].float().sigmoid()
