"""Named configurations.

- `torchvision_r50_fpn`: the architecture and inference settings of torchvision's
  `maskrcnn_resnet50_fpn` (v1), so its checkpoints load through `mrcnn.weights.load_torchvision`
  and give the same detections. Keyword names follow torchvision's for the settings it mirrors.
- `shapes_small`: a slim ResNet-18 FPN at 128 px that trains from scratch on a CPU in minutes.
"""

from __future__ import annotations

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


PRESETS = {"torchvision_r50_fpn": torchvision_r50_fpn, "shapes_small": shapes_small}


def get(name: str, **kwargs: Any) -> Config:
    """Preset by name (as written in params.yaml)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name](**kwargs)
