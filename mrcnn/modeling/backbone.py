"""ResNet / ResNeXt body + Feature Pyramid Network (P2..P6).

The body reuses torchvision's residual blocks and keeps torchvision's module names (`conv1`,
`bn1`, `layer1`..`layer4`), so ImageNet and COCO checkpoints map onto it one to one. The FPN is
`torchvision.ops.FeaturePyramidNetwork` with P6 as a stride-2 subsample of P5 (FPN paper, sec. 4.1;
`LastLevelMaxPool` with a 1x1 window is exactly that).

Shapes: input [B, 3, S, S] -> P2..P6 [B, C, S/4, S/4] .. [B, C, S/64, S/64] (C = fpn_channels).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

# arch -> (block, blocks per stage, groups, width per group)
_ARCHS: dict[str, tuple[type[nn.Module], tuple[int, ...], int, int]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 1, 64),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 1, 64),
    "resnet50": (Bottleneck, (3, 4, 6, 3), 1, 64),
    "resnet101": (Bottleneck, (3, 4, 23, 3), 1, 64),
    "resnext50_32x4d": (Bottleneck, (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": (Bottleneck, (3, 4, 23, 3), 32, 8),
}
# torchvision's names for the stages, top first, as `trainable_stages` counts them.
_STAGES_TOP_DOWN = ("layer4", "layer3", "layer2", "layer1", "conv1")


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """frozen_bn (fine-tuning), bn (from scratch, large batches) or gn (from scratch, any batch)."""
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "gn":
        return lambda c: nn.GroupNorm(_gn_groups(c), c)
    raise ValueError(f"unknown norm '{kind}' (expected frozen_bn, bn or gn)")


def _gn_groups(channels: int) -> int:
    """32 groups (Wu & He, 2018) when possible, else the largest divisor <= 32."""
    return next(g for g in range(min(32, channels), 0, -1) if channels % g == 0)


class ResNetBody(nn.Module):
    """torchvision's ResNet without avgpool/fc, optionally narrower (`width_multiplier`).

    forward: [B, 3, S, S] -> (C2, C3, C4, C5) at strides 4, 8, 16, 32, with `out_channels`
    channels each (64, 128, 256, 512 times the block expansion, times `width_multiplier`).

    Args:
        arch: a key of the architecture table (resnet18 .. resnext101_32x8d).
        norm: a constructor channels -> norm module (see `norm_layer`).
        width_multiplier: scales every stage's width (rounded to multiples of 8, at least 8).
    """

    def __init__(
        self, arch: str, norm: Callable[[int], nn.Module], width_multiplier: float = 1.0
    ) -> None:
        super().__init__()
        if arch not in _ARCHS:
            raise ValueError(f"unknown backbone '{arch}' (known: {', '.join(_ARCHS)})")
        block, layers, groups, width_per_group = _ARCHS[arch]
        self._norm = norm
        self._groups = groups
        self._base_width = width_per_group
        stem = _scaled(64, width_multiplier)
        self.inplanes = stem
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = [_scaled(w, width_multiplier) for w in (64, 128, 256, 512)]
        self.layer1 = self._make_layer(block, widths[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.out_channels = [w * block.expansion for w in widths]
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                self._norm(planes * block.expansion),
            )
        kw = dict(groups=self._groups, base_width=self._base_width, norm_layer=self._norm)
        layers = [block(self.inplanes, planes, stride, downsample, **kw)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **kw) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if _folds_frozen_bn(self):
            return self._forward_folded(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5

    def _forward_folded(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`forward` with every frozen BN folded into the convolution before it (inference)."""
        x = self.maxpool(conv_frozen_bn(self.conv1, self.bn1, x).relu_())
        outs = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = _block_folded(block, x)
            outs.append(x)
        c2, c3, c4, c5 = outs
        return c2, c3, c4, c5


def _folds_frozen_bn(body: ResNetBody) -> bool:
    """Eager inference with FrozenBatchNorm2d: each BN is folded into its convolution, one
    pass over the activations fewer per layer (~10% of eager inference on CPU, R50-FPN at
    512 px: docs/benchmarks.md) and the same numbers up to float rounding. Training keeps the
    layers as they are (no change to its gradients); traced, exported and compiled graphs too
    (ONNX Runtime, OpenVINO and inductor fold BN themselves)."""
    return (
        isinstance(body.bn1, FrozenBatchNorm2d)
        and not torch.is_grad_enabled()
        and not (torch.jit.is_tracing() or torch.compiler.is_compiling())
    )


