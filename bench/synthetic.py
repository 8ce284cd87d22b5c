"""Synthetic scenes and torchvision's Mask R-CNN, shared by the speed benchmarks
(`bench/model_speed.py`, `bench/onnx_speed.py`).

    scenes(batch, size)      uint8 images with 3..6 filled ellipses, their masks and labels
    our_batch(...)           the same scenes as our training `Batch` (boxes, mini-masks)
    torchvision_model(...)   `maskrcnn_resnet50_fpn`'s architecture with frozen BN, random init
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN as TVMaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from mrcnn.data.minimask import boxes_from_masks, make_mini_masks
from mrcnn.structures import Batch

MAX_GT = 8


def scenes(batch: int, size: int, seed: int = 0, num_classes: int = 91):
    """`batch` images with 3..6 ellipses: images uint8 [B,S,S,3], masks [N,S,S] and labels each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks, labels = [], [], []
    for _ in range(batch):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        ms = []
        for _ in range(rng.integers(3, 7)):
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            ry, rx = rng.uniform(0.05, 0.2, 2) * size
            ms.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
            img[ms[-1]] = rng.integers(0, 255, 3)
        images.append(img)
        masks.append(np.stack(ms))
        labels.append(rng.integers(1, num_classes, len(ms)))
    return np.stack(images), masks, labels


def our_batch(images, masks, labels, device) -> Batch:
    b, s = images.shape[:2]
    boxes = torch.zeros(b, MAX_GT, 4)
    lab = torch.zeros(b, MAX_GT, dtype=torch.long)
    minis = torch.zeros(b, MAX_GT, 56, 56, dtype=torch.uint8)
    valid = torch.zeros(b, MAX_GT, dtype=torch.bool)
    for i, (m, lb) in enumerate(zip(masks, labels, strict=True)):  # data prep, not timed
        n = len(lb)
        bx = boxes_from_masks(m)
        boxes[i, :n] = torch.from_numpy(bx)
        lab[i, :n] = torch.from_numpy(lb)
        minis[i, :n] = torch.from_numpy(make_mini_masks(m, bx, 56))
        valid[i, :n] = True
    return Batch(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        windows=torch.tensor([[0.0, 0, s, s]] * b),
        scales=torch.ones(b),
        original_sizes=torch.tensor([[s, s]] * b),
        image_ids=torch.arange(b),
        gt_boxes=boxes,
        gt_labels=lab,
        gt_mini_masks=minis,
        gt_valid=valid,
    ).to(device)


# --light: the same architecture with fewer classes, proposals, RoIs and detections, for smoke
# tests on a small CPU (torchvision's keyword names; our preset takes the same).
LIGHT = {
    "num_classes": 4,
    "rpn_pre_nms_top_n_train": 100,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 32,
    "box_detections_per_img": 10,
}


def torchvision_model(
    size: int, score_thresh: float, arch: str = "resnet50", light: bool = False
) -> TVMaskRCNN:
    body = getattr(resnet, arch)(norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, trainable_layers=3)
    kwargs = dict(LIGHT) if light else {"num_classes": 91}
    return TVMaskRCNN(
        backbone, min_size=size, max_size=size, box_score_thresh=score_thresh, **kwargs
    )
