"""Box head (Mask R-CNN sec. 3 / FPN sec. 4.2: the "2fc" head): pooled RoI features -> class
scores and class-specific box deltas.

Shape shorthand: N RoIs, C feature channels, P pooled side (7), K classes incl. background.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BoxHead(nn.Module):
    """Two 1024-d FC layers ("2fc") then class scores and class-specific box deltas.

    forward: pooled [N, C, P, P] -> class logits [N, K], deltas [N, K * 4] (class-major).

    Args:
        in_channels: C, the FPN's channels.
        pool_size: P, the RoIAlign output side (7).
        hidden: width of both FC layers (1024 in the paper).
        num_classes: K, including background.
    """

    def __init__(self, in_channels: int, pool_size: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels * pool_size * pool_size, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.cls_score = nn.Linear(hidden, num_classes)
        self.bbox_pred = nn.Linear(hidden, num_classes * 4)
        self.reset_predictors()

    @torch.no_grad()
    def reset_predictors(self) -> None:
        """Fresh class scores and box deltas (construction, or fine-tuning onto new classes)."""
        # Small initial predictions (as Detectron): training from scratch starts stable.
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.fc7(self.fc6(x.flatten(1)).relu_()).relu_()  # in place: one buffer less
        return self.cls_score(x), self.bbox_pred(x)