def conv_frozen_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d, x: Tensor) -> Tensor:
    """bn(conv(x)) as one convolution (PyTorch's `fuse_conv_bn_weights`: BN's scale multiplies
    the conv's output channels' weights, keeping their memory format; its shift is the bias)."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _block_folded(block: nn.Module, x: Tensor) -> Tensor:
    """torchvision's Bottleneck / BasicBlock forward with its frozen BNs folded."""
    convs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    if isinstance(block, Bottleneck):
        convs.append((block.conv3, block.bn3))
    out = x
    for i, (conv, bn) in enumerate(convs):
        out = conv_frozen_bn(conv, bn, out)
        if i < len(convs) - 1:
            out = out.relu_()
    identity = x
    if block.downsample is not None:
        conv, bn = block.downsample
        identity = conv_frozen_bn(conv, bn, x)
    return out.add_(identity).relu_()


def _scaled(width: int, multiplier: float) -> int:
    return max(8, int(round(width * multiplier / 8)) * 8) if multiplier != 1.0 else width


class FPNBackbone(nn.Module):
    """ResNet / ResNeXt body + FPN: the model's backbone.

    forward(images float [B, 3, S, S], normalised) -> [P2, P3, P4, P5, P6], each
    float [B, C, S/s, S/s] at strides s = 4, 8, 16, 32, 64 (sides round up for odd inputs),
    C = `fpn_channels` (`out_channels`). P6 is P5 subsampled by 2 (FPN sec. 4.1).

    Args:
        arch: body, one of resnet18/34/50/101, resnext50_32x4d, resnext101_32x8d (torchvision's
            blocks and module names, so their checkpoints load with `load_backbone_state_dict`).
        norm: the body's normalisation: "frozen_bn" (FrozenBatchNorm2d: fixed statistics and
            affine, for fine-tuning pretrained weights), "bn" (BatchNorm2d, from scratch with
            large batches) or "gn" (GroupNorm with 32 groups in the body and the FPN convs, from
            scratch at any batch size; Wu & He, 2018).
        trainable_stages: how many body stages train, counted from the top of
            (layer4, layer3, layer2, layer1, conv1 + bn1): 0 freezes the body, 5 trains all of
            it, 3 is torchvision's fine-tuning default. The FPN always trains.
        fpn_channels: C, the channels of every pyramid level (256 in the paper).
        width_multiplier: scales the body's widths (rounded to multiples of 8, at least 8) for
            small CPU-trainable models; 1.0 is the published architecture.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        norm: str = "frozen_bn",
        trainable_stages: int = 3,
        fpn_channels: int = 256,
        width_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        self.body = ResNetBody(arch, norm_layer(norm), width_multiplier)
        # torchvision's FPN takes norm_layer for its convs; GN there too when training from
        # scratch with GN (Wu & He, 2018), plain convs otherwise (as torchvision's model).
        self.fpn = FeaturePyramidNetwork(
            self.body.out_channels,
            fpn_channels,
            extra_blocks=LastLevelMaxPool(),
            norm_layer=(lambda c: nn.GroupNorm(_gn_groups(c), c)) if norm == "gn" else None,
        )
        self.out_channels = fpn_channels
        freeze_stages(self.body, trainable_stages)

    def forward(self, images: Tensor) -> list[Tensor]:
        c2, c3, c4, c5 = self.body(images)
        feats = self.fpn(OrderedDict([("0", c2), ("1", c3), ("2", c4), ("3", c5)]))
        return list(feats.values())  # P2, P3, P4, P5, P6 ("pool")


def freeze_stages(body: ResNetBody, trainable_stages: int) -> None:
    """Train only the top `trainable_stages` of (layer4, layer3, layer2, layer1, conv1+bn1)."""
    train = set(_STAGES_TOP_DOWN[:trainable_stages])
    if "conv1" in train:
        train.add("bn1")
    for name, p in body.named_parameters():
        if name.split(".")[0] not in train:
            p.requires_grad_(False)


@torch.no_grad()
def load_backbone_state_dict(body: ResNetBody, state_dict: dict[str, Tensor]) -> None:
    """Load an ImageNet ResNet/ResNeXt checkpoint (torchvision key names) into the body.

    The classifier (`fc.*`) is dropped and BN's `num_batches_tracked` ignored; any other missing
    or unexpected key raises.
    """
    sd = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    own = {k for k in body.state_dict() if not k.endswith("num_batches_tracked")}
    missing, extra = sorted(own - set(sd)), sorted(set(sd) - own)
    if missing or extra:
        raise ValueError(
            f"backbone checkpoint does not fit the body: missing {missing[:5]}, "
            f"unexpected {extra[:5]} (is `backbone.arch` right?)"
        )
    body.load_state_dict(sd, strict=False)
