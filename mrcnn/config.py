"""Typed, validated model configuration.

`Config` is a tree of dataclasses. It is read in exactly one place,
`mrcnn.modeling.model.build_model`, which wires the modules with explicit keyword arguments; no
module below it sees a `Config`.

`Config.from_dict(d)` accepts a (possibly partial) nested dict, e.g. the `model:` section of
`params.yaml`, and raises `ValueError` naming the dotted key for anything unknown or invalid:

    >>> Config.from_dict({"rpn": {"nms_thresh": 0.6}}).rpn.nms_thresh
    0.6
    >>> Config.from_dict({"rpn": {"nms_tresh": 0.6}})
    Traceback (most recent call last):
    ValueError: unknown config key 'rpn.nms_tresh' (known: ...)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mrcnn.mapping import check as _check
from mrcnn.mapping import from_mapping, merge, to_plain

BACKBONE_ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "resnext101_32x8d",
)
NORMS = ("frozen_bn", "bn", "gn")
RESIZE_MODES = ("square", "pad64", "short_side")


@dataclass
class BackboneConfig:
    """ResNet / ResNeXt body + FPN (P2..P6)."""

    arch: str = "resnet50"
    # frozen_bn: fine-tuning from ImageNet/COCO weights; bn or gn: training from scratch.
    norm: str = "frozen_bn"
    # How many of (layer4, layer3, layer2, layer1, conv1) are trained, counted from the top.
    trainable_stages: int = 3
    fpn_channels: int = 256
    # Multiplies every ResNet width (1.0 = torchvision's). Lets the CPU preset use a slim body.
    width_multiplier: float = 1.0

    def validate(self) -> None:
        _check(self.arch in BACKBONE_ARCHS, "arch", f"must be one of {BACKBONE_ARCHS}")
        _check(self.norm in NORMS, "norm", f"must be one of {NORMS}")
        _check(0 <= self.trainable_stages <= 5, "trainable_stages", "must be in 0..5")
        _check(self.fpn_channels > 0, "fpn_channels", "must be > 0")
        _check(0 < self.width_multiplier <= 4, "width_multiplier", "must be in (0, 4]")


@dataclass
class AnchorConfig:
    """One anchor size per pyramid level P2..P6, each with every ratio (height / width)."""

    sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # Place anchors on every `stride`-th feature cell (matterport's RPN_ANCHOR_STRIDE).
    stride: int = 1

    def validate(self) -> None:
        _check(len(self.sizes) == 5, "sizes", "needs one size per level P2..P6 (5 values)")
        _check(all(s > 0 for s in self.sizes), "sizes", "must be > 0")
        _check(len(self.ratios) > 0 and all(r > 0 for r in self.ratios), "ratios", "must be > 0")
        _check(self.stride >= 1, "stride", "must be >= 1")


@dataclass
class RPNConfig:
    """Region proposal network: head, targets and proposal layer (FPN paper: 2000 / 1000)."""

    pre_nms_top_n_train: int = 2000  # per level
    pre_nms_top_n_test: int = 1000  # per level
    post_nms_top_n_train: int = 2000  # per image
    post_nms_top_n_test: int = 1000  # per image
    nms_thresh: float = 0.7
    score_thresh: float = 0.0
    min_size: float = 1e-3
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5

    def validate(self) -> None:
        for name in ("pre_nms_top_n_train", "pre_nms_top_n_test"):
            _check(getattr(self, name) > 0, name, "must be > 0")
        for name in ("post_nms_top_n_train", "post_nms_top_n_test", "batch_size_per_image"):
            _check(getattr(self, name) > 0, name, "must be > 0")
        _check(0 < self.nms_thresh <= 1, "nms_thresh", "must be in (0, 1]")
        _check(
            0 <= self.bg_iou_thresh <= self.fg_iou_thresh <= 1,
            "fg_iou_thresh",
            "needs 0 <= bg_iou_thresh <= fg_iou_thresh <= 1",
        )
        _check(0 < self.positive_fraction <= 1, "positive_fraction", "must be in (0, 1]")


@dataclass
class RoIHeadsConfig:
    """Detection targets, multi-level RoIAlign, box head and class-specific mask head."""

    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_pool_size: int = 7
    mask_pool_size: int = 14
    sampling_ratio: int = 2
    # torchvision's MultiScaleRoIAlign uses aligned=False; detectron2's ROIAlignV2 uses True.
    aligned: bool = False
    canonical_scale: int = 224
    canonical_level: int = 4
    box_head_dim: int = 1024
    mask_head_channels: int = 256
    mask_head_convs: int = 4
    # False: no mask head (a box + keypoint model, such as torchvision's Keypoint R-CNN).
    masks: bool = True
    # MaskIoU head (used when `mask_scoring` is on): conv width and FC width.
    mask_iou_head_channels: int = 256
    mask_iou_head_dim: int = 1024

    @property
    def mask_size(self) -> int:
        """Mask head output (and mask target) side: the pooled size doubled by the deconv."""
        return 2 * self.mask_pool_size

    def validate(self) -> None:
        _check(self.batch_size_per_image > 0, "batch_size_per_image", "must be > 0")
        _check(0 < self.positive_fraction <= 1, "positive_fraction", "must be in (0, 1]")
        _check(
            0 <= self.bg_iou_thresh <= self.fg_iou_thresh <= 1,
            "fg_iou_thresh",
            "needs 0 <= bg_iou_thresh <= fg_iou_thresh <= 1",
        )
        _check(
            len(self.box_weights) == 4 and all(w > 0 for w in self.box_weights),
            "box_weights",
            "needs 4 positive values",
        )
        for name in (
            "box_pool_size",
            "mask_pool_size",
            "box_head_dim",
            "mask_head_channels",
            "mask_iou_head_channels",
            "mask_iou_head_dim",
        ):
            _check(getattr(self, name) > 0, name, "must be > 0")
        _check(self.sampling_ratio >= 0, "sampling_ratio", "must be >= 0")
        _check(self.mask_head_convs >= 0, "mask_head_convs", "must be >= 0")


@dataclass
class KeypointConfig:
    """Keypoint head (Mask R-CNN sec. 5). `count` 0 = no keypoint head."""

    count: int = 0
    # Keypoint names, by index (optional; pictures and COCO categories use them).
    names: tuple[str, ...] = ()
    # flip_map[k]: the index keypoint k takes in a horizontally flipped image (left <-> right);
    # empty = every keypoint keeps its index.
    flip_map: tuple[int, ...] = ()
    # RoIAlign output side; the heatmaps are 4x that (14 -> 56, the paper's m).
    pool_size: int = 14
    head_channels: int = 512
    head_convs: int = 8

    @property
    def heatmap_size(self) -> int:
        """Heatmap (and target) side m: the pooled side x 2 (deconv) x 2 (bilinear)."""
        return 4 * self.pool_size

    def validate(self) -> None:
        _check(self.count >= 0, "count", "must be >= 0")
        _check(
            not self.names or len(self.names) == self.count,
            "names",
            f"needs {self.count} names (one per keypoint) or none",
        )
        _check(
            not self.flip_map or sorted(self.flip_map) == list(range(self.count)),
            "flip_map",
            f"must be a permutation of 0..{self.count - 1} (or empty for no swaps)",
        )
        _check(
            all(self.flip_map[self.flip_map[k]] == k for k in range(len(self.flip_map))),
            "flip_map",
            "must be its own inverse (flipping twice gives the keypoints back)",
        )
        for name in ("pool_size", "head_channels"):
            _check(getattr(self, name) > 0, name, "must be > 0")
        _check(self.head_convs >= 0, "head_convs", "must be >= 0")


@dataclass
class InferenceConfig:
    """Detection layer: per-class NMS, top-k, mask threshold."""

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    mask_thresh: float = 0.5

    def validate(self) -> None:
        _check(0 <= self.score_thresh < 1, "score_thresh", "must be in [0, 1)")
        _check(0 < self.nms_thresh <= 1, "nms_thresh", "must be in (0, 1]")
        _check(self.detections_per_img > 0, "detections_per_img", "must be > 0")
        _check(0 < self.mask_thresh < 1, "mask_thresh", "must be in (0, 1)")


@dataclass
class InputConfig:
    """How `detect` turns a user's image into the fixed-shape model input (as the shards do)."""

    image_size: int = 1024
    resize_mode: str = "square"
    # short_side mode: the shorter side goes to min_size unless the longer would pass image_size.
    min_size: int = 800
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def validate(self) -> None:
        _check(
            self.image_size >= 32 and self.image_size % 32 == 0,
            "image_size",
            "must be a multiple of 32 (the FPN's coarsest stride), >= 32",
        )
        _check(self.resize_mode in RESIZE_MODES, "resize_mode", f"must be one of {RESIZE_MODES}")
        _check(self.min_size > 0, "min_size", "must be > 0")
        _check(len(self.pixel_mean) == 3, "pixel_mean", "needs 3 values")
        _check(
            len(self.pixel_std) == 3 and all(s > 0 for s in self.pixel_std),
            "pixel_std",
            "needs 3 positive values",
        )


