"""MaskHead: K masks per RoI at 2x the pooled side; `label_probs` (the inference formulation,
eager and exported) is the label's channel of `forward`, sigmoided."""

import pytest
import torch

from mrcnn.modeling.roi_heads.mask_head import MaskHead


def _head() -> MaskHead:
    torch.manual_seed(0)
    head = MaskHead(in_channels=8, channels=6, num_convs=2, num_classes=5).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)  # biases too, and logits far from the init's near-zero ones
    return head


def test_forward_shapes_and_fresh_predictors_start_near_zero():
    head = MaskHead(in_channels=8, channels=6, num_convs=2, num_classes=5)
    out = head(torch.randn(3, 8, 14, 14))
    assert out.shape == (3, 5, 28, 28)
    assert out.abs().max() < 0.1  # std 0.001 logits, zero bias (Detectron's init)


@pytest.mark.parametrize("channels_last", [False, True])
def test_label_probs_is_the_label_channel_of_forward(channels_last):
    """Deconv as a 1x1 conv to sub-pixel channels, only the label's logits: the same numbers,
    for every RoI's own label, in both memory layouts (each has its own channel order); a wrong
    sub-pixel interleave or label pick fails."""
    head = _head()
    with torch.no_grad():
        pooled = torch.randn(7, 8, 14, 14)
        if channels_last:
            head.to(memory_format=torch.channels_last)
            pooled = pooled.contiguous(memory_format=torch.channels_last)
        labels = torch.tensor([0, 1, 2, 3, 4, 4, 1])
        ours = head.label_probs(pooled, labels)
        ref = head(pooled)[torch.arange(7), labels].sigmoid()
        other = head(pooled)[torch.arange(7), (labels + 1) % 5].sigmoid()
    assert ours.shape == (7, 28, 28) and ours.dtype == torch.float32
    assert ref.std() > 0.1  # masks with structure, not a constant
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert (ours - other).abs().max() > 0.1  # the label matters


def test_reset_predictors_touches_only_the_logits():
    head = _head()
    convs = [c.weight.clone() for c in head.convs]
    head.reset_predictors()
    assert head.logits.weight.abs().max() < 0.01 and not head.logits.bias.any()
    assert all(torch.equal(a, c.weight) for a, c in zip(convs, head.convs, strict=True))
