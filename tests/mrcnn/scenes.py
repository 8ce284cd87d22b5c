"""Tiny synthetic scenes and a tiny model for fast CPU tests of the whole model."""

from __future__ import annotations

import numpy as np
import torch

from mrcnn import presets
from mrcnn.data.minimask import boxes_from_masks, make_mini_masks
from mrcnn.modeling.model import MaskRCNN, build_model
from mrcnn.structures import Batch

S = 128


def scene(seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A 128 px image with a circle and a square; label 1 = circle, 2 = square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S]
    img = np.zeros((S, S, 3), np.uint8)
    img[:] = rng.integers(0, 80, 3)
    masks, labels = [], []
    for k, (cy, cx, r) in enumerate([(40, 40, 18), (90, 85, 22)]):
        circle = (k + seed) % 2 == 0
        m = (
            (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            if circle
            else (abs(yy - cy) < r) & (abs(xx - cx) < r)
        )
        img[m] = rng.integers(120, 255, 3)
        masks.append(m)
        labels.append(1 if circle else 2)
    return img, np.stack(masks), labels


def make_batch(seeds=(0, 1), max_gt: int = 3, mini: int = 28) -> tuple[Batch, list]:
    imgs, boxes, labels, minis, full = [], [], [], [], []
    for s in seeds:
        img, masks, lab = scene(s)
        b = boxes_from_masks(masks)
        pad = max_gt - len(lab)
        imgs.append(img)
        boxes.append(np.concatenate([b, np.zeros((pad, 4), np.float32)]))
        labels.append(lab + [0] * pad)
        minis.append(
            np.concatenate([make_mini_masks(masks, b, mini), np.zeros((pad, mini, mini), np.uint8)])
        )
        full.append((img, masks, lab))
    n = len(seeds)
    valid = torch.tensor([[True] * 2 + [False] * (max_gt - 2)] * n)
    batch = Batch(
        images=torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous(),
        windows=torch.tensor([[0.0, 0, S, S]] * n),
        scales=torch.ones(n),
        original_sizes=torch.tensor([[S, S]] * n),
        image_ids=torch.arange(n),
        gt_boxes=torch.from_numpy(np.stack(boxes)),
        gt_labels=torch.tensor(labels),
        gt_mini_masks=torch.from_numpy(np.stack(minis)),
        gt_valid=valid,
    )
    return batch, full


def tiny_model(seed: int = 0, num_classes: int = 3, **overrides) -> MaskRCNN:
    torch.manual_seed(seed)
    cfg = presets.shapes_small(
        num_classes=num_classes,
        backbone={
            "arch": "resnet18",
            "norm": "gn",
            "width_multiplier": 0.25,
            "fpn_channels": 32,
            "trainable_stages": 5,
        },
        roi_heads={
            "batch_size_per_image": 32,
            "box_head_dim": 128,
            "mask_head_channels": 32,
            "mask_head_convs": 1,
            "aligned": True,
            **overrides.pop("roi_heads", {}),
        },
        **overrides,
    )
    return build_model(cfg)


def scene_keypoints(seed: int) -> np.ndarray:
    """Keypoints of `scene(seed)`'s two objects, [2, 4, 3] (x, y, visibility): a square's four
    corners (top-left, top-right, bottom-right, bottom-left), a circle's centre as keypoint 0
    and its other three unlabelled (visibility 0)."""
    out = np.zeros((2, 4, 3), np.float32)
    for k, (cy, cx, r) in enumerate([(40, 40, 18), (90, 85, 22)]):
        if (k + seed) % 2 == 0:  # circle
            out[k, 0] = (cx + 0.5, cy + 0.5, 2)
        else:  # square: pixels |y - cy| < r, so its edges are at cy - r + 1 and cy + r
            x1, y1, x2, y2 = cx - r + 1, cy - r + 1, cx + r, cy + r
            out[k] = [(x1, y1, 2), (x2, y1, 2), (x2, y2, 2), (x1, y2, 2)]
    return out


def make_keypoint_batch(seeds=(0, 1), max_gt: int = 3) -> tuple[Batch, list]:
    """`make_batch` with `gt_keypoints` [B, G, 4, 3] from `scene_keypoints`."""
    batch, full = make_batch(seeds, max_gt)
    kps = np.zeros((len(seeds), max_gt, 4, 3), np.float32)
    for i, s in enumerate(seeds):
        kps[i, :2] = scene_keypoints(s)
    batch.gt_keypoints = torch.from_numpy(kps)
    return batch, full
