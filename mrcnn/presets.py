"""Named configurations.

- `torchvision_r50_fpn`: the architecture and inference settings of torchvision's
  `maskrcnn_resnet50_fpn` (v1), so its checkpoints load through `mrcnn.weights.load_torchvision`
  and give the same detections. Keyword names follow torchvision's for the settings it mirrors.
- `torchvision_keypoint_r50_fpn`: the same for torchvision's `keypointrcnn_resnet50_fpn`
  (boxes + 17 COCO person keypoints, no mask head).
- `shapes_small`: a slim ResNet-18 FPN at 128 px that trains from scratch on a CPU in minutes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mrcnn.config import (
    AnchorConfig,
    BackboneConfig,
    Config,
    InferenceConfig,
    InputConfig,
    RoIHeadsConfig,
    RPNConfig,
)


def torchvision_r50_fpn(
    num_classes: int = 91,
    image_size: int = 1024,
    *,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_nms_thresh: float = 0.7,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 2000,
    box_batch_size_per_image: int = 512,
    trainable_backbone_layers: int = 3,
    **overrides: Any,
) -> Config:
    """torchvision `maskrcnn_resnet50_fpn` (v1): ResNet-50, frozen BN, FPN 256, RoIAlign
    aligned=False. `overrides` are further `Config` sections as dicts (e.g. `loss={...}`)."""
    cfg = Config(
        num_classes=num_classes,
        backbone=BackboneConfig(
            arch="resnet50", norm="frozen_bn", trainable_stages=trainable_backbone_layers
        ),
        anchors=AnchorConfig(sizes=(32.0, 64.0, 128.0, 256.0, 512.0), ratios=(0.5, 1.0, 2.0)),
        rpn=RPNConfig(
            pre_nms_top_n_train=rpn_pre_nms_top_n_train,
            pre_nms_top_n_test=rpn_pre_nms_top_n_test,
            post_nms_top_n_train=rpn_post_nms_top_n_train,
            post_nms_top_n_test=rpn_post_nms_top_n_test,
            nms_thresh=rpn_nms_thresh,
        ),
        roi_heads=RoIHeadsConfig(batch_size_per_image=box_batch_size_per_image, aligned=False),
        inference=InferenceConfig(
            score_thresh=box_score_thresh,
            nms_thresh=box_nms_thresh,
            detections_per_img=box_detections_per_img,
        ),
        input=InputConfig(image_size=image_size, resize_mode="square"),
    )
    return cfg.replace(**overrides) if overrides else cfg


def shapes_small(num_classes: int = 4, image_size: int = 128, **overrides: Any) -> Config:
    """Small and CPU-trainable: ResNet-18 at half width with BN, FPN 64, anchors 8..128 px,
    64 RoIs per image, a slim box head (256) and mask head (2 x conv 64).

    At 128 px the heads, not the backbone, dominate CPU cost (a full 4 x 256 mask head is about
    1 GFLOP per positive RoI), so RoI counts and head widths are scaled down with the input.
    """
    cfg = Config(
        num_classes=num_classes,
        backbone=BackboneConfig(
            arch="resnet18", norm="bn", trainable_stages=5, fpn_channels=64, width_multiplier=0.5
        ),
        anchors=AnchorConfig(sizes=(8.0, 16.0, 32.0, 64.0, 128.0), ratios=(0.5, 1.0, 2.0)),
        rpn=RPNConfig(
            pre_nms_top_n_train=400,
            pre_nms_top_n_test=200,
            post_nms_top_n_train=200,
            post_nms_top_n_test=100,
            batch_size_per_image=128,
        ),
        roi_heads=RoIHeadsConfig(
            batch_size_per_image=64,
            positive_fraction=0.25,
            aligned=True,
            # One sample per bin: results are insensitive to the count (Mask R-CNN sec. 3) and
            # RoIAlign's backward is the costliest op of a CPU step at 128 px.
            sampling_ratio=1,
            box_head_dim=256,
            mask_head_channels=64,
            mask_head_convs=2,
        ),
        inference=InferenceConfig(score_thresh=0.3, detections_per_img=20),
        input=InputConfig(image_size=image_size, resize_mode="square"),
    )
    return cfg.replace(**overrides) if overrides else cfg


# COCO's person keypoints, in its order, and the index each takes in a mirrored image.
COCO_PERSON_KEYPOINTS = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
COCO_PERSON_FLIP_MAP = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
# Config fields a preset's **kwargs may override as whole sections.
_SECTIONS = {f.name for f in dataclasses.fields(Config)} - {"num_classes"}


def torchvision_keypoint_r50_fpn(
    num_classes: int = 2,
    num_keypoints: int = 17,
    image_size: int = 1024,
    **kwargs: Any,
) -> Config:
    """torchvision `keypointrcnn_resnet50_fpn`: `torchvision_r50_fpn`'s backbone, RPN, box head
    and inference settings (same keyword names, e.g. `box_score_thresh`), no mask head, and a
    keypoint head of 8 x 512 convs on 14 x 14 RoIAlign (aligned=False) -> 56 x 56 heatmaps.

    With 17 keypoints they are COCO's person keypoints (names and left/right flip map).
    `kwargs` are `torchvision_r50_fpn`'s keywords and further `Config` sections as dicts.
    """
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in _SECTIONS}
    coco = num_keypoints == len(COCO_PERSON_KEYPOINTS)
    keypoints = {
        "count": num_keypoints,
        "names": list(COCO_PERSON_KEYPOINTS) if coco else [],
        "flip_map": list(COCO_PERSON_FLIP_MAP) if coco else [],
        "pool_size": 14,
        "head_channels": 512,
        "head_convs": 8,
    }
    cfg = torchvision_r50_fpn(num_classes, image_size, **kwargs)
    cfg = cfg.replace(roi_heads={"masks": False}, keypoints=keypoints)
    return cfg.replace(**overrides) if overrides else cfg


PRESETS = {
    "torchvision_r50_fpn": torchvision_r50_fpn,
    "torchvision_keypoint_r50_fpn": torchvision_keypoint_r50_fpn,
    "shapes_small": shapes_small,
}


def get(name: str, **kwargs: Any) -> Config:
    """Preset by name (as written in params.yaml)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name](**kwargs)
