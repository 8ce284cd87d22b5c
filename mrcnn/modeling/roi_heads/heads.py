"""RoI heads: sampling, pooling and the box / mask / keypoint / MaskIoU heads composed
(Mask R-CNN sec. 3, fig. 4 right: the FPN heads).

Shape shorthand: B images, R proposals per image, S RoIs sampled per image (training), D
detection slots per image, N pooled RoIs (all images), C feature channels, K classes incl.
background, M = 28 mask side, Kp keypoint types.

Every head runs on RoIs in the pooler's level order (`mrcnn.layers.poolers.Pooler`) and only
its outputs are put back in RoI order. At inference the mask, MaskIoU and keypoint heads run on
the valid detections only, plus one dummy RoI (a 1 px box of image 0) so their batch is never
empty; the same code runs eager, compiled and traced for export (`mrcnn.export.graph`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from mrcnn.inference.detection_layer import DetectionLayer
from mrcnn.layers.matcher import Sampler
from mrcnn.layers.nms import NmsTopK, batched_nms_top_k
from mrcnn.layers.poolers import Pooler, inverse_order, nonzero_1d, rois_with_image_index
from mrcnn.modeling.keypoint_targets import keypoint_targets
from mrcnn.modeling.losses import box_losses, keypoint_loss, mask_iou_loss, mask_loss
from mrcnn.modeling.roi_heads.box_head import BoxHead
from mrcnn.modeling.roi_heads.keypoint_head import KeypointHead, heatmaps_to_keypoints
from mrcnn.modeling.roi_heads.mask_head import MaskHead
from mrcnn.modeling.roi_heads.mask_iou_head import MaskIoUHead
from mrcnn.modeling.targets import detection_targets, mask_iou_targets
from mrcnn.structures import Batch, RawDetections


class RoIHeads(nn.Module):
    """Box head + detection layer, the class-specific mask head, optionally a keypoint head
    (Mask R-CNN sec. 5) and a MaskIoU head (Mask Scoring R-CNN), each with its pooler.

    losses(features, image_size, proposals [B, R, 4], proposal_valid bool [B, R], batch)
        -> {"loss_classifier", "loss_box", "loss_mask"}: scalar tensors (+ "loss_keypoint"
        with a keypoint head, "loss_mask_iou" with a MaskIoU head; no "loss_mask" without a
        mask head). Samples RoIs per image (`sampler`; gt boxes added to the proposals), runs
        the box head on all of them and the other heads on the positives only.
    detect(features, image_size, proposals [B, R, 4], proposal_valid [B, R], windows [B, 4])
        -> `RawDetections` with D = `detection_layer.detections_per_img` slots per image, in
        the padded frame.
    Features are P2..P6 of a square input of side `image_size`; RoIs pool from P2..P5.

    Args:
        box_head: `BoxHead`, pooled [N, C, P, P] -> class logits [N, K], deltas [N, K * 4].
        box_pooler: `Pooler` of the box head (output side P = 7 in the paper).
        box_weights: (wx, wy, ww, wh) scaling of the box deltas (10, 10, 5, 5), used both to
            encode the regression targets and to decode predictions.
        sampler: training: the RoIs' labels and minibatch (`Sampler`: IoU >= 0.5 foreground,
            512 per image, 25% foreground; Mask R-CNN sec. 3.1).
        detection_layer: inference: `DetectionLayer` (score threshold, per-class NMS, D).
        mask_head: `MaskHead`, pooled [N, C, Pm, Pm] -> mask logits [N, K, 2 Pm, 2 Pm]; None
            for a model without masks.
        mask_pooler: the mask head's `Pooler` (Pm = 14, masks are 2 Pm = 28).
        keypoint_head: optional `KeypointHead`, pooled [N, C, Pk, Pk] -> heatmap logits
            [N, Kp, 4 Pk, 4 Pk]; needs `batch.gt_keypoints` in training and fills
            `RawDetections.keypoints` at inference.
        keypoint_pooler: its `Pooler` (Pk = 14 -> 56 heatmaps). When it pools as the mask
            pooler does, the mask head's pooled features are reused.
        mask_iou_head: optional `MaskIoUHead` (needs the mask head), (mask-head features,
            mask probabilities) -> IoU [N, K]; fills `RawDetections.mask_scores`.
    """

    def __init__(
        self,
        *,
        box_head: BoxHead,
        box_pooler: Pooler,
        box_weights: tuple[float, ...],
        sampler: Sampler,
        detection_layer: DetectionLayer,
        mask_head: MaskHead | None = None,
        mask_pooler: Pooler | None = None,
        keypoint_head: KeypointHead | None = None,
        keypoint_pooler: Pooler | None = None,
        mask_iou_head: MaskIoUHead | None = None,
    ) -> None:
        super().__init__()
        if mask_iou_head is not None and mask_head is None:
            raise ValueError("a MaskIoU head needs a mask head to score")
        if (mask_head is None) != (mask_pooler is None):
            raise ValueError("a mask head and its pooler come together")
        if (keypoint_head is None) != (keypoint_pooler is None):
            raise ValueError("a keypoint head and its pooler come together")
        self.box_head = box_head
        self.box_pooler = box_pooler
        self.box_weights = tuple(box_weights)
        self.sampler = sampler
        self.detection_layer = detection_layer
        self.mask_head = mask_head
        self.mask_pooler = mask_pooler
        self.keypoint_head = keypoint_head
        self.keypoint_pooler = keypoint_pooler
        self.mask_iou_head = mask_iou_head
        # The mask head runs on the valid RoIs only (compacted); compiled models round that count
        # up to a power of two so it takes a few static shapes instead of one per count.
        self.bucket_rois = False

    @property
    def mask_size(self) -> int:
        """M, the side of the mask head's output (twice its pooled side)."""
        return 2 * self.mask_pooler.output_size if self.mask_pooler is not None else 28

    def _keypoint_pooled(
        self,
        features: list[Tensor],
        rois: Tensor,
        image_size: int,
        mask_pooled: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, Tensor]:
        """The keypoint head's pooled RoIs and their order: the mask head's when its pooler
        pools the same way (both 14 x 14 in the paper), else its own."""
        if mask_pooled is not None and self.keypoint_pooler == self.mask_pooler:
            return mask_pooled
        return self.keypoint_pooler(features, rois, image_size)

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
                self.sampler,
                box_weights=self.box_weights,
                mask_size=self.mask_size,
            )
        with record_function("mrcnn.box_head"):
            rois = rois_with_image_index(t.rois)
            pooled, order = self.box_pooler(features, rois, image_size)
            back = inverse_order(order, rois.shape[0])
            class_logits, box_deltas = (x[back] for x in self.box_head(pooled))
        with record_function("mrcnn.losses"):
            losses = box_losses(
                class_logits,
                box_deltas,
                t.labels.reshape(-1),
                t.box_targets.reshape(-1, 4),
                t.valid.reshape(-1),
            )
        p = t.mask_targets.shape[1]
        # Only positive RoIs need masks and keypoints: pool and run those heads on them alone
        # (~1 GFLOP per RoI for a 4 x 256 mask head), not on all P slots.
        sel, keep = self._select(t.mask_valid)
        rois = rois_with_image_index(t.rois[:, :p])[sel]
        labels = t.labels[:, :p].reshape(-1)[sel]
        mask_pooled = None
        if self.mask_head is not None:
            with record_function("mrcnn.mask_head"):
                mask_pooled = mask_features, order = self.mask_pooler(features, rois, image_size)
                back = inverse_order(order, rois.shape[0])
                mask_logits = self.mask_head(mask_features)[back]
            mask_targets = t.mask_targets.flatten(0, 1)[sel]
            losses["loss_mask"] = mask_loss(mask_logits, labels, mask_targets, keep)
            if self.mask_iou_head is not None:
                with record_function("mrcnn.mask_iou_head"):
                    own = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]
                    iou_pred = self.mask_iou_head(mask_features, own[order].float().sigmoid())
                    iou_targets = mask_iou_targets(own.detach(), mask_targets)
                losses["loss_mask_iou"] = mask_iou_loss(iou_pred[back], labels, iou_targets, keep)
        if self.keypoint_head is not None:
            if batch.gt_keypoints is None:
                raise ValueError(
                    "this model has a keypoint head: the batch needs gt_keypoints "
                    "(shards written with keypoints)"
                )
            with record_function("mrcnn.keypoint_head"):
                pooled, order = self._keypoint_pooled(features, rois, image_size, mask_pooled)
                kp_logits = self.keypoint_head(pooled)[inverse_order(order, rois.shape[0])]
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
        """Pooling + box head on every proposal: proposals [B, R, 4] -> class logits
        [B * R, K], box deltas [B * R, K * 4] in proposal order (what the detection layer
        takes)."""
        with record_function("mrcnn.box_head"):
            rois = rois_with_image_index(proposals)
            pooled, order = self.box_pooler(features, rois, image_size)
            back = inverse_order(order, rois.shape[0])
            class_logits, box_deltas = self.box_head(pooled)
            return class_logits[back], box_deltas[back]

    @torch.no_grad()
    def detect(
        self,
        features: list[Tensor],
        image_size: int,
        proposals: Tensor,
        proposal_valid: Tensor,
        windows: Tensor,
        *,
        nms: NmsTopK = batched_nms_top_k,
        extra_heads: bool = True,
    ) -> RawDetections:
        """Box head on all proposals, detection layer, then the mask (+ MaskIoU) and keypoint
        heads on the kept boxes.

        features: P2..P6 [B, C, H_l, W_l]; proposals [B, R, 4] xyxy in the padded frame with
        proposal_valid bool [B, R]; windows float [B, 4] (y1, x1, y2, x2) of each real image
        (boxes are clipped to it) -> `RawDetections` [B, D, ...]. `nms`: the NMS primitive
        (`mrcnn.layers.nms`); `extra_heads=False` skips the keypoint and MaskIoU heads (the
        exported graph outputs boxes and masks only).
        """
        b, r, _ = proposals.shape
        class_logits, box_deltas = self.box_predictions(features, image_size, proposals)
        with record_function("mrcnn.detection_layer"):
            boxes, scores, labels, valid = self.detection_layer(
                class_logits.reshape(b, r, -1),
                box_deltas.reshape(b, r, -1),
                proposals,
                proposal_valid,
                windows,
                box_weights=self.box_weights,
                nms=nms,
            )
        out = RawDetections(boxes, scores, labels, valid, None)
        extras = extra_heads and (self.keypoint_head is not None or self.mask_iou_head is not None)
        if self.mask_head is None and not extras:
            return out

        # The detected RoIs, plus a dummy 1 px box of image 0 (label 1) in a spare last slot, so
        # the heads never see an empty batch; their outputs land in [B * D + 1] slots.
        d = boxes.shape[1]
        dummy = boxes.new_tensor([[0.0, 0.0, 0.0, 1.0, 1.0]])
        all_rois = torch.cat([rois_with_image_index(boxes), dummy])
        all_labels = torch.cat([labels.reshape(-1), labels.new_ones(1)])
        sel = nonzero_1d(torch.cat([valid.reshape(-1), valid.new_ones(1)]))
        if self.bucket_rois:  # compiled heads: a few static RoI counts
            size = min(all_rois.shape[0], 1 << (sel.shape[0] - 1).bit_length())
            sel = torch.cat([sel, sel.new_full((size - sel.shape[0],), b * d)])
        rois = all_rois[sel]
        mask_pooled = None
        if self.mask_head is not None:
            with record_function("mrcnn.mask_head"):
                mask_pooled = mask_features, order = self.mask_pooler(features, rois, image_size)
                slots = sel[order]  # the slot of each pooled RoI
                probs = self.mask_head.label_probs(mask_features, all_labels[slots])
                m = self.mask_size
                out.mask_probs = _scatter_slots(probs, slots, b, d, (m, m))
        if not extras:
            return out
        if self.mask_iou_head is not None:
            with record_function("mrcnn.mask_iou_head"):
                iou = self.mask_iou_head(mask_features, probs).float()
                iou = iou[torch.arange(slots.shape[0], device=slots.device), all_labels[slots]]
                # Mask Scoring R-CNN sec. 3.3: s_mask = s_cls x s_iou.
                out.mask_scores = _scatter_slots(iou.clamp(0, 1), slots, b, d) * scores
        if self.keypoint_head is not None:
            with record_function("mrcnn.keypoint_head"):
                pooled, order = self._keypoint_pooled(features, rois, image_size, mask_pooled)
                slots = sel[order]
                heatmaps = self.keypoint_head(pooled)
                kp = heatmaps_to_keypoints(heatmaps, all_rois[slots, 1:])  # [n, Kp, 3]
                out.keypoints = _scatter_slots(kp, slots, b, d, tuple(kp.shape[1:]))
        return out


def _scatter_slots(
    values: Tensor, slots: Tensor, b: int, d: int, shape: tuple[int, ...] = ()
) -> Tensor:
    """values [n, *shape] of the slots int64 [n] (in 0..B * D, the last one the dummy's) ->
    [B, D, *shape], zeros in the slots nothing was written to. `shape` is given as ints, not
    read from `values`, so a traced graph's outputs keep static shapes."""
    out = values.new_zeros((b * d + 1, *shape))
    return out.index_put((slots,), values)[: b * d].reshape(b, d, *shape)
