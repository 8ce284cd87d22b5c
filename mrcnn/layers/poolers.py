"""Multi-level RoIAlign, the `Pooler` (Mask R-CNN sec. 3; FPN eq. 1).

Each RoI is pooled from one pyramid level, k = floor(k0 + log2(sqrt(wh) / 224)) with k0 = 4,
clamped to P2..P5: a 224 px box (ImageNet's canonical size) reads P4, one twice as large P5.
One `roi_align` call per level covers all images of the batch; the results stay in level order.

On CPU, eager inference (fixed sampling ratio) runs RoIAlign as one sparse weighted sum,
`roi_align_cpu`: every output bin's sample points and bilinear weights are computed at once
(`sample_taps`) and summed by `F.embedding_bag`, whose kernel is vectorised over the channels
and threaded, and which reads a channels_last map in place. torchvision's CPU kernel loops over
(RoI, channel, bin, sample) on one core: at 512 px, batch 2, it was ~18% of eager inference.
Training keeps torchvision's forward, split over torch's intra-op threads (`roi_align_threads`;
each RoI is pooled on its own, so the result is the same to the bit), with our own backward
(`RoIAlignCPU`): torchvision's CPU backward is a single-threaded loop that took ~40% of a small
model's training step; ours computes every sample's four bilinear weights at once and
accumulates them with one `index_add_`. Traced or exported, the pooler calls torchvision's op.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

K_MIN, K_MAX = 2, 5  # RoIs pool from P2..P5 (P6 only feeds the RPN)
MIN_ROIS_PER_THREAD = 64  # below this a thread hand-off costs more than it saves


def assign_levels(
    boxes: Tensor, canonical_scale: int = 224, canonical_level: int = 4, eps: float = 1e-6
) -> Tensor:
    """boxes [N, 4] -> int64 [N] index into (P2, P3, P4, P5)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    k = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_scale) + eps)
    return (k.clamp(min=K_MIN, max=K_MAX) - K_MIN).to(torch.int64)


@dataclass(frozen=True)
class Pooler:
    """Multi-level RoIAlign: each RoI pooled from the pyramid level its size picks.

    `pooler(features, rois, image_size) -> (pooled, order)`:
        features  [P2, P3, P4, P5, ...] each [B, C, H_l, W_l] (levels past P5 are ignored)
        rois      [N, 5] rows (image index, x1, y1, x2, y2) in the padded input frame of side
                  `image_size` (`rois_with_image_index`)
        pooled    [N, C, o, o] in *level order*: the RoIs of P2, then P3, ... (one `roi_align`
                  call per level covers all images)
        order     int64 [N]: pooled row i is RoI `order[i]`
    Heads run on the rows as they are and only their (much smaller) outputs go back to RoI
    order, `head(pooled)[inverse_order(order, N)]`: the pooled features are never scattered.
    Eager, compiled and exported models all pool here (on CPU in eager, RoIAlign runs split
    over threads and trains with our backward; traced, it is torchvision's op, which exports as
    ONNX `RoiAlign`).

    Args:
        output_size: o, the pooled side (7 for the box head, 14 for the mask head).
        sampling_ratio: RoIAlign sampling points per bin side (0 = adaptive, as torchvision).
        aligned: RoIAlign's half-pixel shift (False as torchvision's MultiScaleRoIAlign, True as
            detectron2's ROIAlignV2).
        canonical_scale: FPN level assignment: a RoI of this side (224) ...
        canonical_level: ... maps to this level (4, i.e. P4); k = floor(k0 + log2(sqrt(wh)/224)).
    """

    output_size: int
    sampling_ratio: int = 2
    aligned: bool = False
    canonical_scale: int = 224
    canonical_level: int = 4

    def __call__(
        self, features: list[Tensor], rois: Tensor, image_size: int
    ) -> tuple[Tensor, Tensor]:
        rois = rois.float()  # float32 coordinates: bf16 would move boxes by whole pixels
        levels = assign_levels(rois[:, 1:], self.canonical_scale, self.canonical_level)
        feats = features[: K_MAX - K_MIN + 1]
        pooled, order = [], []
        for level, feat in enumerate(feats):
            idx = nonzero_1d(levels == level)
            scale = feat.shape[-1] / image_size  # 1/4, 1/8, 1/16, 1/32
            out = _roi_align(
                feat.to(rois.dtype),
                rois[idx],
                self.output_size,
                scale,
                self.sampling_ratio,
                self.aligned,
            )
            pooled.append(out)
            order.append(idx)
        return torch.cat(pooled).to(feats[0].dtype), torch.cat(order)


