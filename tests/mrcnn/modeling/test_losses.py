import torch
from torchvision.models.detection.roi_heads import fastrcnn_loss, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork

from mrcnn.modeling.losses import box_losses, mask_loss, rpn_losses, total_loss


def test_box_losses_equal_torchvision_fastrcnn_loss():
    g = torch.Generator().manual_seed(0)
    n, k = 40, 5
    logits = torch.randn(n, k, generator=g)
    deltas = torch.randn(n, k * 4, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    targets = torch.randn(n, 4, generator=g)
    ref_cls, ref_box = fastrcnn_loss(
        logits, deltas, [labels[:25], labels[25:]], [targets[:25], targets[25:]]
    )
    ours = box_losses(logits, deltas, labels, targets, torch.ones(n, dtype=torch.bool))
    torch.testing.assert_close(ours["loss_classifier"], ref_cls)
    torch.testing.assert_close(ours["loss_box"], ref_box)


def test_padding_slots_do_not_change_box_losses():
    g = torch.Generator().manual_seed(1)
    logits, deltas = torch.randn(10, 3, generator=g), torch.randn(10, 12, generator=g)
    labels, targets = torch.randint(0, 3, (10,), generator=g), torch.randn(10, 4, generator=g)
    valid = torch.ones(10, dtype=torch.bool)
    base = box_losses(logits, deltas, labels, targets, valid)
    padded = box_losses(
        torch.cat([logits, torch.randn(5, 3)]),
        torch.cat([deltas, torch.randn(5, 12)]),
        torch.cat([labels, torch.ones(5, dtype=torch.long)]),
        torch.cat([targets, torch.randn(5, 4)]),
        torch.cat([valid, torch.zeros(5, dtype=torch.bool)]),
    )
    for key in base:
        torch.testing.assert_close(base[key], padded[key])


def test_mask_loss_equals_torchvision_maskrcnn_loss():
    g = torch.Generator().manual_seed(0)
    n, k, m = 6, 4, 28
    logits = torch.randn(n, k, m, m, generator=g)
    gt_masks = torch.rand(3, 64, 64, generator=g) > 0.5
    gt_labels = torch.tensor([1, 3, 2])
    matched = torch.tensor([0, 1, 2, 2, 1, 0])
    xy = torch.rand(n, 2, generator=g) * 30
    proposals = torch.cat([xy, xy + 20 + torch.rand(n, 2, generator=g) * 10], dim=1)
    ref = maskrcnn_loss(logits, [proposals], [gt_masks], [gt_labels], [matched])
    from torchvision.models.detection.roi_heads import project_masks_on_boxes

    targets = project_masks_on_boxes(gt_masks, proposals, matched, m)
    ours = mask_loss(logits, gt_labels[matched], targets, torch.ones(n, dtype=torch.bool))
    torch.testing.assert_close(ours, ref)


def test_rpn_losses_equal_torchvision_for_the_same_sample():
    g = torch.Generator().manual_seed(0)
    a = 500
    objectness = torch.randn(2 * a, 1, generator=g)
    deltas = torch.randn(2 * a, 4, generator=g)
    labels = [torch.randint(-1, 2, (a,), generator=g).float() for _ in range(2)]
    targets = [torch.randn(a, 4, generator=g) for _ in range(2)]
    pos = [(lab == 1) & (torch.rand(a, generator=g) < 0.5) for lab in labels]
    neg = [(lab == 0) & (torch.rand(a, generator=g) < 0.5) for lab in labels]
    tv = RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, {}, {}, 0.7)
    tv.fg_bg_sampler = lambda _: (pos, neg)  # same sample for both
    ref_obj, ref_box = tv.compute_loss(objectness, deltas, labels, targets)
    ours = rpn_losses(
        objectness.reshape(2, a),
        deltas.reshape(2, a, 4),
        torch.stack(pos),
        torch.stack(pos) | torch.stack(neg),
        torch.stack(targets),
    )
    torch.testing.assert_close(ours["loss_rpn_objectness"], ref_obj)
    torch.testing.assert_close(ours["loss_rpn_box"], ref_box)


def test_empty_mask_loss_is_zero_but_keeps_the_graph():
    logits = torch.randn(4, 3, 28, 28, requires_grad=True)
    loss = mask_loss(
        logits,
        torch.zeros(4, dtype=torch.long),
        torch.zeros(4, 28, 28),
        torch.zeros(4, dtype=torch.bool),
    )
    assert loss.item() == 0
    loss.backward()
    assert logits.grad is not None and (logits.grad == 0).all()


def test_total_loss_applies_weights_once():
    losses = {
        name: torch.tensor(1.0)
        for name in [
            "loss_rpn_objectness",
            "loss_rpn_box",
            "loss_classifier",
            "loss_box",
            "loss_mask",
        ]
    }
    w = {"rpn_objectness": 1.0, "rpn_box": 2.0, "classifier": 0.5, "box": 0.0, "mask": 3.0}
    assert total_loss(losses, w).item() == 6.5
