"""Keypoint head (Mask R-CNN sec. 5, "Human Pose Estimation") and its inference step.

Each of K keypoint types is a one-hot m x m mask (m = 56): the head predicts K heatmaps per RoI and
training takes a softmax cross-entropy over the m^2 positions of each visible keypoint
(`mrcnn.modeling.losses.keypoint_loss`, targets from `mrcnn.modeling.keypoint_targets`). At
inference each heatmap is resized to its box and its argmax becomes the keypoint
(`heatmaps_to_keypoints`).

Shape shorthand: N RoIs, C feature channels, K keypoint types, P pooled side (14),
m = 4P heatmap side (56), H x W a box's size in pixels (rounded up).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrcnn.modeling.roi_heads.mask_head import conv_stack, init_relu_layers

# Heatmap pixels resampled per chunk in `heatmaps_to_keypoints`: bounds the float
# [chunk, K, H, W] intermediate (~256 MB).
_CHUNK_PIXELS = 64 * 1024 * 1024
# Keys' cubic convolution coefficient: PyTorch's (and OpenCV's) bicubic uses A = -0.75.
_CUBIC_A = -0.75


class KeypointHead(nn.Module):
    """n x (3x3 conv + ReLU), a 4x4 stride-2 deconv to K heatmaps, 2x bilinear upsampling.

    forward: pooled [N, C, P, P] -> heatmap logits [N, K, 4P, 4P] (14 -> 28 -> 56). The paper's
    head is 8 convs of 512 channels; torchvision's `KeypointRCNNHeads` + `KeypointRCNNPredictor`
    are the same layers (so their weights load, see `mrcnn.weights`).

    Args:
        in_channels: feature channels C of the pooled RoIs (the FPN width).
        channels: width of each 3x3 conv (paper: 512).
        num_convs: how many 3x3 convs (paper: 8).
        num_keypoints: K, one heatmap per keypoint type.
    """

    def __init__(self, in_channels: int, channels: int, num_convs: int, num_keypoints: int):
        super().__init__()
        self.convs, c = conv_stack(in_channels, channels, num_convs)
        self.deconv = nn.ConvTranspose2d(c, num_keypoints, kernel_size=4, stride=2, padding=1)
        init_relu_layers([*self.convs, self.deconv])
        self.num_keypoints = num_keypoints

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x).relu_()
        x = self.deconv(x)
        # The paper's "2x bilinear upscaling": a higher-resolution output helps localisation.
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


@torch.no_grad()
def heatmaps_to_keypoints(heatmaps: Tensor, boxes: Tensor) -> Tensor:
    """Keypoints from heatmap logits: [N, K, m, m] + boxes [N, 4] -> (x, y, score) [N, K, 3].

    The geometry of torchvision's `heatmaps_to_keypoints` (so its checkpoints give the same
    keypoints): each heatmap is resized bicubically (align_corners=False) to the box's size
    rounded up, ceil(w) x ceil(h) with w, h >= 1; the argmax cell (i, j) becomes
    x = x1 + (j + 0.5) * w / ceil(w) (cell centres, Heckbert's c = d + 0.5), likewise y; the
    score is the resized logit there. Boxes and keypoints share a frame (here the padded one).

    Bicubic resizing is separable, so each box's resize is `Ay @ map @ Ax^T` with cubic weight
    matrices, batched over boxes and padded to the largest box of a chunk (padding is masked out
    of the argmax): no per-box Python loop.
    """
    n, k, mh, mw = heatmaps.shape
    out = heatmaps.new_zeros((n, k, 3), dtype=torch.float32)
    if n == 0:
        return out
    boxes = boxes.float()
    widths = (boxes[:, 2] - boxes[:, 0]).clamp(min=1)
    heights = (boxes[:, 3] - boxes[:, 1]).clamp(min=1)
    w_ceil, h_ceil = widths.ceil(), heights.ceil()
    w_max, h_max = int(w_ceil.max()), int(h_ceil.max())
    chunk = max(1, _CHUNK_PIXELS // (k * w_max * h_max))
    maps = heatmaps.float()
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        ay = cubic_resize_matrix(h_ceil[s:e], h_max, mh)  # [c, H, m]
        ax = cubic_resize_matrix(w_ceil[s:e], w_max, mw)  # [c, W, m]
        resized = ay[:, None] @ maps[s:e] @ ax[:, None].transpose(-1, -2)  # [c, K, H, W]
        inside = (torch.arange(h_max, device=maps.device) < h_ceil[s:e, None])[:, :, None] & (
            torch.arange(w_max, device=maps.device) < w_ceil[s:e, None]
        )[:, None, :]  # [c, H, W]
        resized = resized.masked_fill(~inside[:, None], float("-inf")).flatten(2)
        score, pos = resized.max(dim=2)  # [c, K]
        x_int, y_int = pos % w_max, pos // w_max
        out[s:e, :, 0] = (x_int + 0.5) * (widths[s:e] / w_ceil[s:e])[:, None] + boxes[s:e, None, 0]
        out[s:e, :, 1] = (y_int + 0.5) * (heights[s:e] / h_ceil[s:e])[:, None] + boxes[s:e, None, 1]
        out[s:e, :, 2] = score
    return out


def cubic_resize_matrix(out_sizes: Tensor, length: int, size: int) -> Tensor:
    """Weights of a bicubic resize (align_corners=False) of a length-`size` signal to
    `out_sizes[i]` samples: float [N, length, size], rows >= out_sizes[i] zero.

    The arithmetic of PyTorch's `upsample_bicubic2d`: source index (j + 0.5) * size / out - 0.5
    (not clamped), four taps at floor - 1 .. floor + 2 clamped to the signal, Keys' cubic
    coefficients with A = -0.75.
    """
    out_sizes = out_sizes.float()
    j = torch.arange(length, device=out_sizes.device, dtype=torch.float32)
    scale = size / out_sizes  # [N]
    src = scale[:, None] * (j[None] + 0.5) - 0.5  # [N, L]
    i0 = src.floor()
    t = src - i0
    coeffs = torch.stack([_cubic2(t + 1), _cubic1(t), _cubic1(1 - t), _cubic2(2 - t)], dim=-1)
    taps = (i0.long()[..., None] + torch.arange(-1, 3, device=src.device)).clamp(0, size - 1)
    w = src.new_zeros((*src.shape, size))
    w.scatter_add_(-1, taps, coeffs)
    return w * (j[None] < out_sizes[:, None])[..., None]


def _cubic1(x: Tensor) -> Tensor:  # |x| <= 1
    a = _CUBIC_A
    return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic2(x: Tensor) -> Tensor:  # 1 < |x| < 2
    a = _CUBIC_A
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
