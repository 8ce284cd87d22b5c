"""Class-specific mask head (Mask R-CNN sec. 3, fig. 4 right): pooled RoI features -> one M x M
mask per class (M = 28).

Shape shorthand: N RoIs, C feature channels, P pooled side (14), K classes incl. background,
M = 2P mask side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_stack(in_channels: int, channels: int, num_convs: int) -> tuple[nn.ModuleList, int]:
    """`num_convs` 3x3 convs (padding 1) from `in_channels` to `channels` -> (the convs, their
    output channels); the mask and keypoint heads' trunk, each conv followed by a ReLU."""
    convs, c = [], in_channels
    for _ in range(num_convs):
        convs.append(nn.Conv2d(c, channels, kernel_size=3, padding=1))
        c = channels
    return nn.ModuleList(convs), c


@torch.no_grad()
def init_relu_layers(layers: list[nn.Module]) -> None:
    """He (fan-out) init for layers followed by a ReLU, zero biases (as Detectron's heads)."""
    for layer in layers:
        nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(layer.bias)


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
        self.convs, c = conv_stack(in_channels, channels, num_convs)
        self.deconv = nn.ConvTranspose2d(c, channels, kernel_size=2, stride=2)
        self.logits = nn.Conv2d(channels, num_classes, kernel_size=1)
        init_relu_layers([*self.convs, self.deconv])
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

    def label_probs(self, x: Tensor, labels: Tensor) -> Tensor:
        """Inference: only the given class's mask. pooled [N, C, P, P], labels int64 [N] ->
        sigmoid probabilities float32 [N, 2P, 2P]; `forward(x)[arange(N), labels].sigmoid()`
        up to float rounding, in fewer FLOPs and the operators CPUs run fastest.

        Each output pixel (2i + a, 2j + b) of the 2x2 stride-2 deconv takes exactly one kernel
        tap (a, b), so the deconv is a 1x1 conv to C_out x 4 sub-pixel channels; the 1x1 logits
        conv then needs only the label's weights (a batched matmul over C_out, not all K
        classes), and only the [N, 4, P, P] logits are interleaved into [N, 2P, 2P]. Eager and
        exported models both run this.
        """
        for conv in self.convs:
            x = conv(x).relu_()
        deconv = self.deconv  # weight [C_in, C_out, 2, 2]
        c_in, c_out, kh, kw = deconv.weight.shape
        class_weight = self.logits.weight[:, :, 0, 0][labels]  # [N, C_out]
        bias = self.logits.bias[labels][:, None, None]
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # NHWC: sub-pixel channels tap-major, (a * 2 + b) * C_out + o, so that each pixel's
            # [4, C_out] block is a contiguous matrix and the logits a matmul on the conv's
            # output as it lies in memory (the NCHW order below would copy all of it first).
            weight = deconv.weight.permute(2, 3, 1, 0).reshape(kh * kw * c_out, c_in, 1, 1)
            x = F.conv2d(x, weight, deconv.bias.repeat(kh * kw)).relu_()
            n, _, p, _ = x.shape
            pixels = x.permute(0, 2, 3, 1).reshape(n, p * p * kh * kw, c_out)
            logits = torch.bmm(pixels, class_weight[:, :, None])  # [N, P * P * 4, 1]
            logits = logits.reshape(n, p, p, kh, kw).permute(0, 1, 3, 2, 4)
            return (logits.reshape(n, kh * p, kw * p) + bias).float().sigmoid()
        weight = deconv.weight.permute(1, 2, 3, 0).reshape(c_out * kh * kw, c_in, 1, 1)
        x = F.conv2d(x, weight, deconv.bias.repeat_interleave(kh * kw)).relu_()
        n, _, p, _ = x.shape  # x [N, C_out * 4, P, P], channel o * 4 + a * 2 + b
        logits = torch.bmm(class_weight[:, None, :], x.reshape(n, c_out, kh * kw * p * p))
        logits = logits.reshape(n, kh, kw, p, p).permute(0, 3, 1, 4, 2).reshape(n, kh * p, kw * p)
        return (logits + bias).float().sigmoid()
