"""Presets against the reference they name: torchvision's Mask R-CNN and Keypoint R-CNN as
torchvision itself builds them (its constructor defaults and the built modules), the COCO
person keypoints' flip map against their names, and the shapes_small overrides."""

from __future__ import annotations

import inspect

import pytest
import torch
from torchvision.models.detection import (
    FasterRCNN,
    keypointrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
)

from mrcnn import presets

# Our config field for each torchvision keyword (FasterRCNN.__init__), read off a Config.
FIELDS = {
    "rpn_pre_nms_top_n_train": lambda c: c.rpn.pre_nms_top_n_train,
    "rpn_pre_nms_top_n_test": lambda c: c.rpn.pre_nms_top_n_test,
    "rpn_post_nms_top_n_train": lambda c: c.rpn.post_nms_top_n_train,
    "rpn_post_nms_top_n_test": lambda c: c.rpn.post_nms_top_n_test,
    "rpn_nms_thresh": lambda c: c.rpn.nms_thresh,
    "rpn_fg_iou_thresh": lambda c: c.rpn.fg_iou_thresh,
    "rpn_bg_iou_thresh": lambda c: c.rpn.bg_iou_thresh,
    "rpn_batch_size_per_image": lambda c: c.rpn.batch_size_per_image,
    "rpn_positive_fraction": lambda c: c.rpn.positive_fraction,
    "rpn_score_thresh": lambda c: c.rpn.score_thresh,
    "box_score_thresh": lambda c: c.inference.score_thresh,
    "box_nms_thresh": lambda c: c.inference.nms_thresh,
    "box_detections_per_img": lambda c: c.inference.detections_per_img,
    "box_fg_iou_thresh": lambda c: c.roi_heads.fg_iou_thresh,
    "box_bg_iou_thresh": lambda c: c.roi_heads.bg_iou_thresh,
    "box_batch_size_per_image": lambda c: c.roi_heads.batch_size_per_image,
    "box_positive_fraction": lambda c: c.roi_heads.positive_fraction,
    "min_size": lambda c: c.input.min_size,
}


def _torchvision_defaults() -> dict:
    sig = inspect.signature(FasterRCNN.__init__)
    return {k: sig.parameters[k].default for k in FIELDS}


@pytest.mark.parametrize(
    "preset", [presets.torchvision_r50_fpn, presets.torchvision_keypoint_r50_fpn]
)
def test_defaults_are_torchvisions(preset):
    cfg = preset()
    assert {k: get(cfg) for k, get in FIELDS.items()} == _torchvision_defaults()
    assert cfg.roi_heads.box_weights == (10.0, 10.0, 5.0, 5.0)  # torchvision's when None
    assert cfg.input.pixel_mean == (0.485, 0.456, 0.406)
    assert cfg.input.pixel_std == (0.229, 0.224, 0.225)
    assert cfg.backbone.trainable_stages == 3 and cfg.backbone.norm == "frozen_bn"


def test_every_torchvision_keyword_is_taken_under_its_name():
    """Each keyword the preset mirrors lands in its field (values unlike any default)."""
    mirrored = [k for k in inspect.signature(presets.torchvision_r50_fpn).parameters if k in FIELDS]
    values = {
        "box_score_thresh": 0.07,
        "box_nms_thresh": 0.42,
        "box_detections_per_img": 17,
        "rpn_pre_nms_top_n_test": 11,
        "rpn_post_nms_top_n_test": 12,
        "rpn_nms_thresh": 0.61,
        "rpn_pre_nms_top_n_train": 13,
        "rpn_post_nms_top_n_train": 14,
        "box_batch_size_per_image": 18,
    }
    assert sorted(mirrored) == sorted(values)
    cfg = presets.torchvision_r50_fpn(**values)
    assert {k: FIELDS[k](cfg) for k in mirrored} == values
    kp = presets.torchvision_keypoint_r50_fpn(**values)
    assert {k: FIELDS[k](kp) for k in mirrored} == values


