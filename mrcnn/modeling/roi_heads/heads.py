"""RoI heads: sampling, pooling and the box / mask / keypoint / MaskIoU heads composed
(Mask R-CNN sec. 3, fig. 4 right: the FPN heads).

Shape shorthand: N RoIs (all images, image-major), C feature channels, K classes incl.
background, M = 28 mask side.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from mrcnn.inference.detection_layer import detection_layer, select_class_masks
from mrcnn.layers.poolers import multilevel_roi_align, roi_align_levels, rois_with_image_index
from mrcnn.modeling.keypoint_targets import keypoint_targets
from mrcnn.modeling.losses import box_losses, keypoint_loss, mask_iou_loss, mask_loss
from mrcnn.modeling.roi_heads.box_head import BoxHead
from mrcnn.modeling.roi_heads.keypoint_head import KeypointHead, heatmaps_to_keypoints
from mrcnn.modeling.roi_heads.mask_head import MaskHead
from mrcnn.modeling.roi_heads.mask_iou_head import MaskIoUHead
from mrcnn.modeling.targets import detection_targets, mask_iou_targets
from mrcnn.structures import Batch, RawDetections


class RoIHeads(nn.Module):
    """Detection targets + multi-level RoIAlign + box head + mask head (+ detection layer),
    optionally a keypoint head (Mask R-CNN sec. 5) and a MaskIoU head (Mask Scoring R-CNN).

    `losses(...)` in training, `detect(...)` at inference. Features are P2..P6 of a square
    input of side `image_size`; RoIs pool from P2..P5, each from the level its size picks
    (FPN eq. 1, `mrcnn.layers.poolers`).

    losses(features, image_size, proposals [B, R, 4], proposal_valid bool [B, R], batch)
        -> {"loss_classifier", "loss_box", "loss_mask"}: scalar tensors (+ "loss_keypoint"
        with a keypoint head, "loss_mask_iou" with a MaskIoU head; no "loss_mask" without a
        mask head). Samples `batch_size_per_image` RoIs per image (gt boxes added to the
        proposals), runs the box head on all of them and the other heads on the positives only.
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
        keypoint_head: optional `KeypointHead`, pooled [N, C, Pk, Pk] -> heatmap logits
            [N, Kp, 4 Pk, 4 Pk]; needs `batch.gt_keypoints` in training and fills
            `RawDetections.keypoints` at inference.
        keypoint_pool_size: RoIAlign output side Pk for the keypoint head (14 -> 56 heatmaps).
        mask_iou_head: optional `MaskIoUHead` (needs the mask head), (mask-head features,
            mask probabilities) -> IoU [N, K]; fills `RawDetections.mask_scores`.
    """

    def __init__(
        self,
        *,
        box_head: BoxHead,
        mask_head: MaskHead | None,
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
        keypoint_head: KeypointHead | None = None,
        keypoint_pool_size: int = 14,
        mask_iou_head: MaskIoUHead | None = None,
    ) -> None:
        super().__init__()
        if mask_iou_head is not None and mask_head is None:
            raise ValueError("a MaskIoU head needs a mask head to score")
        self.box_head = box_head
        self.mask_head = mask_head
        self.keypoint_head = keypoint_head
        self.keypoint_pool_size = keypoint_pool_size
        self.mask_iou_head = mask_iou_head
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

    def _pool_rois(
        self, features: list[Tensor], rois: Tensor, image_size: int, size: int | None = None
    ) -> Tensor:
        return roi_align_levels(
            features,
            rois,
            image_size,
            self.mask_pool_size if size is None else size,
            self.sampling_ratio,
            self.aligned,
            self.canonical_scale,
            self.canonical_level,
        )

    def _pool_keypoint_rois(
        self, features: list[Tensor], rois: Tensor, image_size: int, mask_features: Tensor | None
    ) -> Tensor:
        """The keypoint head's RoIAlign: the mask head's pooled features when it pooled the
        same RoIs at the same size (both 14 x 14 in the paper), else its own."""
        if mask_features is not None and self.keypoint_pool_size == self.mask_pool_size:
            return mask_features
        return self._pool_rois(features, rois, image_size, self.keypoint_pool_size)

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
        """Sample RoIs, run the heads on them and return the box, class and mask losses.

        features: P2..P6 [B, C, H_l, W_l]; proposals [B, R, 4] with proposal_valid [B, R];
        `batch` must hold ground truth (gt_boxes, gt_labels, gt_mini_masks, gt_valid, and
        gt_keypoints for a keypoint head) -> {"loss_classifier", "loss_box", "loss_mask"} (+
        "loss_mask_iou", "loss_keypoint" with those heads), each a scalar tensor.
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
        # Only positive RoIs need masks and keypoints: pool and run those heads on them alone
        # (~1 GFLOP per RoI for a 4 x 256 mask head), not on all P slots.
        sel, keep = self._select(t.mask_valid)
        rois = rois_with_image_index(t.rois[:, :p])[sel]
        labels = t.labels[:, :p].reshape(-1)[sel]
        mask_features = None
        with record_function("mrcnn.modeling.losses"):
            losses = box_losses(
                class_logits,
                box_deltas,
                t.labels.reshape(-1),
                t.box_targets.reshape(-1, 4),
                t.valid.reshape(-1),
            )
        if self.mask_head is not None:
            with record_function("mrcnn.mask_head"):
                mask_features = self._pool_rois(features, rois, image_size)
                mask_logits = self.mask_head(mask_features)
            mask_targets = t.mask_targets.flatten(0, 1)[sel]
            losses["loss_mask"] = mask_loss(mask_logits, labels, mask_targets, keep)
            if self.mask_iou_head is not None:
                with record_function("mrcnn.modeling.roi_heads.mask_iou_head"):
                    own = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]
                    iou_pred = self.mask_iou_head(mask_features, own.float().sigmoid())
                    iou_targets = mask_iou_targets(own.detach(), mask_targets)
                losses["loss_mask_iou"] = mask_iou_loss(iou_pred, labels, iou_targets, keep)
        if self.keypoint_head is not None:
            if batch.gt_keypoints is None:
                raise ValueError(
                    "this model has a keypoint head: the batch needs gt_keypoints "
                    "(shards written with keypoints)"
                )
            with record_function("mrcnn.modeling.roi_heads.keypoint_head"):
                kp_features = self._pool_keypoint_rois(features, rois, image_size, mask_features)
                kp_logits = self.keypoint_head(kp_features)
                kp_targets, kp_valid = keypoint_targets(
                    t.rois[:, :p], t.gt_index[:, :p], batch.gt_keypoints, kp_logits.shape[-1]
                )
            losses["loss_keypoint"] = keypoint_loss(
                kp_logits,
                kp_targets.flatten(0, 1)[sel],
                kp_valid.flatten(0, 1)[sel] & keep[:, None],
            )
        return losses

    @torch.no_grad()
    def box_predictions(
        self, features: list[Tensor], image_size: int, proposals: Tensor
    ) -> tuple[Tensor, Tensor]:
        """RoIAlign + box head on every proposal: proposals [B, R, 4] -> class logits
        [B * R, K], box deltas [B * R, K * 4] (what the detection layer takes)."""
        with record_function("mrcnn.box_head"):
            pooled = self._pool(features, proposals, image_size, self.box_pool_size)
            return self.box_head(pooled)

    def detect(
        self,
        features: list[Tensor],
        image_size: int,
        proposals: Tensor,
        proposal_valid: Tensor,
        windows: Tensor,
    ) -> RawDetections:
        """Box head on all proposals, detection layer, then the mask (+ MaskIoU) and keypoint
        heads on the kept boxes.

        features: P2..P6 [B, C, H_l, W_l]; proposals [B, R, 4] xyxy in the padded frame with
        proposal_valid bool [B, R]; windows float [B, 4] (y1, x1, y2, x2) of each real image
        (boxes are clipped to it) -> `RawDetections` [B, D, ...], D = detections_per_img.
        """
        b, r, _ = proposals.shape
        class_logits, box_deltas = self.box_predictions(features, image_size, proposals)
        with record_function("mrcnn.inference.detection_layer"):
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
        sel, keep = self._select(valid)
        rois = rois_with_image_index(boxes)[sel]
        d = boxes.shape[1]
        out = RawDetections(boxes, scores, labels, valid, None)
        mask_features = None
        if self.mask_head is not None:
            with record_function("mrcnn.mask_head"):
                mask_features = self._pool_rois(features, rois, image_size)
                sel_labels = labels.reshape(-1)[sel]
                probs = select_class_masks(self.mask_head(mask_features), sel_labels)
                m = probs.shape[-1]
                mask_probs = probs.new_zeros((b * d, m, m))
                mask_probs[sel[keep]] = probs[keep]
                out.mask_probs = mask_probs.reshape(b, d, m, m)
            if self.mask_iou_head is not None:
                with record_function("mrcnn.modeling.roi_heads.mask_iou_head"):
                    iou = self.mask_iou_head(mask_features, probs).float()
                    iou = iou[torch.arange(sel.shape[0], device=sel.device), sel_labels]
                    # Mask Scoring R-CNN sec. 3.3: s_mask = s_cls x s_iou.
                    mask_scores = scores.new_zeros(b * d)
                    mask_scores[sel[keep]] = iou[keep].clamp(0, 1)
                    out.mask_scores = mask_scores.reshape(b, d) * scores
        if self.keypoint_head is not None:
            with record_function("mrcnn.modeling.roi_heads.keypoint_head"):
                pooled = self._pool_keypoint_rois(features, rois, image_size, mask_features)
                heatmaps = self.keypoint_head(pooled)
                kp = heatmaps_to_keypoints(heatmaps[keep], rois[keep, 1:])  # [n, Kp, 3]
                keypoints = kp.new_zeros((b * d, *kp.shape[1:]))
                keypoints[sel[keep]] = kp
                out.keypoints = keypoints.reshape(b, d, *kp.shape[1:])
        return out
