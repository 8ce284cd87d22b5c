import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from mrcnn.modeling.backbone import FPNBackbone, ResNetBody, _scaled, norm_layer


def _tiny(norm: str = "frozen_bn", trainable_stages: int = 3) -> FPNBackbone:
    torch.manual_seed(0)
    return FPNBackbone(
        arch="resnet18",
        norm=norm,
        trainable_stages=trainable_stages,
        fpn_channels=16,
        width_multiplier=0.25,
    )


@pytest.mark.parametrize("side", [64, 96])
def test_pyramid_shapes_and_strides(side):
    feats = _tiny()(torch.randn(2, 3, side, side))
    assert len(feats) == 5  # P2..P6
    for p, stride in zip(feats, (4, 8, 16, 32, 64), strict=True):
        assert p.shape == (2, 16, -(-side // stride), -(-side // stride))
    # P6 is P5 subsampled by 2 (1x1 max pool, stride 2)
    torch.testing.assert_close(feats[4], feats[3][:, :, ::2, ::2])


def test_width_multiplier_scales_body_channels():
    assert ResNetBody("resnet18", nn.BatchNorm2d, 0.25).out_channels == [16, 32, 64, 128]
    assert [_scaled(w, 1.0) for w in (64, 100)] == [64, 100]  # 1.0: the published widths
    assert _scaled(64, 0.05) == 8  # never below 8
    assert ResNetBody("resnet50", nn.BatchNorm2d, 0.125).out_channels == [32, 64, 128, 256]


def test_frozen_bn_is_frozen():
    bb = _tiny("frozen_bn")
    norms = [m for m in bb.body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 1 + 2 * 8 + 3  # stem, two per block (8 blocks), three downsamples
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    before = {k: v.clone() for k, v in bb.body.state_dict().items()}
    bb.train()
    x = torch.randn(2, 3, 64, 64)
    out_train = bb(x)
    bb.eval()
    out_eval = bb(x)
    for a, b in zip(out_train, out_eval, strict=True):  # statistics do not depend on the mode
        torch.testing.assert_close(a, b)
    after = bb.body.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no running stats moved
    # frozen BN holds buffers, no parameters: nothing of it can be optimised
    assert not any("bn" in n for n, _ in bb.body.named_parameters())


def test_bn_updates_running_stats_in_training():
    bb = _tiny("bn", trainable_stages=5)
    bn = bb.body.bn1
    assert isinstance(bn, nn.BatchNorm2d)
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    bb.train()
    bb(torch.randn(2, 3, 64, 64) + 3)
    assert bn.running_mean.abs().sum() > 0
    assert bn.weight.requires_grad


def test_gn_in_body_and_fpn():
    bb = _tiny("gn")
    body_gn = [m for m in bb.body.modules() if isinstance(m, nn.GroupNorm)]
    fpn_gn = [m for m in bb.fpn.modules() if isinstance(m, nn.GroupNorm)]
    assert len(body_gn) == 20 and len(fpn_gn) == 8  # FPN: inner + layer conv of 4 levels
    assert bb.body.bn1.num_groups == 16  # 16 channels: 16 groups (<= 32, divides 16)
    assert all(m.num_groups == 16 for m in fpn_gn)  # 16 FPN channels
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in bb.modules())


def test_norm_layer_choices():
    assert norm_layer("frozen_bn") is FrozenBatchNorm2d
    assert norm_layer("bn") is nn.BatchNorm2d
    assert norm_layer("gn")(48).num_groups == 24  # largest divisor of 48 up to 32
    assert norm_layer("gn")(256).num_groups == 32
    with pytest.raises(ValueError, match="unknown norm 'ln'"):
        norm_layer("ln")
    with pytest.raises(ValueError, match="unknown backbone 'resnet7'"):
        ResNetBody("resnet7", nn.BatchNorm2d)


@pytest.mark.parametrize(
    ("stages", "trainable"),
    [
        (0, set()),
        (1, {"layer4"}),
        (3, {"layer4", "layer3", "layer2"}),
        (5, {"layer4", "layer3", "layer2", "layer1", "conv1", "bn1"}),
    ],
)
def test_trainable_stages_freeze_from_the_bottom(stages, trainable):
    bb = _tiny("bn", trainable_stages=stages)
    got = {n.split(".")[0] for n, p in bb.body.named_parameters() if p.requires_grad}
    assert got == trainable
    assert all(p.requires_grad for p in bb.fpn.parameters())  # the FPN always trains


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])  # BasicBlock, Bottleneck
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_folds_frozen_bn_with_the_same_features(arch, channels_last, monkeypatch):
    """Without autograd, each frozen BN is folded into its convolution: the same pyramid up to
    float rounding (BN statistics far from identity, so a wrong fold fails), and no BN runs."""
    torch.manual_seed(0)
    net = FPNBackbone(arch=arch, fpn_channels=16, width_multiplier=0.25).eval()
    with torch.no_grad():
        for bn in net.modules():
            if isinstance(bn, FrozenBatchNorm2d):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.2, 3.0)
    x = torch.randn(2, 3, 64, 64)
    if channels_last:
        net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ref = [p.detach() for p in net(x)]  # autograd on: BN layers as they are
    calls = []
    real = FrozenBatchNorm2d.forward
    spy = lambda self, t: calls.append(1) or real(self, t)  # noqa: E731
    monkeypatch.setattr(FrozenBatchNorm2d, "forward", spy)
    with torch.no_grad():
        folded = net(x)
    assert not calls  # folded: no BN layer ran
    for a, b in zip(folded, ref, strict=True):
        assert b.abs().max() > 0.1
        scale = float(b.abs().max())  # rounding grows with the features through 50 layers
        torch.testing.assert_close(a, b, atol=1e-4 * scale, rtol=1e-3)
    net(x)  # with autograd the layers run as they are (training's gradients untouched)
    assert calls
