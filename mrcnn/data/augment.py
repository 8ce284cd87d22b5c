"""Training augmentation on fixed-shape samples: horizontal flip, scale jitter, random crop.

Samples come out of the shards already resized and padded into the S x S frame (`Sample`), and
must leave augmentation in that same frame so batches keep their static shape. Every geometric
change here is one map of the frame onto itself:

    take the region R = (y1, x1, y2, x2) of the current window (all of it, or a random crop),
    scale it by f, put it at the top-left of a zero S x S canvas, keep what fits.

Boxes follow as `(box - R.origin) * f`, clipped to the new window; a box left thinner than one
pixel is dropped (its instance is gone from the picture). Mini-masks are box-relative (Mask
R-CNN's "mini-mask" of matterport: the mask cut to its box, resized to m x m), so scaling leaves
them as they are; a box that the crop cuts keeps only the part of its mini-mask that is still
inside, resampled to m x m (RoIAlign over the mini-mask, vectorised over the instances).

Options (`Augmentation`, wired from `params.yaml` `train:` by the pipeline):
    hflip        mirror half of the samples left-right
    scale_range  (lo, hi): f ~ U(lo, hi) times the stored scale; large-scale jitter (Ghiasi et
                 al. 2021, "Simple Copy-Paste") uses (0.1, 2.0). An image larger than the
                 frame after scaling is cut to S x S at a random offset.
    short_sides  detectron2's multi-scale training (ResizeShortestEdge): the window's short side
                 is resized to one drawn from the list, the long side kept <= S. Exclusive
                 with `scale_range`.
    crop         (lo, hi) relative size of a random crop of the window (each side drawn from
                 U(lo, hi), detectron2's "relative_range"), which is then scaled to fill the
                 frame; None: no crop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torchvision.ops import roi_align

from mrcnn.data.shards import Sample


@dataclass(frozen=True)
class Augmentation:
    """What to do to training samples (see the module doc)."""

    hflip: bool = True
    scale_range: tuple[float, float] | None = None
    short_sides: tuple[int, ...] = ()
    crop: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.scale_range is not None:
            lo, hi = self.scale_range
            if not 0 < lo <= hi:
                raise ValueError(
                    f"scale_range must be (lo, hi) with 0 < lo <= hi, got {self.scale_range}"
                )
        if self.scale_range is not None and self.short_sides:
            raise ValueError("use either scale_range (scale jitter) or short_sides, not both")
        if any(s < 1 for s in self.short_sides):
            raise ValueError(f"short_sides must be positive pixel sizes, got {self.short_sides}")
        if self.crop is not None and not 0 < self.crop[0] <= self.crop[1] <= 1:
            raise ValueError(f"crop must be (lo, hi) with 0 < lo <= hi <= 1, got {self.crop}")

    @property
    def geometric(self) -> bool:
        """Whether anything beyond the flip is on."""
        return self.scale_range is not None or bool(self.short_sides) or self.crop is not None


def augment_sample(sample: Sample, aug: Augmentation, rng: np.random.Generator) -> Sample:
    """Scale jitter and / or random crop of one sample, drawn from `rng` (the flip is separate:
    `hflip_sample`). Returns the sample itself when `aug.geometric` is off."""
    if not aug.geometric:
        return sample
    wy1, wx1, wy2, wx2 = sample.window
    h, w = wy2 - wy1, wx2 - wx1
    size = sample.image.shape[0]
    y1, x1, y2, x2 = float(wy1), float(wx1), float(wy2), float(wx2)
    if aug.crop is not None:
        ch = h * rng.uniform(*aug.crop)
        cw = w * rng.uniform(*aug.crop)
        y1 += rng.uniform(0, h - ch)
        x1 += rng.uniform(0, w - cw)
        y2, x2 = y1 + ch, x1 + cw
    rh, rw = y2 - y1, x2 - x1
    f = min(size / rh, size / rw) if aug.crop is not None else 1.0  # the crop fills the frame
    if aug.scale_range is not None:
        f *= rng.uniform(*aug.scale_range)
    elif aug.short_sides:
        side = float(rng.choice(aug.short_sides))
        f = min(side / min(rh, rw), size / max(rh, rw))
    # Scaled region larger than the frame: cut S x S out of it at a random offset.
    sh, sw = rh * f, rw * f
    if sh > size:
        y1 += rng.uniform(0, (sh - size) / f)
        y2 = y1 + size / f
    if sw > size:
        x1 += rng.uniform(0, (sw - size) / f)
        x2 = x1 + size / f
    return transform_sample(sample, (y1, x1, y2, x2), f)


def transform_sample(sample: Sample, region: tuple[float, float, float, float], f: float) -> Sample:
    """Put `region` (y1, x1, y2, x2) of the frame, scaled by `f`, at the top-left of a fresh
    S x S frame; boxes, crowd boxes and mini-masks follow (see the module doc)."""
    size = sample.image.shape[0]
    y1, x1, y2, x2 = region
    nh = min(size, max(1, int(round((y2 - y1) * f))))
    nw = min(size, max(1, int(round((x2 - x1) * f))))
    fy, fx = nh / (y2 - y1), nw / (x2 - x1)
    # Crop + resize in one exact bilinear resampling (RoIAlign: frame point (x, y) lands at
    # ((x - x1) * fx, (y - y1) * fy), as the boxes do); adaptive sampling averages when shrinking.
    iy1, ix1 = int(np.floor(y1)), int(np.floor(x1))
    iy2, ix2 = int(np.ceil(y2)), int(np.ceil(x2))
    crop = torch.from_numpy(np.ascontiguousarray(sample.image[iy1:iy2, ix1:ix2]))
    crop = crop.permute(2, 0, 1)[None].float()
    roi = torch.tensor([[0.0, x1 - ix1, y1 - iy1, x2 - ix1, y2 - iy1]])
    out = roi_align(crop, roi, (nh, nw), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    image = np.zeros_like(sample.image)
    image[:nh, :nw] = out[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()
    offset = np.array([x1, y1, x1, y1], np.float32)
    scale = np.array([fx, fy, fx, fy], np.float32)
    limit = np.array([nw, nh, nw, nh], np.float32)
    boxes = (sample.boxes - offset) * scale
    clipped = np.clip(boxes, 0, limit)
    keep = ((clipped[:, 2] - clipped[:, 0]) >= 1) & ((clipped[:, 3] - clipped[:, 1]) >= 1)
    masks = _cut_mini_masks(sample.mini_masks[keep], boxes[keep], clipped[keep])
    crowd = np.clip((sample.crowd_boxes - offset) * scale, 0, limit)
    crowd = crowd[((crowd[:, 2] - crowd[:, 0]) >= 1) & ((crowd[:, 3] - crowd[:, 1]) >= 1)]
    kps = getattr(sample, "keypoints", None)
    if kps is not None:  # [N, K, 3] (x, y, v): moved like the boxes, invisible once cut away
        kps = kps[keep].copy()
        kps[..., 0] = (kps[..., 0] - x1) * fx
        kps[..., 1] = (kps[..., 1] - y1) * fy
        inside = (kps[..., 0] >= 0) & (kps[..., 0] < nw) & (kps[..., 1] >= 0) & (kps[..., 1] < nh)
        kps[..., 2] = np.where(inside, kps[..., 2], 0)
    extra = {"keypoints": kps} if hasattr(sample, "keypoints") else {}
    return replace(
        sample,
        **extra,
        image=image,
        window=(0, 0, nh, nw),
        scale=float(sample.scale * (fx + fy) / 2),
        boxes=clipped[keep].astype(np.float32),
        labels=sample.labels[keep],
        mini_masks=masks,
        crowd_boxes=crowd.astype(np.float32),
    )


def _cut_mini_masks(masks: np.ndarray, boxes: np.ndarray, clipped: np.ndarray) -> np.ndarray:
    """bool [N, m, m] mini-masks of `boxes` -> those of `clipped` (each inside its box).

    The kept part of box i, in mini-mask pixels, is resampled to m x m by RoIAlign (one
    bilinear sample per output pixel, at its centre). An uncut box maps each pixel to itself.
    """
    n = len(masks)
    cut = np.flatnonzero(np.any(np.abs(clipped - boxes) > 1e-4, axis=1))
    if n == 0 or len(cut) == 0:
        return masks
    m = masks.shape[-1]
    bw = np.maximum(boxes[cut, 2] - boxes[cut, 0], 1e-6)
    bh = np.maximum(boxes[cut, 3] - boxes[cut, 1], 1e-6)
    u = (
        np.stack(
            [
                (clipped[cut, 0] - boxes[cut, 0]) / bw,
                (clipped[cut, 1] - boxes[cut, 1]) / bh,
                (clipped[cut, 2] - boxes[cut, 0]) / bw,
                (clipped[cut, 3] - boxes[cut, 1]) / bh,
            ],
            axis=1,
        )
        * m
    )
    rois = torch.from_numpy(np.concatenate([np.arange(len(cut))[:, None], u], 1).astype(np.float32))
    src = torch.from_numpy(masks[cut].astype(np.float32))[:, None]
    out = roi_align(src, rois, (m, m), spatial_scale=1.0, sampling_ratio=1, aligned=True)
    result = masks.copy()
    result[cut] = (out[:, 0] >= 0.5).numpy()
    return result
