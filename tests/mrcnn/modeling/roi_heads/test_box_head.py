"""BoxHead: the "2fc" head against the same layers written out, its class-major deltas, and
the fresh predictors' initialisation."""

from __future__ import annotations

import torch

from mrcnn.modeling.roi_heads.box_head import BoxHead


def test_forward_is_two_relu_fcs_then_the_predictors():
    torch.manual_seed(0)
    head = BoxHead(in_channels=4, pool_size=3, hidden=16, num_classes=5)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(6, 4, 3, 3)
    keep = x.clone()
    scores, deltas = head(x)
    assert scores.shape == (6, 5) and deltas.shape == (6, 20)
    h = torch.relu(x.flatten(1) @ head.fc6.weight.T + head.fc6.bias)
    h = torch.relu(h @ head.fc7.weight.T + head.fc7.bias)
    torch.testing.assert_close(scores, h @ head.cls_score.weight.T + head.cls_score.bias)
    torch.testing.assert_close(deltas, h @ head.bbox_pred.weight.T + head.bbox_pred.bias)
    assert torch.equal(x, keep)  # the in-place ReLUs leave the pooled input alone


def test_deltas_are_class_major():
    """deltas[:, 4k:4k+4] are class k's (dx, dy, dw, dh): a bias on class 2's dw shows there."""
    head = BoxHead(in_channels=2, pool_size=1, hidden=4, num_classes=3)
    with torch.no_grad():
        head.bbox_pred.weight.zero_()
        head.bbox_pred.bias.zero_()
        head.bbox_pred.bias[2 * 4 + 2] = 1.0
    _, deltas = head(torch.randn(2, 2, 1, 1))
    assert deltas.reshape(2, 3, 4)[:, 2, 2].tolist() == [1.0, 1.0]
    assert deltas.abs().sum() == 2.0


def test_fresh_predictors_are_small_with_zero_bias():
    torch.manual_seed(0)
    head = BoxHead(in_channels=8, pool_size=7, hidden=256, num_classes=91)
    assert not head.cls_score.bias.any() and not head.bbox_pred.bias.any()
    assert abs(head.cls_score.weight.std().item() - 0.01) < 0.001
    assert abs(head.bbox_pred.weight.std().item() - 0.001) < 0.0001
    fc6 = head.fc6.weight.clone()
    with torch.no_grad():
        head.cls_score.weight.fill_(1.0)
        head.bbox_pred.bias.fill_(1.0)
    head.reset_predictors()
    assert head.cls_score.weight.abs().max() < 0.1 and not head.bbox_pred.bias.any()
    assert torch.equal(head.fc6.weight, fc6)  # the FC layers keep their weights
