"""IoU matching and balanced positive/negative sampling, batched over images.

Ground truth arrives padded ([B, G] slots with a validity mask), so matching is one batched IoU
and a max over G; padded slots get IoU -1 and can never match. Sampling draws random keys and
takes top-k, which gives fixed-size outputs without a per-image loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BELOW_LOW = -1  # matched index of a negative
BETWEEN = -2  # matched index of an ignored prediction (between the two thresholds)


@dataclass(frozen=True)
class Sampler:
    """Which predictions train a head: matching thresholds and balanced sampling
    (Faster R-CNN sec. 3.1.2 for the RPN's anchors, Fast R-CNN sec. 2.3 for the RoIs).

    fg_iou_thresh: a prediction with IoU >= this to some gt box is positive (0.7 RPN, 0.5 RoIs)
    bg_iou_thresh: ... negative below this (0.3 RPN, 0.5 RoIs); in between it is ignored
    batch_size_per_image: predictions sampled per image for the losses (256 RPN, 512 RoIs)
    positive_fraction: at most this share of them are positive (0.5 RPN, 0.25 RoIs)
    """

    fg_iou_thresh: float
    bg_iou_thresh: float
    batch_size_per_image: int
    positive_fraction: float

    def sample(self, matched: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`match` results int64 [B, N] of the `candidates` bool [B, N] -> `sample_balanced`'s
        (idx, is_positive, valid), [B, S]."""
        return sample_balanced(
            (matched >= 0) & candidates,
            (matched == BELOW_LOW) & candidates,
            self.batch_size_per_image,
            self.positive_fraction,
        )


def batched_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every pair: a [B, N, 4], b [B, M, 4] (xyxy) -> [B, N, M]."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, :, None] + area_b[:, None, :] - inter)


def match(
    iou: Tensor,
    gt_valid: Tensor,
    fg_thresh: float,
    bg_thresh: float,
    allow_low_quality: bool,
) -> Tensor:
    """Assign each prediction its best ground truth.

    iou: [B, G, N] (gt x predictions); gt_valid: bool [B, G].
    -> int64 [B, N]: gt index for IoU >= fg_thresh, BELOW_LOW for < bg_thresh, BETWEEN otherwise.
    With `allow_low_quality` each gt's best predictions (ties included) are matched to it
    even below fg_thresh (Faster R-CNN's RPN rule, so every object gets an anchor); a gt that
    overlaps nothing at all is not forced onto arbitrary predictions.
    """
    iou = iou.masked_fill(~gt_valid[:, :, None], -1.0)
    best_iou, matches = iou.max(dim=1)  # [B, N]
    result = matches.clone()
    result[best_iou < fg_thresh] = BETWEEN
    result[best_iou < bg_thresh] = BELOW_LOW
    if allow_low_quality:
        best_per_gt = iou.max(dim=2, keepdim=True).values  # [B, G, 1]
        is_best = (iou == best_per_gt) & gt_valid[:, :, None] & (best_per_gt > 0)
        low_quality = is_best.any(dim=1)  # [B, N]
        result = torch.where(low_quality, matches, result)
    return result


def sample_balanced(
    positive: Tensor,
    negative: Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pick up to `batch_size_per_image` per image, at most `positive_fraction` positives.

    positive, negative: bool [B, N] (disjoint).
    -> idx int64 [B, S], is_positive bool [B, S], valid bool [B, S] with
       S = min(batch_size_per_image, N). Positives come first within each row, so the first
       `int(S * positive_fraction)` slots hold every sampled positive.
    Randomness comes from torch's global generator (seeded by the caller).
    """
    b, n = positive.shape
    s = min(batch_size_per_image, n)
    num_pos_cap = int(s * positive_fraction)
    keys = torch.rand((b, n), device=positive.device)
    pos_keys, pos_idx = torch.where(positive, keys, -1.0).topk(num_pos_cap, dim=1)
    neg_keys, neg_idx = torch.where(negative, keys, -1.0).topk(s, dim=1)
    pos_ok = pos_keys >= 0  # [B, P]
    num_pos = pos_ok.sum(dim=1, keepdim=True)
    neg_ok = (neg_keys >= 0) & (torch.arange(s, device=positive.device) < s - num_pos)
    idx = torch.cat([pos_idx, neg_idx], dim=1)  # [B, P + S]
    ok = torch.cat([pos_ok, neg_ok], dim=1)
    is_pos = torch.cat([pos_ok, torch.zeros_like(neg_ok)], dim=1)
    # Move the chosen entries to the front (stable, so positives stay first), keep S slots.
    order = torch.sort((~ok).to(torch.uint8), dim=1, stable=True).indices[:, :s]
    return idx.gather(1, order), is_pos.gather(1, order), ok.gather(1, order)
