"""Class-specific mask head (Mask R-CNN sec. 3, fig. 4 right): pooled RoI features -> one M x M
mask per class (M = 28).

Shape shorthand: N RoIs, C feature channels, P pooled side (14), K classes incl. background,
M = 2P mask side.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MaskHead(nn.Module):
    """n x (3x3 conv + ReLU), 2x2 deconv (stride 2) + ReLU, 1x1 conv to one mask per class.

    forward: pooled [N, C, 14, 14] -> mask logits [N, K, 28, 28]. Predicting K masks and
    training only the gt class's one decouples masks from classes (sec. 3, "Mask Representation").

    Args:
        in_channels: C, the FPN's channels.
        channels: width of the convs and the deconv (256 in the paper).
        num_convs: n, the 3x3 convs before the deconv (4 in the paper, fig. 4 right).
        num_classes: K, including background: one mask per class.
    """

    def __init__(self, in_channels: int, channels: int, num_convs: int, num_classes: int) -> None:
        super().__init__()
        convs, c = [], in_channels
        for _ in range(num_convs):
            convs.append(nn.Conv2d(c, channels, kernel_size=3, padding=1))
            c = channels
        self.convs = nn.ModuleList(convs)
        self.deconv = nn.ConvTranspose2d(c, channels, kernel_size=2, stride=2)
        self.logits = nn.Conv2d(channels, num_classes, kernel_size=1)
        for layer in [*self.convs, self.deconv]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        self.reset_predictors()

    @torch.no_grad()
    def reset_predictors(self) -> None:
        """Fresh per-class mask logits (construction, or fine-tuning onto new classes)."""
        # Near-zero initial logits (as Detectron): the mask loss starts at ln 2, not at ~4.
        nn.init.normal_(self.logits.weight, std=0.001)
        nn.init.zeros_(self.logits.bias)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x).relu_()
        return self.logits(self.deconv(x).relu_())
