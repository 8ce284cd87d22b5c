import torch
from torchvision.models.detection._utils import BoxCoder

from mrcnn.layers import box_coder


def _boxes(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 50 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_decode_round_trip_and_torchvision():
    ref, gt = _boxes(50, 0), _boxes(50, 1)
    weights = (10.0, 10.0, 5.0, 5.0)
    deltas = box_coder.encode(gt, ref, weights)
    torch.testing.assert_close(box_coder.decode(deltas, ref, weights), gt, atol=1e-3, rtol=0)
    tv = BoxCoder(weights)
    torch.testing.assert_close(deltas, tv.encode_single(gt, ref))
    torch.testing.assert_close(
        box_coder.decode(deltas, ref, weights), tv.decode_single(deltas, ref)
    )


def test_decode_broadcasts_and_clamps_huge_scales():
    ref = _boxes(3)
    deltas = torch.zeros(3, 5, 4)
    deltas[:, :, 2] = 100.0  # exp(100) would overflow; clamped to log(1000/16)
    out = box_coder.decode(deltas, ref[:, None], (1.0, 1.0, 1.0, 1.0))
    assert out.shape == (3, 5, 4) and torch.isfinite(out).all()
    w = ref[:, 2] - ref[:, 0]
    torch.testing.assert_close(out[:, 0, 2] - out[:, 0, 0], w * 1000 / 16)


def test_clip_to_windows_per_image():
    boxes = torch.tensor([[[-5.0, -5, 200, 50]], [[-5.0, -5, 200, 50]]])
    windows = torch.tensor([[0.0, 0, 128, 128], [10.0, 20, 40, 100]])  # (y1, x1, y2, x2)
    out = box_coder.clip_to_windows(boxes, windows)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 0, 128, 50]))
    torch.testing.assert_close(out[1, 0], torch.tensor([20.0, 10, 100, 40]))
