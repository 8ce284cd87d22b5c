"""Box head and class-specific mask head (Mask R-CNN sec. 3, fig. 4 right: the FPN heads).

Shape shorthand: N RoIs (all images, image-major), C feature channels, K classes incl.
background, M = 28 mask side.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from mrcnn.detection_layer import detection_layer, select_class_masks
from mrcnn.losses import box_losses, mask_loss
from mrcnn.poolers import multilevel_roi_align, roi_align_levels, rois_with_image_index
from mrcnn.structures import Batch, RawDetections
from mrcnn.targets import detection_targets


class BoxHead(nn.Module):
    """Two 1024-d FC layers ("2fc") then class scores and class-specific box deltas.

    forward: pooled [N, C, P, P] -> class logits [N, K], deltas [N, K * 4] (class-major).

    Args:
        in_channels: C, the FPN's channels.
        pool_size: P, the RoIAlign output side (7).
        hidden: width of both FC layers (1024 in the paper).
        num_classes: K, including background.
    """

    def __init__(self, in_channels: int, pool_size: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels * pool_size * pool_size, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.cls_score = nn.Linear(hidden, num_classes)
        self.bbox_pred = nn.Linear(hidden, num_classes * 4)
        # Small initial predictions (as Detectron): training from scratch starts stable.
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.fc7(self.fc6(x.flatten(1)).relu_()).relu_()  # in place: one buffer less
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """n x (3x3 conv + ReLU), 2x2 deconv (stride 2) + ReLU, 1x1 conv to one mask per class.

    forward: pooled [N, C, 14, 14] -> mask logits [N, K, 28, 28]. Predicting K masks and
    training only the gt class's one decouples masks from classes (sec. 3, "Mask Representation").

    Args:
        in_channels: C, the FPN's channels.
        channels: width of the convs and the deconv (256 in the paper).
        num_convs: n, the 3x3 convs before the deconv (4 in the paper, fig. 4 right).
        num_classes: K, including background: one mask per class.
    """

    def __init__(self, in_channels: int, channels: int, num_convs: int, num_classes: int) -> None:
        super().__init__()
        convs, c = [], in_channels
        for _ in range(num_convs):
            convs.append(nn.Conv2d(c, channels, kernel_size=3, padding=1))
            c = channels
        self.convs = nn.ModuleList(convs)
        self.deconv = nn.ConvTranspose2d(c, channels, kernel_size=2, stride=2)
        self.logits = nn.Conv2d(channels, num_classes, kernel_size=1)
        for layer in [*self.convs, self.deconv]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        # Near-zero initial logits (as Detectron): the mask loss starts at ln 2, not at ~4.
        nn.init.normal_(self.logits.weight, std=0.001)
        nn.init.zeros_(self.logits.bias)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x).relu_()
        return self.logits(self.deconv(x).relu_())


class RoIHeads(nn.Module):
    """Detection targets + multi-level RoIAlign + box head + mask head (+ detection layer).

    `losses(...)` in training, `detect(...)` at inference. Features are P2..P6 of a square
    input of side `image_size`; RoIs pool from P2..P5, each from the level its size picks
    (FPN eq. 1, `mrcnn.poolers`).

    losses(features, image_size, proposals [B, R, 4], proposal_valid bool [B, R], batch)
        -> {"loss_classifier", "loss_box", "loss_mask"}: scalar tensors. Samples
        `batch_size_per_image` RoIs per image (gt boxes added to the proposals), runs the box
        head on all of them and the mask head on the positives only.
    detect(features, image_size, proposals [B, R, 4], proposal_valid [B, R], windows [B, 4])
        -> `RawDetections` with D = `detections_per_img` slots per image (padded frame).

    Args:
        box_head: `BoxHead`, pooled [N, C, P, P] -> class logits [N, K], deltas [N, K * 4].
        mask_head: `MaskHead`, pooled [N, C, Pm, Pm] -> mask logits [N, K, 2 Pm, 2 Pm].
        box_pool_size: RoIAlign output side P for the box head (7 in the paper).
        mask_pool_size: RoIAlign output side Pm for the mask head (14; masks are 2 Pm = 28).
        sampling_ratio: RoIAlign sampling points per bin side (0 = adaptive, as torchvision).
        aligned: RoIAlign's half-pixel shift (False as torchvision's MultiScaleRoIAlign,
            True as detectron2's ROIAlignV2).
        canonical_scale: FPN level assignment: a RoI of this side (224) ...
        canonical_level: ... maps to this level (4, i.e. P4); k = floor(k0 + log2(sqrt(wh)/224)).
        batch_size_per_image: RoIs sampled per image for the losses (512 in the paper).
        positive_fraction: at most this share of them are foreground (0.25).
        fg_iou_thresh: a RoI with IoU >= this to some gt box is foreground (0.5) ...
        bg_iou_thresh: ... and background below this (0.5); in between is ignored.
        box_weights: (wx, wy, ww, wh) scaling of the box deltas (10, 10, 5, 5), used both to
            encode the regression targets and to decode predictions.
        score_thresh: inference: class scores at or below this are dropped before NMS (0.05).
        nms_thresh: inference: IoU threshold of the per-class NMS (0.5).
        detections_per_img: inference: D, the detections kept per image (100).
    """

    def __init__(
        self,
        *,
        box_head: BoxHead,
        mask_head: MaskHead,
        box_pool_size: int,
        mask_pool_size: int,
        sampling_ratio: int,
        aligned: bool,
        canonical_scale: int,
        canonical_level: int,
        batch_size_per_image: int,
        positive_fraction: float,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        box_weights: tuple[float, ...],
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
    ) -> None:
        super().__init__()
        self.box_head = box_head
        self.mask_head = mask_head
        self.box_pool_size = box_pool_size
        self.mask_pool_size = mask_pool_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.box_weights = tuple(box_weights)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        # The mask head runs on the valid RoIs only (compacted); compiled models round that count
        # up to a power of two so it takes a few static shapes instead of one per count.
        self.bucket_rois = False

    def _pool(self, features: list[Tensor], boxes: Tensor, image_size: int, size: int) -> Tensor:
        return multilevel_roi_align(
            features,
            boxes,
            image_size,
            size,
            self.sampling_ratio,
            self.aligned,
            self.canonical_scale,
            self.canonical_level,
        )

    def _pool_rois(self, features: list[Tensor], rois: Tensor, image_size: int) -> Tensor:
        return roi_align_levels(
            features,
            rois,
            image_size,
            self.mask_pool_size,
            self.sampling_ratio,
            self.aligned,
            self.canonical_scale,
            self.canonical_level,
        )

    def _select(self, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Flat indices of the valid slots of `valid` [B, N] -> (index [n], keep bool [n]).

        At least one entry (so the head always runs and every parameter gets a gradient, as DDP
        needs); with `bucket_rois`, padded to a power of two. Padding entries have keep=False.
        """
        index = valid.reshape(-1).nonzero().squeeze(1)
        n = index.numel()
        size = max(1, n)
        if self.bucket_rois:
            size = min(valid.numel(), 1 << (size - 1).bit_length())
        keep = torch.arange(size, device=valid.device) < n
        if size > n:
            index = torch.cat([index, index.new_zeros(size - n)])
        return index, keep

    def losses(
        self,
        features: list[Tensor],
        image_size: int,
        proposals: Tensor,
        proposal_valid: Tensor,
        batch: Batch,
    ) -> dict[str, Tensor]:
        """Sample RoIs, run both heads on them and return the box, class and mask losses.

        features: P2..P6 [B, C, H_l, W_l]; proposals [B, R, 4] with proposal_valid [B, R];
        `batch` must hold ground truth (gt_boxes, gt_labels, gt_mini_masks, gt_valid)
        -> {"loss_classifier", "loss_box", "loss_mask"}, each a scalar tensor.
        """
        if not batch.has_targets:
            raise ValueError("training the RoI heads needs ground truth in the batch")
        with record_function("mrcnn.detection_targets"):
            t = detection_targets(
                proposals,
                proposal_valid,
                batch.gt_boxes,
                batch.gt_labels,
                batch.gt_valid,
                batch.gt_mini_masks,
                fg_iou_thresh=self.fg_iou_thresh,
                bg_iou_thresh=self.bg_iou_thresh,
                batch_size_per_image=self.batch_size_per_image,
                positive_fraction=self.positive_fraction,
                box_weights=self.box_weights,
                mask_size=2 * self.mask_pool_size,
            )
        with record_function("mrcnn.box_head"):
            pooled = self._pool(features, t.rois, image_size, self.box_pool_size)
            class_logits, box_deltas = self.box_head(pooled)
        p = t.mask_targets.shape[1]
        with record_function("mrcnn.mask_head"):
            # Only positive RoIs need masks: pool and run the head on those alone (~1 GFLOP
            # per RoI for a 4 x 256 head), not on all P slots.
            sel, keep = self._select(t.mask_valid)
            rois = rois_with_image_index(t.rois[:, :p])[sel]
            mask_logits = self.mask_head(self._pool_rois(features, rois, image_size))
        with record_function("mrcnn.losses"):
            losses = box_losses(
                class_logits,
                box_deltas,
                t.labels.reshape(-1),
                t.box_targets.reshape(-1, 4),
                t.valid.reshape(-1),
            )
            losses["loss_mask"] = mask_loss(
                mask_logits,
                t.labels[:, :p].reshape(-1)[sel],
                t.mask_targets.flatten(0, 1)[sel],
                keep,
            )
        return losses

    @torch.no_grad()
    def detect(
        self,
        features: list[Tensor],
        image_size: int,
        proposals: Tensor,
        proposal_valid: Tensor,
        windows: Tensor,
    ) -> RawDetections:
        """Box head on all proposals, detection layer, then the mask head on the kept boxes.

        features: P2..P6 [B, C, H_l, W_l]; proposals [B, R, 4] xyxy in the padded frame with
        proposal_valid bool [B, R]; windows float [B, 4] (y1, x1, y2, x2) of each real image
        (boxes are clipped to it) -> `RawDetections` [B, D, ...], D = detections_per_img.
        """
        b, r, _ = proposals.shape
        with record_function("mrcnn.box_head"):
            pooled = self._pool(features, proposals, image_size, self.box_pool_size)
            class_logits, box_deltas = self.box_head(pooled)
        with record_function("mrcnn.detection_layer"):
            boxes, scores, labels, valid = detection_layer(
                class_logits.reshape(b, r, -1),
                box_deltas.reshape(b, r, -1),
                proposals,
                proposal_valid,
                windows,
                box_weights=self.box_weights,
                score_thresh=self.score_thresh,
                nms_thresh=self.nms_thresh,
                detections_per_img=self.detections_per_img,
            )
        with record_function("mrcnn.mask_head"):
            sel, keep = self._select(valid)
            rois = rois_with_image_index(boxes)[sel]
            logits = self.mask_head(self._pool_rois(features, rois, image_size))
            probs = select_class_masks(logits, labels.reshape(-1)[sel])
            d = boxes.shape[1]
            m = probs.shape[-1]
            mask_probs = probs.new_zeros((b * d, m, m))
            mask_probs[sel[keep]] = probs[keep]
        return RawDetections(boxes, scores, labels, valid, mask_probs.reshape(b, d, m, m))
