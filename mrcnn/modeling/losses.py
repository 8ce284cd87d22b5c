"""Losses as pure functions of tensors: L = Lcls + Lbox + Lmask (+ the RPN's two terms, + Lkeypoint
and LmaskIoU for models with those heads).

Each function takes predictions and targets in fixed-shape slots with a validity mask and returns
an unweighted scalar; `total_loss` applies the weights, in this one place. Normalisations follow
Faster/Mask R-CNN as torchvision implements them (smooth-L1 with beta = 1/9 summed over positives
and divided by the number of sampled RoIs; BCE averaged over mask pixels). An empty selection
returns a zero that still depends on every prediction, which keeps every parameter in the graph
(DDP needs that) without a data-dependent branch (`torch.compile` and CUDA graphs need that).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SMOOTH_L1_BETA = 1.0 / 9


def rpn_losses(
    logits: Tensor,
    deltas: Tensor,
    is_positive: Tensor,
    valid: Tensor,
    box_targets: Tensor,
) -> dict[str, Tensor]:
    """Objectness BCE over sampled anchors and smooth-L1 over positive ones.

    logits [B, S], deltas [B, S, 4] gathered at the sampled anchors; is_positive/valid [B, S];
    box_targets [B, S, 4].
    """
    logits, deltas = logits.float(), deltas.float()
    num = valid.sum().clamp(min=1)
    bce = F.binary_cross_entropy_with_logits(logits, is_positive.float(), reduction="none")
    objectness = (bce * valid).sum() / num
    l1 = F.smooth_l1_loss(deltas, box_targets, beta=SMOOTH_L1_BETA, reduction="none").sum(-1)
    box = (l1 * (is_positive & valid)).sum() / num
    return {"loss_rpn_objectness": objectness, "loss_rpn_box": box}


def box_losses(
    class_logits: Tensor,
    box_deltas: Tensor,
    labels: Tensor,
    box_targets: Tensor,
    valid: Tensor,
) -> dict[str, Tensor]:
    """Cross-entropy over sampled RoIs; smooth-L1 on the true class's deltas of positives.

    class_logits [N, K], box_deltas [N, K * 4], labels [N] (0 = background), box_targets [N, 4],
    valid [N].
    """
    class_logits, box_deltas = class_logits.float(), box_deltas.float()
    num = valid.sum().clamp(min=1)
    ce = F.cross_entropy(class_logits, labels, reduction="none")
    classifier = (ce * valid).sum() / num
    n = labels.shape[0]
    per_class = box_deltas.reshape(n, -1, 4)
    pred = per_class[torch.arange(n, device=labels.device), labels]  # [N, 4]
    l1 = F.smooth_l1_loss(pred, box_targets, beta=SMOOTH_L1_BETA, reduction="none").sum(-1)
    box = (l1 * (valid & (labels > 0))).sum() / num
    return {"loss_classifier": classifier, "loss_box": box}


def mask_loss(mask_logits: Tensor, labels: Tensor, mask_targets: Tensor, valid: Tensor) -> Tensor:
    """Per-pixel BCE on the gt class's mask only (Mask R-CNN sec. 3, "Lmask").

    mask_logits [P, K, M, M], labels [P], mask_targets [P, M, M] in {0, 1}, valid [P].
    """
    p = labels.shape[0]
    logits = mask_logits[torch.arange(p, device=labels.device), labels].float()  # [P, M, M]
    bce = F.binary_cross_entropy_with_logits(logits, mask_targets.float(), reduction="none")
    # No positives: 0 * (the logits' loss), still in the graph, and no host sync to check.
    return (bce.mean(dim=(1, 2)) * valid).sum() / valid.sum().clamp(min=1)


def keypoint_loss(keypoint_logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Softmax cross-entropy over the m^2 heatmap cells of each labelled keypoint (Mask R-CNN
    sec. 5: "a one-hot m x m binary mask where only a single pixel is labeled as foreground").

    keypoint_logits [N, K, m, m], targets int64 [N, K] flat cell index, valid bool [N, K]
    (`mrcnn.modeling.keypoint_targets`). Averaged over the valid keypoints of the whole batch, as
    torchvision's `keypointrcnn_loss`.
    """
    n, k = targets.shape
    logits = keypoint_logits.float().reshape(n * k, -1)
    ce = F.cross_entropy(logits, targets.reshape(-1), reduction="none")
    valid = valid.reshape(-1)
    return (ce * valid).sum() / valid.sum().clamp(min=1)


def mask_iou_loss(iou_pred: Tensor, labels: Tensor, iou_targets: Tensor, valid: Tensor) -> Tensor:
    """L2 between the gt class's predicted mask IoU and the measured one, over positive RoIs
    (Mask Scoring R-CNN sec. 3.2).

    iou_pred [N, K], labels [N], iou_targets [N] in [0, 1], valid [N].
    """
    n = labels.shape[0]
    pred = iou_pred[torch.arange(n, device=labels.device), labels].float()
    return (((pred - iou_targets.float()) ** 2) * valid).sum() / valid.sum().clamp(min=1)


# Loss name -> the LossConfig field that weights it.
LOSS_WEIGHT_KEYS = {
    "loss_rpn_objectness": "rpn_objectness",
    "loss_rpn_box": "rpn_box",
    "loss_classifier": "classifier",
    "loss_box": "box",
    "loss_mask": "mask",
    "loss_keypoint": "keypoint",
    "loss_mask_iou": "mask_iou",
}


def total_loss(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """The one place loss weights are applied: sum of weight * term."""
    return sum(weights[LOSS_WEIGHT_KEYS[name]] * value for name, value in losses.items())
