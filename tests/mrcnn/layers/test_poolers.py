from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from mrcnn.layers.poolers import Pooler, assign_levels, inverse_order, rois_with_image_index


def test_level_formula():
    # k = floor(4 + log2(sqrt(wh) / 224)), clamped to 2..5; returned as an index from P2.
    boxes = torch.tensor(
        [
            [0, 0, 224, 224],
            [0, 0, 223, 223],
            [0, 0, 448, 448],
            [0, 0, 112, 112],
            [0, 0, 10, 10],
            [0, 0, 2000, 2000],
        ],
        dtype=torch.float32,
    )
    assert assign_levels(boxes).tolist() == [2, 1, 3, 1, 0, 3]


@pytest.mark.parametrize("aligned", [False, True])
def test_matches_torchvision_multiscale_roi_align(aligned):
    torch.manual_seed(0)
    s = 256
    feats = [torch.randn(2, 4, s // st, s // st) for st in (4, 8, 16, 32, 64)]
    xy = torch.rand(2, 30, 2) * 200
    wh = torch.rand(2, 30, 2) ** 2 * 600 + 4  # P2..P5 all take part
    boxes = torch.cat([xy, xy + wh], dim=-1)
    pooled, order = Pooler(7, sampling_ratio=2, aligned=aligned)(
        feats, rois_with_image_index(boxes), s
    )
    levels = assign_levels(boxes.reshape(-1, 4))
    assert torch.equal(order, torch.sort(levels, stable=True).indices)  # P2's RoIs, then P3's
    assert len(set(levels.tolist())) >= 3  # several levels took part
    ours = pooled[inverse_order(order, 60)]  # back in RoI order
    if aligned:
        # torchvision's pooler has no aligned option; only check shape and finiteness here.
        assert ours.shape == (60, 4, 7, 7) and torch.isfinite(ours).all()
        return
    tv = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    named = OrderedDict((str(i), f) for i, f in enumerate(feats[:4]))
    ref = tv(named, [boxes[0], boxes[1]], [(s, s), (s, s)])
    torch.testing.assert_close(ours, ref)


def _random_rois(g: torch.Generator, n: int, images: int) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * 60 - 10  # some start outside the map
    wh = torch.rand(n, 2, generator=g) * 40 + 0.5
    rois = torch.cat([torch.randint(0, images, (n, 1), generator=g).float(), xy, xy + wh], dim=1)
    rois[0, 1:] = torch.tensor([-30.0, -30, -10, -10])  # entirely off the map
    rois[1, 1:] = torch.tensor([40.0, 44, 90, 70])  # past the right and bottom edges
    return rois


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_forward_equals_torchvision(aligned, sampling_ratio, channels_last):
    from torchvision.ops import roi_align

    from mrcnn.layers.poolers import roi_align_cpu

    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 5, 12, 10, generator=g)
    if channels_last:
        feat = feat.contiguous(memory_format=torch.channels_last)
    rois = _random_rois(g, 60, 2)
    ref = roi_align(feat, rois, 7, 0.25, sampling_ratio, aligned)
    ours = roi_align_cpu(feat, rois, 7, 0.25, sampling_ratio, aligned)
    assert ours.shape == ref.shape == (60, 5, 7, 7)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    assert ref[1:].abs().sum() > 0 and not ref[0].any()  # the off-map RoI pools zeros
    # channels_last in, channels_last out (the mask head's convolutions take it as it is).
    assert ours.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert channels_last or ours.is_contiguous()


@pytest.mark.parametrize("aligned", [False, True])
def test_cpu_backward_equals_torchvision(aligned):
    from torchvision.ops import roi_align

    from mrcnn.layers.poolers import RoIAlignCPU

    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 3, 12, 10, generator=g, requires_grad=True)
    rois = _random_rois(g, 40, 2)
    grad_out = torch.randn(40, 3, 7, 7, generator=g)
    ref = torch.autograd.grad(roi_align(feat, rois, 7, 0.25, 2, aligned), feat, grad_out)[0]
    ours = torch.autograd.grad(RoIAlignCPU.apply(feat, rois, 7, 0.25, 2, aligned), feat, grad_out)[
        0
    ]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert ref.abs().sum() > 0


def test_cpu_forward_split_over_threads_is_bitwise_torchvision(monkeypatch):
    """Training's forward (and adaptive sampling's): torchvision's kernel on chunks of RoIs."""
    from torchvision.ops import roi_align

    from mrcnn.layers import poolers

    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 4, 16, 16, generator=g)
    xy = torch.rand(301, 2, generator=g) * 50
    rois = torch.cat([torch.randint(0, 2, (301, 1), generator=g).float(), xy, xy + 9], dim=1)
    ref = roi_align(feat, rois, 7, 0.25, 2, True)
    calls = []
    real = poolers.roi_align
    monkeypatch.setattr(poolers, "roi_align", lambda *a: calls.append(a[1].shape[0]) or real(*a))
    monkeypatch.setattr(poolers.os, "cpu_count", lambda: 4)
    with torch.no_grad():
        threads = torch.get_num_threads()
        torch.set_num_threads(4)
        try:
            ours = poolers.roi_align_threads(feat, rois, 7, 0.25, 2, True)
        finally:
            torch.set_num_threads(threads)
    assert len(calls) == 4 and sum(calls) == 301  # really split: 4 chunks of the 301 RoIs
    assert torch.equal(ours, ref)


def test_pooler_dispatch_inference_training_and_adaptive(monkeypatch):
    """Eager inference with a fixed sampling ratio takes the embedding_bag sum; training and
    adaptive sampling (0) take torchvision's forward."""
    from mrcnn.layers import poolers

    taken = []
    for name in ("roi_align_cpu", "roi_align_threads"):
        real = getattr(poolers, name)
        monkeypatch.setattr(
            poolers, name, lambda *a, real=real, name=name: taken.append(name) or real(*a)
        )
    feat = torch.randn(1, 2, 16, 16)
    rois = torch.tensor([[0.0, 4, 4, 40, 40]])
    with torch.no_grad():
        poolers._roi_align(feat, rois, 7, 0.25, 2, False)
        poolers._roi_align(feat, rois, 7, 0.25, 0, False)
    poolers._roi_align(feat.requires_grad_(), rois, 7, 0.25, 2, False).sum().backward()
    assert taken == ["roi_align_cpu", "roi_align_threads", "roi_align_threads"]


def test_inverse_order_undoes_the_level_order():
    order = torch.tensor([3, 0, 4, 1, 2])
    back = inverse_order(order, 5)
    assert back.tolist() == [1, 3, 4, 0, 2]
    values = torch.arange(5) * 10
    assert values[order][back].tolist() == values.tolist()


def test_pooler_gradient_reaches_the_features_in_roi_order():
    """Training pools level-ordered RoIs and gathers the head's outputs back: each RoI's
    gradient lands on its own level's features."""
    torch.manual_seed(0)
    s = 128
    feats = [torch.randn(1, 2, s // st, s // st, requires_grad=True) for st in (4, 8, 16, 32)]
    boxes = torch.tensor([[[0.0, 0, 120, 120], [0, 0, 20, 20]]])  # P3 and P2
    pooled, order = Pooler(7)(feats, rois_with_image_index(boxes), s)
    assert order.tolist() == [1, 0]  # level order: the P2 box first
    pooled[inverse_order(order, 2)][1].sum().backward()  # only the small box's output
    assert feats[0].grad is not None and feats[0].grad.abs().sum() > 0
    assert feats[1].grad is None or not feats[1].grad.any()