def inverse_order(order: Tensor, n: int) -> Tensor:
    """The inverse permutation of `order` int64 [n]: rows in level order gathered by it are in
    RoI order. `n` is passed, not read from `order`, so a traced graph keeps a static length."""
    return torch.zeros(n, dtype=torch.int64, device=order.device).index_put(
        (order,), torch.arange(n, device=order.device)
    )


def nonzero_1d(mask: Tensor) -> Tensor:
    """Indices of the true entries of a 1-D bool mask. Traced, the ONNX `NonZero` sees float
    input, the type TensorRT's parser takes for it."""
    return torch.nonzero(mask.float()).squeeze(1)


def rois_with_image_index(boxes: Tensor) -> Tensor:
    """[B, R, 4] -> [B * R, 5] rows (image index, x1, y1, x2, y2), as `roi_align` takes them."""
    b, r, _ = boxes.shape
    image = torch.arange(b, device=boxes.device, dtype=torch.float32).repeat_interleave(r)
    return torch.cat([image[:, None], boxes.reshape(-1, 4).float()], dim=1)


def _roi_align(
    feat: Tensor, rois: Tensor, size: int, scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    if torch.jit.is_tracing() or torch.compiler.is_exporting():
        return roi_align(feat, rois, size, scale, sampling_ratio, aligned)  # the ONNX op
    if feat.device.type == "cpu" and feat.requires_grad and sampling_ratio > 0:
        return RoIAlignCPU.apply(feat, rois, size, scale, sampling_ratio, aligned)
    if feat.device.type == "cpu" and not torch.compiler.is_compiling():
        if sampling_ratio > 0 and not feat.requires_grad:
            return roi_align_cpu(feat, rois, size, scale, sampling_ratio, aligned)
        return roi_align_threads(feat, rois, size, scale, sampling_ratio, aligned)
    return roi_align(feat, rois, size, scale, sampling_ratio, aligned)


def roi_align_cpu(
    feat: Tensor, rois: Tensor, size: int, scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    """torchvision's `roi_align` (fixed sampling ratio) as one sparse weighted sum over the
    feature map's positions, `F.embedding_bag`: its CPU kernel is vectorised over channels and
    threaded. Eager inference pools here (5-12x torchvision's kernel at 512 px). Training
    does not: its numbers stay those of torchvision's forward and `RoIAlignCPU`'s backward.

    feat [B, C, H, W] (channels_last reads it in place), rois [N, 5] -> [N, C, size, size]
    (channels_last memory when `feat` is). Equal to torchvision's up to float rounding (the
    same sample points and bilinear weights, summed in another order).
    """
    b, c, h, w = feat.shape
    n = rois.shape[0]
    index, weight = sample_taps(rois, size, scale, sampling_ratio, aligned, h, w)
    table = feat.permute(0, 2, 3, 1).reshape(b * h * w, c)  # one row per position
    out = F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")
    out = out.reshape(n, size, size, c).permute(0, 3, 1, 2)
    if not feat.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous()
    return out


def sample_taps(
    rois: Tensor, size: int, scale: float, s: int, aligned: bool, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """Where RoIAlign reads and with what weight, torchvision's sample points and border rules.

    rois [N, 5] (image, x1, y1, x2, y2) -> (index int64 [N * size * size, 4 s^2], weight
    [N * size * size, 4 s^2]): for each output bin (row-major) of each RoI, its s x s sample
    points' four bilinear neighbours as rows of the [B * H * W] positions of the feature map,
    and their weights over s^2 (the average). Positions are computed in torchvision's order of
    float operations (start + bin * bin_size + (i + 0.5) * bin_size / s).
    """
    offset = 0.5 if aligned else 0.0
    start = rois[:, 1:3] * scale - offset  # [N, 2] (x, y)
    extent = rois[:, 3:5] * scale - offset - start
    if not aligned:
        extent = extent.clamp(min=1.0)
    bin_size = (extent / size)[:, :, None, None]  # [N, 2, 1, 1]
    bins = torch.arange(size, dtype=rois.dtype, device=rois.device)[:, None]
    samples = (torch.arange(s, dtype=rois.dtype, device=rois.device) + 0.5)[None]
    pos = start[:, :, None, None] + bins * bin_size + samples * bin_size / s  # [N, 2, size, s]
    ix, wx = _corners(pos[:, 0], width)  # [N, size, s, 2] indices and weights
    iy, wy = _corners(pos[:, 1], height)
    # Every (bin y, bin x | sample y, sample x, corner y, corner x) of every RoI.
    weight = wy[:, :, None, :, None, :, None] * wx[:, None, :, None, :, None, :] / (s * s)
    index = (
        rois[:, 0].long()[:, None, None, None, None, None, None] * (height * width)
        + iy[:, :, None, :, None, :, None] * width
        + ix[:, None, :, None, :, None, :]
    )
    rows = rois.shape[0] * size * size
    return index.reshape(rows, 4 * s * s), weight.reshape(rows, 4 * s * s)


_threads: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool): a forked child makes its own


def _thread_pool() -> ThreadPoolExecutor:
    global _threads
    if _threads is None or _threads[0] != os.getpid():
        _threads = (os.getpid(), ThreadPoolExecutor(os.cpu_count() or 1, "mrcnn-roi-align"))
    return _threads[1]


def roi_align_threads(
    feat: Tensor, rois: Tensor, size: int, scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    """torchvision's `roi_align` (no autograd) with the RoIs split over torch's intra-op threads:
    its CPU kernel is a single-threaded loop over RoIs. The ops release the GIL."""
    n = min(torch.get_num_threads(), rois.shape[0] // MIN_ROIS_PER_THREAD, os.cpu_count() or 1)
    if n <= 1 or torch.compiler.is_compiling():
        return roi_align(feat, rois, size, scale, sampling_ratio, aligned)
    parts = _thread_pool().map(
        lambda r: roi_align(feat, r, size, scale, sampling_ratio, aligned), rois.chunk(n)
    )
    return torch.cat(list(parts))


class RoIAlignCPU(torch.autograd.Function):
    """torchvision's `roi_align` forward with a vectorised backward (fixed sampling ratio).

    The gradient is exactly torchvision's: each output bin spreads its gradient over its
    s x s sample points, each point over its four bilinear neighbours, with torchvision's border
    rules (points beyond -1 or H contribute nothing, points in [-1, 0] clamp to the edge).
    """

    @staticmethod
    def forward(ctx, feat, rois, size, scale, sampling_ratio, aligned):  # noqa: D102
        ctx.save_for_backward(rois)
        ctx.args = (feat.shape, size, scale, sampling_ratio, aligned)
        return roi_align_threads(feat.detach(), rois, size, scale, sampling_ratio, aligned)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        (rois,) = ctx.saved_tensors
        (b, c, h, w), size, scale, s, aligned = ctx.args
        # The taps of `sample_taps` up to float rounding (positions as start + step * bin);
        # left as they are so that training's numbers do not move.
        offset = 0.5 if aligned else 0.0
        start = rois[:, 1:3] * scale - offset  # [N, 2] (x, y)
        extent = rois[:, 3:5] * scale - offset - start
        if not aligned:
            extent = extent.clamp(min=1.0)
        bin_size = extent / size  # [N, 2]
        # Sample positions along each axis: [N, size, s] (bin, sample)
        steps = torch.arange(size, dtype=rois.dtype)[:, None] + (torch.arange(s) + 0.5)[None] / s
        xs = start[:, 0, None, None] + steps * bin_size[:, 0, None, None]
        ys = start[:, 1, None, None] + steps * bin_size[:, 1, None, None]
        ix, wx = _corners(xs, w)  # [N, size, s, 2] indices and weights
        iy, wy = _corners(ys, h)
        # Every (bin y, bin x, sample y, sample x, corner y, corner x) of every RoI.
        weight = wy[:, :, None, :, None, :, None] * wx[:, None, :, None, :, None, :] / (s * s)
        index = (
            rois[:, 0].long()[:, None, None, None, None, None, None] * (h * w)
            + iy[:, :, None, :, None, :, None] * w
            + ix[:, None, :, None, :, None, :]
        )
        g = grad_out.permute(0, 2, 3, 1)  # [N, size, size, C]
        contrib = g[:, :, :, None, None, None, None, :] * weight[..., None]
        grad = grad_out.new_zeros((b * h * w, c))
        grad.index_add_(0, index.reshape(-1), contrib.reshape(-1, c))
        feat_grad = grad.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return feat_grad, None, None, None, None, None


def _corners(pos: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Bilinear neighbours of sample positions along one axis, torchvision's border rules.

    pos [...] -> (index int64 [..., 2], weight [..., 2]); out-of-range samples get weight 0.
    """
    inside = (pos >= -1.0) & (pos <= length)
    p = pos.clamp(min=0)
    low = p.floor().long()
    at_edge = low >= length - 1
    low = torch.where(at_edge, torch.full_like(low, length - 1), low)
    high = torch.where(at_edge, low, low + 1)
    p = torch.where(at_edge, low.to(p.dtype), p)
    frac = p - low
    index = torch.stack([low, high], dim=-1)
    weight = torch.stack([1 - frac, frac], dim=-1) * inside[..., None]
    return index, weight
