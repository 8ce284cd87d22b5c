"""Keypoint targets against torchvision's `keypoints_to_heatmap` (the same one-hot cell and
validity, batched over images and gathered by the matched gt slot). Hand-built edge cases
(edges, unlabelled, outside) are in roi_heads/test_keypoint_head.py."""

from __future__ import annotations

import torch
from torchvision.models.detection.roi_heads import keypoints_to_heatmap

from mrcnn.modeling.keypoint_targets import keypoint_targets

M = 56


def test_matches_torchvision_per_image_and_slot():
    g = torch.Generator().manual_seed(0)
    b, p, gslots, k = 2, 7, 3, 5
    xy = torch.rand(b, p, 2, generator=g) * 100
    wh = torch.rand(b, p, 2, generator=g) * 80 + 5
    rois = torch.cat([xy, xy + wh], -1)  # [B, P, 4]
    gt = torch.rand(b, gslots, k, 3, generator=g) * 150  # many outside their RoI
    gt[..., 2] = torch.randint(0, 3, (b, gslots, k), generator=g).float()
    gt_index = torch.randint(0, gslots, (b, p), generator=g)
    # a few keypoints exactly on their RoI's right / bottom edge: the last cell
    gt[0, gt_index[0, 0], 0, :2] = rois[0, 0, 2:]
    gt[0, gt_index[0, 0], 0, 2] = 2
    targets, valid = keypoint_targets(rois, gt_index, gt, M)
    assert targets.shape == valid.shape == (b, p, k)
    for i in range(b):
        matched = gt[i, gt_index[i]]  # [P, K, 3]
        ref_targets, ref_valid = keypoints_to_heatmap(matched, rois[i], M)
        assert torch.equal(valid[i], ref_valid.bool())
        assert torch.equal(targets[i][valid[i]], ref_targets[ref_valid.bool()])
        assert not targets[i][~valid[i]].any()  # 0 where invalid
    assert valid.any() and (~valid).any()  # both kinds were compared
    assert targets[0, 0, 0] == M * M - 1
