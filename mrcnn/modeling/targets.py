"""Training targets: RPN targets, detection targets and mask targets from mini-masks.

Everything here runs under `torch.no_grad()` and is batched over images: ground truth is padded
to G slots ([B, G] + `gt_valid`), outputs are fixed [B, S] slots + a validity mask.

Shape shorthand: B images, G ground-truth slots, A anchors, R proposals per image,
S sampled RoIs per image, P mask slots per image (the first P of S), m mini-mask side,
M mask target side (28).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import roi_align

from mrcnn.layers import box_coder
from mrcnn.layers.matcher import Sampler, batched_iou, match


@dataclass
class RPNTargets:
    idx: Tensor  # int64 [B, S] sampled anchor indices
    is_positive: Tensor  # bool [B, S]
    valid: Tensor  # bool [B, S]
    box_targets: Tensor  # float [B, S, 4] deltas (meaningful where is_positive)


@torch.no_grad()
def rpn_targets(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_valid: Tensor,
    sampler: Sampler,
) -> RPNTargets:
    """Label anchors [A, 4] against gt [B, G, 4] and sample a balanced minibatch per image.

    IoU >= 0.7 positive, < 0.3 negative, each gt's best anchors positive (Faster R-CNN sec. 3.1.2).
    """
    b = gt_boxes.shape[0]
    iou = batched_iou(gt_boxes.float(), anchors[None].expand(b, -1, -1))  # [B, G, A]
    matched = match(
        iou, gt_valid, sampler.fg_iou_thresh, sampler.bg_iou_thresh, allow_low_quality=True
    )
    idx, is_pos, valid = sampler.sample(matched, torch.ones_like(matched, dtype=torch.bool))
    gt_idx = matched.gather(1, idx).clamp(min=0)  # [B, S]
    matched_boxes = gt_boxes.float().gather(1, gt_idx[..., None].expand(-1, -1, 4))
    targets = box_coder.encode(matched_boxes, anchors[idx], box_coder.RPN_BOX_WEIGHTS)
    targets = torch.where(is_pos[..., None], targets, torch.zeros_like(targets))
    return RPNTargets(idx=idx, is_positive=is_pos, valid=valid, box_targets=targets)


@dataclass
class DetectionTargets:
    rois: Tensor  # float [B, S, 4] sampled RoIs (positives first)
    labels: Tensor  # int64 [B, S] class of the matched gt, 0 = background
    box_targets: Tensor  # float [B, S, 4] deltas to the matched gt (zeros for negatives)
    valid: Tensor  # bool [B, S]
    mask_targets: Tensor  # float [B, P, M, M] in {0, 1}, for rois[:, :P]
    mask_valid: Tensor  # bool [B, P] positive RoIs among the first P slots
    gt_index: Tensor | None = None  # int64 [B, S] the gt slot each RoI is matched to (0 if none)


@torch.no_grad()
def detection_targets(
    proposals: Tensor,
    proposal_valid: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_valid: Tensor,
    gt_mini_masks: Tensor,
    sampler: Sampler,
    *,
    box_weights: tuple[float, ...],
    mask_size: int,
) -> DetectionTargets:
    """Sample RoIs from proposals (+ the gt boxes themselves) and build their targets.

    proposals [B, R, 4] + proposal_valid [B, R]; gt_boxes [B, G, 4], gt_labels [B, G],
    gt_valid [B, G], gt_mini_masks [B, G, m, m]. IoU >= 0.5 is foreground, below is background
    (Fast R-CNN sec. 2.3); 512 RoIs per image, 25% foreground (Mask R-CNN sec. 3.1).
    """
    gt_boxes = gt_boxes.float()
    candidates = torch.cat([proposals.float(), gt_boxes], dim=1)  # [B, R + G, 4]
    cand_valid = torch.cat([proposal_valid, gt_valid], dim=1)
    iou = batched_iou(gt_boxes, candidates)  # [B, G, R + G]
    matched = match(
        iou, gt_valid, sampler.fg_iou_thresh, sampler.bg_iou_thresh, allow_low_quality=False
    )
    idx, is_pos, valid = sampler.sample(matched, cand_valid)
    rois = candidates.gather(1, idx[..., None].expand(-1, -1, 4))
    gt_idx = matched.gather(1, idx).clamp(min=0)  # [B, S]
    labels = torch.where(is_pos, gt_labels.gather(1, gt_idx), torch.zeros_like(gt_idx))
    matched_boxes = gt_boxes.gather(1, gt_idx[..., None].expand(-1, -1, 4))
    deltas = box_coder.encode(matched_boxes, rois, box_weights)
    deltas = torch.where(is_pos[..., None], deltas, torch.zeros_like(deltas))

    p = mask_slots(rois.shape[1], sampler.positive_fraction)
    mask_valid = is_pos[:, :p]
    masks = mask_targets_from_mini_masks(
        rois[:, :p], gt_idx[:, :p], gt_boxes, gt_mini_masks, mask_size
    )
    return DetectionTargets(
        rois=rois,
        labels=labels,
        box_targets=deltas,
        valid=valid,
        mask_targets=masks,
        mask_valid=mask_valid,
        gt_index=gt_idx,
    )


def mask_slots(num_sampled: int, positive_fraction: float) -> int:
    """How many leading RoI slots can hold positives (and therefore get mask targets)."""
    return max(1, int(num_sampled * positive_fraction))


@torch.no_grad()
def mask_targets_from_mini_masks(
    rois: Tensor, gt_idx: Tensor, gt_boxes: Tensor, gt_mini_masks: Tensor, mask_size: int
) -> Tensor:
    """Crop each RoI out of its gt's mini-mask: [B, P, 4] RoIs -> {0, 1} [B, P, M, M].

    A mini-mask covers its gt box exactly (see `mrcnn.data.minimask`), so the RoI is mapped
    into the mini-mask's frame, u = (x - gx1) * m / gw, and RoIAligned there. The mini-masks get a
    one-pixel zero border first so RoI parts outside the gt box read background instead of the
    clamped edge. Thresholding at 0.5 gives binary targets, as matterport rounds them.
    """
    b, p, _ = rois.shape
    g, m = gt_mini_masks.shape[1], gt_mini_masks.shape[-1]
    if b * p == 0:
        return rois.new_zeros((b, p, mask_size, mask_size))
    gt = gt_boxes.gather(1, gt_idx[..., None].expand(-1, -1, 4))  # [B, P, 4]
    gw = (gt[..., 2] - gt[..., 0]).clamp(min=1e-6)
    gh = (gt[..., 3] - gt[..., 1]).clamp(min=1e-6)
    u1 = (rois[..., 0] - gt[..., 0]) * (m / gw) + 1  # +1: the zero border
    u2 = (rois[..., 2] - gt[..., 0]) * (m / gw) + 1
    v1 = (rois[..., 1] - gt[..., 1]) * (m / gh) + 1
    v2 = (rois[..., 3] - gt[..., 1]) * (m / gh) + 1
    source = (torch.arange(b, device=rois.device)[:, None] * g + gt_idx).float()  # [B, P]
    boxes = torch.stack([source, u1, v1, u2, v2], dim=-1).reshape(-1, 5)
    padded = torch.nn.functional.pad(gt_mini_masks.reshape(b * g, 1, m, m).float(), (1, 1, 1, 1))
    pooled = roi_align(padded, boxes, mask_size, 1.0, sampling_ratio=2, aligned=True)
    return (pooled >= 0.5).to(rois.dtype).reshape(b, p, mask_size, mask_size)


@torch.no_grad()
def mask_iou_targets(mask_logits: Tensor, mask_targets: Tensor) -> Tensor:
    """IoU of each binarised predicted mask with its mask target (Mask Scoring R-CNN's target).

    mask_logits [N, M, M] (the gt class's mask), mask_targets [N, M, M] in {0, 1} -> IoU [N],
    with the prediction binarised at probability 0.5 (logit 0); 0 where both are empty.
    """
    pred = mask_logits > 0
    gt = mask_targets > 0.5
    inter = (pred & gt).flatten(1).sum(1)
    union = (pred | gt).flatten(1).sum(1)
    return inter.float() / union.clamp(min=1).float()
