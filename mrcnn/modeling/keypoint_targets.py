"""Keypoint targets: each visible keypoint as a one-hot m x m mask over its RoI (Mask R-CNN sec. 5).

A target is the index of the one heatmap cell the keypoint falls in (the one-hot mask, stored as its
flat index y * m + x) and a validity flag; `mrcnn.modeling.losses.keypoint_loss` takes the softmax
cross-entropy over the m^2 cells at that index. Runs under `torch.no_grad()`, batched over images.

Shape shorthand: B images, P RoI slots per image, G ground-truth slots, K keypoint types,
m heatmap side (56).
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def keypoint_targets(
    rois: Tensor, gt_index: Tensor, gt_keypoints: Tensor, heatmap_size: int
) -> tuple[Tensor, Tensor]:
    """The heatmap cell of each RoI's matched keypoints.

    rois:         float [B, P, 4] xyxy, the RoIs the head sees
    gt_index:     int64 [B, P] the gt slot each RoI is matched to
    gt_keypoints: float [B, G, K, 3] (x, y, visibility) in the RoIs' frame; visibility 0 =
                  not labelled (COCO's v = 0), > 0 = labelled (v = 1 occluded, v = 2 visible)
    -> targets int64 [B, P, K] flat cell index y * m + x (0 where invalid),
       valid bool [B, P, K]: labelled and inside the RoI.

    The cell is floor((x - x1) * m / w), as torchvision's `keypoints_to_heatmap` (a keypoint
    exactly on the right / bottom edge goes to the last cell). Keypoints outside the RoI and
    unlabelled ones get no target: they are ignored by the loss, not pushed towards a cell.
    """
    b, p, _ = rois.shape
    k = gt_keypoints.shape[2]
    kp = gt_keypoints.float().gather(1, gt_index[..., None, None].expand(b, p, k, 3))  # [B,P,K,3]
    rois = rois.float()
    x1, y1, x2, y2 = (rois[..., i : i + 1] for i in range(4))  # [B, P, 1] each
    x, y = kp[..., 0], kp[..., 1]
    m = heatmap_size
    cx = ((x - x1) * (m / (x2 - x1))).floor().long()
    cy = ((y - y1) * (m / (y2 - y1))).floor().long()
    cx = torch.where(x == x2, torch.full_like(cx, m - 1), cx)
    cy = torch.where(y == y2, torch.full_like(cy, m - 1), cy)
    inside = (cx >= 0) & (cy >= 0) & (cx < m) & (cy < m)
    valid = inside & (kp[..., 2] > 0)
    targets = torch.where(valid, cy * m + cx, torch.zeros_like(cx))
    return targets, valid
