"""Multi-level RoIAlign (Mask R-CNN sec. 3; FPN eq. 1).

Each RoI is pooled from one pyramid level, k = floor(k0 + log2(sqrt(wh) / 224)) with k0 = 4,
clamped to P2..P5: a 224 px box (ImageNet's canonical size) reads P4, one twice as large P5.
One `roi_align` call per level covers all images of the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align

K_MIN, K_MAX = 2, 5  # RoIs pool from P2..P5 (P6 only feeds the RPN)


def assign_levels(
    boxes: Tensor, canonical_scale: int = 224, canonical_level: int = 4, eps: float = 1e-6
) -> Tensor:
    """boxes [N, 4] -> int64 [N] index into (P2, P3, P4, P5)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    k = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_scale) + eps)
    return (k.clamp(min=K_MIN, max=K_MAX) - K_MIN).to(torch.int64)


def multilevel_roi_align(
    features: list[Tensor],
    boxes: Tensor,
    image_size: int,
    output_size: int,
    sampling_ratio: int = 2,
    aligned: bool = False,
    canonical_scale: int = 224,
    canonical_level: int = 4,
) -> Tensor:
    """Pool fixed-shape RoIs from their level.

    features: [P2, P3, P4, P5, ...] each [B, C, H_l, W_l]; extra levels are ignored.
    boxes: [B, R, 4] xyxy in the padded input frame of side `image_size`.
    -> [B * R, C, output_size, output_size], image-major (row b * R + r).
    """
    b, r, _ = boxes.shape
    batch_idx = torch.arange(b, device=boxes.device, dtype=torch.float32).repeat_interleave(r)
    rois = torch.cat([batch_idx[:, None], boxes.reshape(-1, 4).float()], dim=1)
    return roi_align_levels(
        features,
        rois,
        image_size,
        output_size,
        sampling_ratio,
        aligned,
        canonical_scale,
        canonical_level,
    )


def rois_with_image_index(boxes: Tensor) -> Tensor:
    """[B, R, 4] -> [B * R, 5] rows (image index, x1, y1, x2, y2), as `roi_align` takes them."""
    b, r, _ = boxes.shape
    image = torch.arange(b, device=boxes.device, dtype=torch.float32).repeat_interleave(r)
    return torch.cat([image[:, None], boxes.reshape(-1, 4).float()], dim=1)


def roi_align_levels(
    features: list[Tensor],
    rois: Tensor,
    image_size: int,
    output_size: int,
    sampling_ratio: int = 2,
    aligned: bool = False,
    canonical_scale: int = 224,
    canonical_level: int = 4,
) -> Tensor:
    """Pool RoIs given as rows (image index, x1, y1, x2, y2): [N, 5] -> [N, C, o, o]."""
    rois = rois.float()  # float32 coordinates: bf16 would move boxes by whole pixels
    levels = assign_levels(rois[:, 1:], canonical_scale, canonical_level)
    feats = features[: K_MAX - K_MIN + 1]
    out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], output_size, output_size))
    for level, feat in enumerate(feats):
        idx = torch.where(levels == level)[0]
        if idx.numel() == 0:
            continue
        scale = feat.shape[-1] / image_size  # 1/4, 1/8, 1/16, 1/32
        pooled = roi_align(
            feat.to(rois.dtype), rois[idx], output_size, scale, sampling_ratio, aligned
        )
        out[idx] = pooled.to(out.dtype)
    return out
