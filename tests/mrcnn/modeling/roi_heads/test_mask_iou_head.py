"""Mask Scoring R-CNN: the MaskIoU target and loss, the head, and mask scores at inference."""

from __future__ import annotations

import pytest
import torch

from mrcnn.config import Config
from mrcnn.modeling.losses import mask_iou_loss
from mrcnn.modeling.roi_heads.mask_iou_head import MaskIoUHead
from mrcnn.modeling.targets import mask_iou_targets
from tests.mrcnn.scenes import make_batch, tiny_model


def test_mask_iou_target_is_the_iou_of_the_binarised_prediction():
    logits = torch.full((3, 4, 4), -3.0)
    logits[0, 0:2, 0:3] = 2.0  # predicted: 2 x 3 block (6 px)
    logits[0, 3, 3] = 0.0  # probability exactly 0.5: not in the binarised mask (logit > 0)
    target = torch.zeros(3, 4, 4)
    target[0, 0:3, 1:4] = 1  # 3 x 3 block; overlap rows 0-1 x cols 1-2 = 4 px
    logits[1, 1:3, 1:3] = 1.0  # identical to its target
    target[1, 1:3, 1:3] = 1
    # mask 2: both empty
    iou = mask_iou_targets(logits, target)
    torch.testing.assert_close(iou, torch.tensor([4 / 11, 1.0, 0.0]))


def test_mask_iou_loss_is_l2_on_the_gt_class_of_positives():
    pred = torch.tensor([[0.0, 0.3, 0.9], [0.1, 0.2, 0.4]], requires_grad=True)
    labels = torch.tensor([1, 2])
    targets = torch.tensor([0.5, 1.0])
    loss = mask_iou_loss(pred, labels, targets, torch.tensor([True, False]))
    assert loss.item() == pytest.approx((0.3 - 0.5) ** 2)
    both = mask_iou_loss(pred, labels, targets, torch.tensor([True, True]))
    assert both.item() == pytest.approx(((0.3 - 0.5) ** 2 + (0.4 - 1.0) ** 2) / 2)
    empty = mask_iou_loss(pred, labels, targets, torch.tensor([False, False]))
    assert empty.item() == 0
    empty.backward()
    assert pred.grad is not None


def test_mask_iou_head_shapes_and_detached_mask():
    head = MaskIoUHead(in_channels=8, pool_size=14, channels=16, fc_dim=32, num_classes=5)
    feats = torch.randn(3, 8, 14, 14, requires_grad=True)
    probs = torch.rand(3, 28, 28, requires_grad=True)
    iou = head(feats, probs)
    assert iou.shape == (3, 5)
    iou.sum().backward()
    assert feats.grad is not None and probs.grad is None  # judges masks, does not change them


def test_mask_scoring_needs_the_mask_head():
    with pytest.raises(ValueError, match="mask_scoring"):
        Config.from_dict({"mask_scoring": True, "roi_heads": {"masks": False}})


def test_mask_scoring_model_trains_and_scores_masks():
    batch, _ = make_batch()
    model = tiny_model(mask_scoring=True)
    model.train()
    losses = model(batch)
    assert "loss_mask_iou" in losses and torch.isfinite(losses["loss_mask_iou"])
    # Initial predicted IoUs are ~0 and the targets in [0, 1]: the L2 loss is their mean square.
    assert 0 <= losses["loss_mask_iou"].item() <= 1
    model.total_loss(losses).backward()
    grads = [p.grad for p in model.roi_heads.mask_iou_head.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()
    head = model.roi_heads.mask_iou_head
    with torch.no_grad():  # a head that predicts IoU 0.5 (1.7 clamped to 1) for class 1 (2)
        head.iou.weight.zero_()
        head.iou.bias.copy_(torch.tensor([0.0, 0.5, 1.7]))
    raw = model.predict(batch)
    expected = raw.scores * torch.where(raw.labels == 1, 0.5, 1.0) * raw.valid
    assert raw.valid.any()
    torch.testing.assert_close(raw.mask_scores, expected)


def test_mask_scoring_under_bf16_autocast():
    batch, _ = make_batch()
    model = tiny_model(mask_scoring=True)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    assert losses["loss_mask_iou"].dtype == torch.float32
    assert torch.isfinite(losses["loss_mask_iou"])
    model.total_loss(losses).backward()
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = model.predict(batch)
    assert raw.mask_scores.dtype == torch.float32 and torch.isfinite(raw.mask_scores).all()


@pytest.mark.slow
def test_compiled_mask_iou_head_gives_the_same_loss():
    batch, _ = make_batch()
    model = tiny_model(mask_scoring=True)
    model.train()
    torch.manual_seed(0)
    ref = model(batch)
    model.roi_heads.bucket_rois = True
    model.roi_heads.mask_iou_head.compile(dynamic=False)
    torch.manual_seed(0)
    out = model(batch)
    torch.testing.assert_close(out["loss_mask_iou"], ref["loss_mask_iou"], atol=1e-4, rtol=1e-4)
    model.total_loss(out).backward()