def test_modules_match_torchvisions_mask_rcnn():
    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    cfg = presets.torchvision_r50_fpn()
    assert cfg.num_classes == 91
    assert tuple(s for (s,) in tv.rpn.anchor_generator.sizes) == cfg.anchors.sizes
    assert all(tuple(r) == cfg.anchors.ratios for r in tv.rpn.anchor_generator.aspect_ratios)
    box_pool, mask_pool = tv.roi_heads.box_roi_pool, tv.roi_heads.mask_roi_pool
    assert (box_pool.output_size, mask_pool.output_size) == ((7, 7), (14, 14))
    assert (cfg.roi_heads.box_pool_size, cfg.roi_heads.mask_pool_size) == (7, 14)
    assert box_pool.sampling_ratio == cfg.roi_heads.sampling_ratio == 2
    assert not cfg.roi_heads.aligned  # MultiScaleRoIAlign: aligned=False
    assert tv.roi_heads.box_head.fc6.out_features == cfg.roi_heads.box_head_dim == 1024
    convs = [m for m in tv.roi_heads.mask_head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == cfg.roi_heads.mask_head_convs == 4
    assert {c.out_channels for c in convs} == {cfg.roi_heads.mask_head_channels} == {256}
    assert tv.backbone.out_channels == cfg.backbone.fpn_channels == 256


def test_keypoint_preset_matches_torchvisions_keypoint_rcnn():
    torch.manual_seed(0)
    tv = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_keypoints=17)
    cfg = presets.torchvision_keypoint_r50_fpn()
    assert cfg.num_classes == 2 and not cfg.roi_heads.masks and tv.roi_heads.mask_head is None
    assert tv.roi_heads.keypoint_roi_pool.output_size == (14, 14) == (cfg.keypoints.pool_size,) * 2
    convs = [m for m in tv.roi_heads.keypoint_head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert (len(convs), convs[0].out_channels) == (8, 512)
    assert (cfg.keypoints.head_convs, cfg.keypoints.head_channels, cfg.keypoints.count) == (
        8,
        512,
        17,
    )


def test_coco_flip_map_swaps_left_and_right_by_name():
    names = presets.COCO_PERSON_KEYPOINTS
    cfg = presets.torchvision_keypoint_r50_fpn()
    assert cfg.keypoints.names == names and cfg.keypoints.flip_map == presets.COCO_PERSON_FLIP_MAP
    for k, j in enumerate(presets.COCO_PERSON_FLIP_MAP):
        swapped = names[k].replace("left", "R").replace("right", "left").replace("R", "right")
        assert names[j] == swapped, (names[k], names[j])
    other = presets.torchvision_keypoint_r50_fpn(num_classes=3, num_keypoints=5)
    assert other.keypoints.count == 5 and other.keypoints.names == () == other.keypoints.flip_map


def test_keypoint_preset_routes_sections_and_torchvision_keywords():
    cfg = presets.torchvision_keypoint_r50_fpn(
        image_size=512, box_score_thresh=0.3, loss={"mask": 0.0}, keypoints={"head_convs": 2}
    )
    assert cfg.input.image_size == 512 and cfg.inference.score_thresh == 0.3
    assert cfg.loss.mask == 0.0
    assert cfg.keypoints.head_convs == 2 and cfg.keypoints.count == 17  # merged, not replaced


def test_shapes_small_and_get():
    cfg = presets.shapes_small(num_classes=3, image_size=64)
    assert (cfg.num_classes, cfg.input.image_size) == (3, 64)
    assert cfg.backbone.arch == "resnet18" and cfg.anchors.sizes == (8.0, 16.0, 32.0, 64.0, 128.0)
    assert presets.get("shapes_small", num_classes=3, image_size=64) == cfg
    assert presets.get("torchvision_r50_fpn") == presets.torchvision_r50_fpn()
    with pytest.raises(ValueError, match="known: torchvision_r50_fpn"):
        presets.get("nope")
