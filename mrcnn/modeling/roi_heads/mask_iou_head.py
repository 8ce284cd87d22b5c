"""MaskIoU head (Mask Scoring R-CNN, Huang et al., CVPR 2019, sec. 3.2).

Mask R-CNN scores a mask with its box's class score, which says nothing about the mask's
quality. The MaskIoU head regresses the IoU between the predicted mask and the ground truth from
the RoI's features and the predicted mask; at inference a mask's score is its class score times
the predicted IoU (sec. 3.3), and that score ranks the segm results (boxes keep the class score).

Training target: the IoU of the binarised predicted mask with the RoI's mask target
(`mrcnn.modeling.targets.mask_iou_targets`); loss: L2 on positive RoIs, for the gt class only
(`mrcnn.modeling.losses.mask_iou_loss`).

Shape shorthand: N RoIs, C feature channels, P pooled side (14), M = 2P mask side (28),
K classes incl. background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskIoUHead(nn.Module):
    """4 x (3x3 conv + ReLU) (the last stride 2), 3 FC layers, one IoU per class.

    forward(features [N, C, P, P], mask_probs [N, M, M]) -> predicted IoU [N, K]. The mask (the
    label's mask after sigmoid) is max-pooled to P x P and concatenated to the features as one
    more channel (paper fig. 3). The mask comes in detached: the head learns to judge masks, not
    to change them.

    Args:
        in_channels: feature channels C of the pooled RoIs (the FPN width).
        pool_size: P, the side of the pooled features (the mask head's, 14).
        channels: width of the convs (paper: 256).
        fc_dim: width of the first two FC layers (paper: 1024).
        num_classes: K, one IoU per class (background's is never used).
    """

    def __init__(
        self, in_channels: int, pool_size: int, channels: int, fc_dim: int, num_classes: int
    ) -> None:
        super().__init__()
        convs, c = [], in_channels + 1
        for i in range(4):
            convs.append(nn.Conv2d(c, channels, 3, stride=2 if i == 3 else 1, padding=1))
            c = channels
        self.convs = nn.ModuleList(convs)
        side = (pool_size + 1) // 2  # after the stride-2 conv: 14 -> 7
        self.fc1 = nn.Linear(channels * side * side, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.iou = nn.Linear(fc_dim, num_classes)
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.iou.weight, std=0.01)
        nn.init.zeros_(self.iou.bias)

    def forward(self, features: Tensor, mask_probs: Tensor) -> Tensor:
        mask = F.max_pool2d(mask_probs.detach()[:, None].to(features.dtype), kernel_size=2)
        x = torch.cat([features, mask], dim=1)  # [N, C + 1, P, P]
        for conv in self.convs:
            x = conv(x).relu_()
        x = self.fc2(self.fc1(x.flatten(1)).relu_()).relu_()
        return self.iou(x)