@dataclass
class LossConfig:
    """Loss weights, applied in one place (`mrcnn.modeling.losses.total_loss`)."""

    rpn_objectness: float = 1.0
    rpn_box: float = 1.0
    classifier: float = 1.0
    box: float = 1.0
    mask: float = 1.0
    keypoint: float = 1.0
    mask_iou: float = 1.0

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            _check(getattr(self, f.name) >= 0, f.name, "must be >= 0")


@dataclass
class Config:
    """The whole model. `num_classes` counts the background class (COCO: 91 = 90 + 1)."""

    num_classes: int = 91
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    input: InputConfig = field(default_factory=InputConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    # Mask Scoring R-CNN: a MaskIoU head whose predicted IoU x class score scores each mask.
    mask_scoring: bool = False
    # Class names by model label (index 0 = background); optional, used for pictures.
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check(self.num_classes >= 2, "num_classes", "must be >= 2 (background + 1 class)")
        names_ok = not self.class_names or len(self.class_names) == self.num_classes
        _check(
            names_ok,
            "class_names",
            f"needs {self.num_classes} names (index 0 = background) or none",
        )
        _check(
            not self.mask_scoring or self.roi_heads.masks,
            "mask_scoring",
            "needs the mask head (roi_heads.masks: true)",
        )
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                try:
                    section.validate()
                except ValueError as e:
                    raise ValueError(
                        f"config key '{f.name}.{str(e)[len('config key ') + 1 :]}"
                    ) from None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Build from a (partial) nested dict; missing keys keep their defaults."""
        return from_mapping(cls, d)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists for tuples), the inverse of `from_dict`; YAML/JSON-safe."""
        return to_plain(dataclasses.asdict(self))

    def replace(self, **changes: Any) -> Config:
        """A validated copy with `changes` merged in; a section given as a dict only changes
        the keys it names (`cfg.replace(rpn={"nms_thresh": 0.6})` keeps the other RPN keys)."""
        return Config.from_dict(merge(self.to_dict(), to_plain(changes)))
