"""Mask R-CNN: composition, `build_model(cfg)` and `detect(images)`.

    images uint8 [B, 3, S, S] --normalise--> backbone (ResNet + FPN) -> P2..P6
      -> RPN (head, anchors, proposal layer)         -> proposals [B, R, 4]
      -> RoI heads: training   detection targets -> box + mask (+ MaskIoU, keypoint) heads
                                                                                    -> losses
                    inference  box head -> detection layer -> mask (+ MaskIoU, keypoint) heads
                                                                              -> RawDetections
`detect` wraps inference for users: any-size uint8 images in, `Detections` in original pixels out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.profiler import record_function

from mrcnn.config import Config
from mrcnn.data.resize import prepare_images
from mrcnn.inference.detection_layer import DetectionLayer
from mrcnn.inference.detections import Detections
from mrcnn.inference.images import check_images
from mrcnn.inference.postprocess import to_detections
from mrcnn.layers.matcher import Sampler
from mrcnn.layers.poolers import Pooler
from mrcnn.modeling.anchors import AnchorGenerator
from mrcnn.modeling.backbone import FPNBackbone
from mrcnn.modeling.losses import total_loss
from mrcnn.modeling.roi_heads.box_head import BoxHead
from mrcnn.modeling.roi_heads.heads import RoIHeads
from mrcnn.modeling.roi_heads.keypoint_head import KeypointHead
from mrcnn.modeling.roi_heads.mask_head import MaskHead
from mrcnn.modeling.roi_heads.mask_iou_head import MaskIoUHead
from mrcnn.modeling.rpn import RegionProposalNetwork, RPNHead
from mrcnn.structures import Batch, InferenceSteps, RawDetections


class MaskRCNN(nn.Module):
    """Mask R-CNN: backbone (ResNet + FPN) -> RPN -> RoI heads (box + class-specific mask).

    Build it with `build_model(cfg)`; the constructor takes the parts already wired.

    Shape shorthand: B images, S the padded input side (`image_size`), G ground-truth slots,
    m mini-mask side, K classes incl. background (`num_classes`), D detections per image,
    M = 28 mask side, H x W an original image, N the detections of one image.

    `forward(batch: Batch)` takes a fixed-shape batch (as `mrcnn.data.collate` builds it):
        images          uint8   [B, 3, S, S] resized and zero-padded, RGB
        windows         float32 [B, 4] (y1, x1, y2, x2) of the real image in the padded frame
        scales          float32 [B] resize factor original -> padded frame
        original_sizes  int64   [B, 2] (h, w)
        image_ids       int64   [B]
      and in training mode also the ground truth:
        gt_boxes        float32 [B, G, 4] xyxy in the padded frame
        gt_labels       int64   [B, G] 1..K-1 (0 in empty slots)
        gt_mini_masks   uint8   [B, G, m, m] each instance's mask inside its box
        gt_valid        bool    [B, G]
        gt_keypoints    float32 [B, G, Kp, 3] (x, y, visibility) (keypoint models only)
    Training mode returns a dict of scalar losses, `loss_rpn_objectness`, `loss_rpn_box`,
    `loss_classifier`, `loss_box`, `loss_mask` (+ `loss_keypoint` with `model.keypoints`,
    `loss_mask_iou` with `model.mask_scoring`; unweighted: `total_loss` weights and sums
    them). Eval mode returns `RawDetections` in the padded frame, D = detections_per_img slots:
        boxes float32 [B, D, 4] xyxy, scores float32 [B, D], labels int64 [B, D],
        valid bool [B, D], mask_probs float32 [B, D, M, M] (the label's mask, after sigmoid),
        keypoints float32 [B, D, Kp, 3] / mask_scores float32 [B, D] with those heads.
    A batch whose images are not S x S raises `ValueError`.

    `detect(images)` is the user's entry point: uint8 numpy `H x W x 3` RGB images of any
    size -> one `Detections` per image, in that image's pixels: boxes float32 [N, 4] xyxy,
    scores float32 [N], labels int64 [N] (1..K-1), masks bool [N, H, W] (+ keypoints float32
    [N, Kp, 3] (x, y, score) and mask_scores float32 [N] with those heads). It is
    `prepare` (resize + pad into a `Batch`) -> `predict` (eval-mode forward, the mode restored
    after) -> `postprocess` (boxes to original pixels, masks pasted and thresholded at
    `mask_thresh`).

    Example:
        >>> import numpy as np, mrcnn
        >>> model = mrcnn.build_model(mrcnn.presets.shapes_small(num_classes=4))
        >>> [det] = model.detect([np.zeros((240, 320, 3), np.uint8)])
        >>> det.boxes.shape[1], det.masks.shape[1:]
        (4, (240, 320))
        >>> # training: batch = mrcnn.data.collate(samples, max_gt=32)
        >>> # loss = model.total_loss(model.train()(batch)); loss.backward()

    Args:
        backbone: `FPNBackbone`, images -> P2..P6.
        rpn: `RegionProposalNetwork`, features -> proposals (+ RPN losses in training).
        roi_heads: `RoIHeads`, proposals -> losses or `RawDetections`.
        num_classes: K, including background (class 0).
        image_size: S; batches must be S x S (`shards.image_size` must match).
        resize_mode: how `detect` resizes images (as the shards were made, `mrcnn.data.resize`).
        min_size: the shorter-side target of the `short_side` resize mode (`resize_and_pad`).
        pixel_mean: per-channel RGB mean on the 0..1 scale, subtracted in `normalize`.
        pixel_std: per-channel RGB std on the 0..1 scale, divided in `normalize`.
        mask_thresh: mask probability at or above which a pasted pixel is in the mask (0.5).
        loss_weights: `LossConfig` field -> weight, applied once in `total_loss`.
        class_names: optional names of classes 0..K-1 (for pictures and exports).
    """

    def __init__(
        self,
        *,
        backbone: FPNBackbone,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        num_classes: int,
        image_size: int,
        resize_mode: str,
        min_size: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        mask_thresh: float,
        loss_weights: dict[str, float],
        class_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = num_classes
        self.image_size = image_size
        self.resize_mode = resize_mode
        self.min_size = min_size
        self.mask_thresh = mask_thresh
        self.loss_weights = dict(loss_weights)
        self.class_names = tuple(class_names)
        self.channels_last = False
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), False)
        self.cfg: Config | None = None  # set by build_model; saved with the weights

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def use_channels_last(self) -> MaskRCNN:
        """NHWC convolutions: faster with tensor cores / bf16, and on CPU (oneDNN: eager
        inference 1.2-1.4x NCHW, docs/benchmarks.md), where `mrcnn.weights.load` picks it."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def compile_static(self, **compile_kwargs) -> MaskRCNN:
        """`torch.compile` the fixed-shape parts: backbone, RPN head, box head, mask head.

        Their input shapes never change for a given image size, batch size and RoI count (the
        point of fixed-shape batches), so each compiles once and can use CUDA graphs
        (`mode="reduce-overhead"` / `"max-autotune"`). The data-dependent steps between them
        (NMS, sampling) stay eager.
        """
        compile_kwargs.setdefault("dynamic", False)
        self.roi_heads.bucket_rois = True  # a few mask-head shapes, not one per RoI count
        for module in (
            self.backbone,
            self.rpn.head,
            self.roi_heads.box_head,
            self.roi_heads.mask_head,
            self.roi_heads.keypoint_head,
            self.roi_heads.mask_iou_head,
        ):
            if module is not None:
                module.compile(**compile_kwargs)
        if self.roi_heads.mask_head is not None:  # inference calls this method, not forward
            head = self.roi_heads.mask_head
            head.label_probs = torch.compile(head.label_probs, **compile_kwargs)
        return self

    def normalize(self, images: Tensor, windows: Tensor) -> Tensor:
        """uint8 [B, 3, S, S] -> float, ImageNet-normalised, exactly zero outside each window."""
        x = (images.float() / 255 - self.pixel_mean) / self.pixel_std
        s = images.shape[-1]
        ar = torch.arange(s, device=images.device, dtype=windows.dtype)
        rows = (ar >= windows[:, 0:1]) & (ar < windows[:, 2:3])  # [B, S]
        cols = (ar >= windows[:, 1:2]) & (ar < windows[:, 3:4])
        x = x * (rows[:, None, :, None] & cols[:, None, None, :])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _check_size(self, batch: Batch) -> int:
        s = batch.images.shape[-1]
        if s != self.image_size or batch.images.shape[-2] != s:
            raise ValueError(
                f"batch images are {tuple(batch.images.shape[-2:])}, the model expects "
                f"{self.image_size} x {self.image_size} (shards.image_size must match the model)"
            )
        return s

    def forward(self, batch: Batch) -> dict[str, Tensor] | RawDetections:
        s = self._check_size(batch)
        with record_function("mrcnn.modeling.backbone"):
            features = self.backbone(self.normalize(batch.images, batch.windows))
        proposals, valid, rpn_losses = self.rpn(
            features, batch.windows, s, batch.gt_boxes, batch.gt_valid
        )
        if not self.training:
            return self.roi_heads.detect(features, s, proposals, valid, batch.windows)
        return {**rpn_losses, **self.roi_heads.losses(features, s, proposals, valid, batch)}

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """The weighted sum L = Lcls + Lbox + Lmask + RPN terms (weights from the config)."""
        return total_loss(losses, self.loss_weights)

    @torch.no_grad()
    def predict(self, batch: Batch) -> RawDetections:
        """Inference on a prepared batch (eval mode for the call, then restored).

        batch: a `Batch` without ground truth (as `prepare` builds) -> `RawDetections`
        [B, D, ...] in the padded frame (see the class docstring).
        """
        was_training = self.training
        self.eval()
        try:
            return self(batch)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def inference_steps(self, batch: Batch) -> InferenceSteps:
        """Inference on a prepared batch, stage by stage, keeping each stage's output
        (`InferenceSteps`: anchors, RPN objectness and deltas, proposals, the detection layer's
        candidates before NMS, the detections after it). The same modules and functions as
        `forward` (RPN head, anchor generator, proposal layer, box head, detection layer, mask
        head), called one at a time; `.detections` equals `predict(batch)`. For pictures
        (`mrcnn.visualize.steps`): it runs the box head twice.
        """
        s = self._check_size(batch)
        was_training = self.training
        self.eval()
        try:
            features = self.backbone(self.normalize(batch.images, batch.windows))
            objectness, rpn_deltas = self.rpn.head(features)
            anchors, counts = self.rpn.anchor_generator(s, objectness.device)
            proposals, proposal_scores, valid = self.rpn.proposal_layer(
                objectness, rpn_deltas, anchors, counts, batch.windows
            )
            heads = self.roi_heads
            b, r = proposals.shape[:2]
            class_logits, box_deltas = heads.box_predictions(features, s, proposals)
            boxes, scores, labels, ok = heads.detection_layer.candidates(
                class_logits.reshape(b, r, -1),
                box_deltas.reshape(b, r, -1),
                proposals,
                valid,
                batch.windows,
                box_weights=heads.box_weights,
            )
            detections = heads.detect(features, s, proposals, valid, batch.windows)
        finally:
            self.train(was_training)
        return InferenceSteps(
            anchors=anchors,
            anchors_per_level=list(counts),
            objectness=objectness,
            rpn_deltas=rpn_deltas,
            proposals=proposals,
            proposal_scores=proposal_scores,
            proposal_valid=valid,
            candidate_boxes=boxes,
            candidate_scores=scores,
            candidate_labels=labels,
            candidate_ok=ok,
            detections=detections,
        )

    def postprocess(
        self, raw: RawDetections, batch: Batch, *, grid_masks: bool = False
    ) -> list[Detections]:
        """Fixed-shape detections -> one `Detections` per image in original-image pixels: the
        exported model's post-processing too (`mrcnn.inference.postprocess.to_detections`, on
        the host, at this model's `mask_thresh`)."""
        host = raw.numpy()
        return to_detections(
            host["boxes"],
            host["scores"],
            host["labels"],
            host["valid"],
            host["mask_probs"],
            batch.windows.cpu().numpy(),
            batch.scales.cpu().numpy(),
            batch.original_sizes.cpu().numpy(),
            self.mask_thresh,
            keypoints=host["keypoints"],
            mask_scores=host["mask_scores"],
            grid_masks=grid_masks,
        )

    @torch.no_grad()
    def detect(self, images: Sequence[np.ndarray], batch_size: int = 4) -> list[Detections]:
        """Detect objects in uint8 `H x W x 3` RGB images of any size.

        Each image is resized and padded as the shards are (`resize_mode`, `image_size`), run in
        batches of `batch_size`, and its detections are mapped back to its own pixels:
        -> one `Detections` per image (boxes float32 [N, 4], scores [N], labels int64 [N],
        masks bool [N, H, W]). Bad input (not a list, wrong dtype, rank, channels, empty)
        raises `ValueError` saying what was expected.
        """
        images = check_images(images)
        results: list[Detections] = []
        for start in range(0, len(images), batch_size):
            batch = self.prepare(images[start : start + batch_size])
            results += self.postprocess(self.predict(batch), batch)
        return results

    def prepare(self, images: Sequence[np.ndarray]) -> Batch:
        """Resize + pad images into a `Batch` on the model's device (no ground truth), as the
        shards were made (`mrcnn.data.resize.prepare_images`)."""
        pixels, windows, scales = prepare_images(
            images, self.image_size, self.resize_mode, self.min_size
        )
        dev = self.device
        return Batch(
            images=torch.from_numpy(pixels).to(dev),
            windows=torch.from_numpy(windows).to(dev),
            scales=torch.from_numpy(scales).to(dev),
            original_sizes=torch.tensor([im.shape[:2] for im in images], device=dev),
            image_ids=torch.arange(len(images), device=dev),
        )


def build_model(cfg: Config) -> MaskRCNN:
    """Wire a MaskRCNN from its config: the one place the config is read."""
    b, a, r, h, i = cfg.backbone, cfg.anchors, cfg.rpn, cfg.roi_heads, cfg.inference
    backbone = FPNBackbone(
        arch=b.arch,
        norm=b.norm,
        trainable_stages=b.trainable_stages,
        fpn_channels=b.fpn_channels,
        width_multiplier=b.width_multiplier,
    )
    c = backbone.out_channels
    rpn = RegionProposalNetwork(
        head=RPNHead(c, len(a.ratios), a.stride),
        anchor_generator=AnchorGenerator(a.sizes, a.ratios, a.stride),
        pre_nms_top_n=(r.pre_nms_top_n_train, r.pre_nms_top_n_test),
        post_nms_top_n=(r.post_nms_top_n_train, r.post_nms_top_n_test),
        nms_thresh=r.nms_thresh,
        min_size=r.min_size,
        score_thresh=r.score_thresh,
        sampler=Sampler(
            r.fg_iou_thresh, r.bg_iou_thresh, r.batch_size_per_image, r.positive_fraction
        ),
    )
    kp = cfg.keypoints

    def pooler(size: int) -> Pooler:
        return Pooler(
            size,
            sampling_ratio=h.sampling_ratio,
            aligned=h.aligned,
            canonical_scale=h.canonical_scale,
            canonical_level=h.canonical_level,
        )

    roi_heads = RoIHeads(
        box_head=BoxHead(c, h.box_pool_size, h.box_head_dim, cfg.num_classes),
        box_pooler=pooler(h.box_pool_size),
        box_weights=h.box_weights,
        sampler=Sampler(
            h.fg_iou_thresh, h.bg_iou_thresh, h.batch_size_per_image, h.positive_fraction
        ),
        detection_layer=DetectionLayer(i.score_thresh, i.nms_thresh, i.detections_per_img),
        mask_head=(
            MaskHead(c, h.mask_head_channels, h.mask_head_convs, cfg.num_classes)
            if h.masks
            else None
        ),
        mask_pooler=pooler(h.mask_pool_size) if h.masks else None,
        keypoint_head=(
            KeypointHead(c, kp.head_channels, kp.head_convs, kp.count) if kp.count else None
        ),
        keypoint_pooler=pooler(kp.pool_size) if kp.count else None,
        mask_iou_head=(
            MaskIoUHead(
                c, h.mask_pool_size, h.mask_iou_head_channels, h.mask_iou_head_dim, cfg.num_classes
            )
            if cfg.mask_scoring
            else None
        ),
    )
    model = MaskRCNN(
        backbone=backbone,
        rpn=rpn,
        roi_heads=roi_heads,
        num_classes=cfg.num_classes,
        image_size=cfg.input.image_size,
        resize_mode=cfg.input.resize_mode,
        min_size=cfg.input.min_size,
        pixel_mean=cfg.input.pixel_mean,
        pixel_std=cfg.input.pixel_std,
        mask_thresh=i.mask_thresh,
        loss_weights=cfg.to_dict()["loss"],
        class_names=cfg.class_names,
    )
    model.cfg = cfg
    return model
