"""The whole inference as one traceable function of fixed-shape tensors (`InferenceGraph`).

`MaskRCNN.forward` in eval mode computes the same thing, but with steps whose shapes depend on
the data (NMS survivors, RoIs per pyramid level, kept detections), written for eager PyTorch.
This module re-states those steps with the same primitives (`box_coder`, `assign_levels`,
torchvision's `roi_align`) so that tracing gives a graph whose inputs and outputs have static
shapes, and whose data-dependent parts are ONNX operators:

    NMS             ONNX `NonMaxSuppression` (per image and group), then a fixed-size gather:
                    survivors are marked in a [B, N] mask (ScatterND) and each image's k best
                    are a `TopK` of the masked scores, so the slot count never varies.
    RoIAlign        ONNX `RoiAlign` per pyramid level on the RoIs assigned to that level
                    (`NonZero` + `Gather`), concatenated in level order; the heads run on
                    that order and only their outputs go back to RoI order (`Gather`).
                    aligned=True -> coordinate_transformation_mode "half_pixel",
                    aligned=False -> "output_half_pixel" (opset >= 16), as torchvision exports.
    mask head       runs on the valid detections only (plus one dummy RoI, so it never sees an
                    empty batch), scattered back into [B, D] slots; only the detected class's
                    mask is computed, the deconv as a 1x1 conv (`mask_probs_for_labels`).

Shape shorthand: B images, S input side, L pyramid levels, A anchors, k_l pre-NMS candidates of
level l (K = sum), R proposals, C classes incl. background, D detections, M mask side.
Used only for export (`mrcnn.export`); the eager model never runs this code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.onnx.symbolic_helper import parse_args
from torchvision.ops import batched_nms, roi_align

from mrcnn.inference.detection_layer import MIN_BOX_SIZE
from mrcnn.layers import box_coder
from mrcnn.layers.poolers import K_MAX, K_MIN, assign_levels, rois_with_image_index
from mrcnn.modeling.model import MaskRCNN
from mrcnn.modeling.roi_heads.mask_head import MaskHead

# Scores of non-candidates; the NMS score threshold lies between it and every real score (>= 0).
_NOT_A_CANDIDATE = -1.0
_SCORE_THRESHOLD = -0.5


@torch.library.custom_op("mrcnn::non_max_suppression", mutates_args=())
def non_max_suppression(
    boxes: Tensor,
    scores: Tensor,
    max_per_group: int,
    iou_threshold: float,
    score_threshold: float,
) -> Tensor:
    """ONNX `NonMaxSuppression` as a PyTorch op (exported as that operator by both exporters).

    boxes [N, n, 4] (corners), scores [N, G, n] -> selected int64 [S, 3] rows
    (batch, group, box index). Within each (batch, group): boxes with score > `score_threshold`
    in descending score order, dropping those whose IoU with a kept box is > `iou_threshold`,
    at most `max_per_group` kept.
    """
    n_batch, n_groups, n = scores.shape
    flat = (scores > score_threshold).reshape(-1).nonzero().squeeze(1)
    batch, group, box = flat // (n_groups * n), (flat // n) % n_groups, flat % n
    keep = batched_nms(
        boxes[batch, box], scores[batch, group, box], batch * n_groups + group, iou_threshold
    )
    rows = torch.stack([batch[keep], group[keep], box[keep]], dim=1)
    # keep is sorted by score; the first max_per_group of each (batch, group) survive.
    key = rows[:, 0] * n_groups + rows[:, 1]
    key_sorted, order = torch.sort(key, stable=True)
    counts = torch.bincount(key_sorted, minlength=n_batch * n_groups)
    rank = torch.arange(len(order)) - (torch.cumsum(counts, 0) - counts)[key_sorted]
    return rows[order[rank < max_per_group]]


@non_max_suppression.register_fake
def _(boxes, scores, max_per_group, iou_threshold, score_threshold):
    count = torch.library.get_ctx().new_dynamic_size()
    return scores.new_empty((count, 3), dtype=torch.int64)


@parse_args("v", "v", "i", "f", "f")
def _nms_symbolic(g, boxes, scores, max_per_group, iou_threshold, score_threshold):
    return g.op(
        "NonMaxSuppression",
        boxes,
        scores,
        g.op("Constant", value_t=torch.tensor([max_per_group], dtype=torch.int64)),
        g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
        g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
        center_point_box_i=0,
    )


torch.onnx.register_custom_op_symbolic("mrcnn::non_max_suppression", _nms_symbolic, 11)


def _top_survivors(
    scores: Tensor, survivors: Tensor, cell: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """scores [B, N]; survivors: NMS rows [S, 3]; `cell` [S] their flat index into N.

    -> index int64 [B, k] into N (best first), valid bool [B, k]. N may be below k: the rest
    of the slots are invalid.
    """
    b, n = scores.shape
    kept = torch.zeros((b, n), dtype=torch.bool, device=scores.device)
    kept = kept.index_put((survivors[:, 0], cell), torch.ones_like(cell, dtype=torch.bool))
    masked = torch.where(kept, scores, torch.full_like(scores, _NOT_A_CANDIDATE))
    top, index = masked.topk(min(k, n), dim=1)
    valid = top > _SCORE_THRESHOLD
    if k > n:
        index = F.pad(index, (0, k - n))
        valid = F.pad(valid, (0, k - n))
    return torch.where(valid, index, torch.zeros_like(index)), valid


def _gather(values: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """values [B, N, ...] at index [B, k] -> [B, k, ...], zeros where not valid."""
    extra = values.shape[2:]
    idx = index.reshape(*index.shape, *([1] * len(extra))).expand(*index.shape, *extra)
    out = values.gather(1, idx)
    mask = valid.reshape(*valid.shape, *([1] * len(extra)))
    return torch.where(mask, out, torch.zeros_like(out))


def propose(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    num_anchors_per_level: list[int],
    windows: Tensor,
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float,
    min_size: float,
    score_thresh: float,
) -> tuple[Tensor, Tensor]:
    """`mrcnn.modeling.rpn.propose` for export: -> proposals [B, R, 4], valid bool [B, R].

    NMS per (image, level): the levels are the groups of one `NonMaxSuppression` over all K
    candidates, each group seeing only its own level's scores.
    """
    objectness, deltas = objectness.float(), deltas.float()
    top_idx, levels, offset = [], [], 0
    for level, n in enumerate(num_anchors_per_level):
        k = min(pre_nms_top_n, n)
        top_idx.append(objectness[:, offset : offset + n].topk(k, dim=1).indices + offset)
        levels.append(torch.full((k,), level, dtype=torch.int64))
        offset += n
    idx = torch.cat(top_idx, dim=1)  # [B, K]
    level = torch.cat(levels)  # [K]
    boxes = box_coder.decode(
        deltas.gather(1, idx[..., None].expand(-1, -1, 4)), anchors[idx], box_coder.RPN_BOX_WEIGHTS
    )
    boxes = box_coder.clip_to_windows(boxes, windows)
    scores = torch.sigmoid(objectness.gather(1, idx))  # [B, K]
    ok = box_coder.box_sizes_at_least(boxes, min_size) & (scores >= score_thresh)
    num_levels = len(num_anchors_per_level)
    in_level = level[None, None, :] == torch.arange(num_levels)[None, :, None]  # [1, L, K]
    group_scores = torch.where(
        in_level & ok[:, None, :], scores[:, None, :], torch.full_like(scores[:, None], -1.0)
    )  # [B, L, K]
    rows = non_max_suppression(boxes, group_scores, post_nms_top_n, nms_thresh, _SCORE_THRESHOLD)
    index, valid = _top_survivors(scores, rows, rows[:, 2], post_nms_top_n)
    return _gather(boxes, index, valid), valid


def detection_layer(
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: Tensor,
    proposal_valid: Tensor,
    windows: Tensor,
    *,
    box_weights: tuple[float, ...],
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`mrcnn.inference.detection_layer.detection_layer` for export, same contract.

    Each (image, class) is one batch entry of `NonMaxSuppression` (its boxes are the class's
    own decoded boxes), so the per-class NMS is exact, with no coordinate-offset trick.
    """
    b, r, k = class_logits.shape
    scores = F.softmax(class_logits.float(), dim=-1)[..., 1:]  # [B, R, C-1]
    deltas = box_deltas.float().reshape(b, r, k, 4)[:, :, 1:]
    boxes = box_coder.decode(deltas, proposals.float()[:, :, None], box_weights)  # [B,R,C-1,4]
    boxes = box_coder.clip_to_windows(boxes, windows)
    ok = (scores > score_thresh) & proposal_valid[..., None]
    ok = ok & box_coder.box_sizes_at_least(boxes, MIN_BOX_SIZE)
    candidates = torch.where(ok, scores, torch.full_like(scores, _NOT_A_CANDIDATE))
    rows = non_max_suppression(
        boxes.permute(0, 2, 1, 3).reshape(b * (k - 1), r, 4),
        candidates.permute(0, 2, 1).reshape(b * (k - 1), 1, r),
        detections_per_img,
        nms_thresh,
        _SCORE_THRESHOLD,
    )
    # Row (image * (C-1) + class - 1, 0, proposal) -> image, and index proposal * (C-1) + class
    # - 1 into the class-minor [R * (C-1)] candidates (the eager layer's order).
    image, cls = rows[:, 0] // (k - 1), rows[:, 0] % (k - 1)
    flat_rows = torch.stack([image, rows[:, 1], rows[:, 2]], dim=1)
    flat_scores = scores.reshape(b, -1)
    index, valid = _top_survivors(
        flat_scores, flat_rows, rows[:, 2] * (k - 1) + cls, detections_per_img
    )
    out_boxes = _gather(boxes.reshape(b, -1, 4), index, valid)
    out_scores = _gather(flat_scores, index, valid)
    out_labels = torch.where(valid, index % (k - 1) + 1, torch.zeros_like(index))
    return out_boxes, out_scores, out_labels, valid


def _nonzero(mask: Tensor) -> Tensor:
    """Indices of the true entries of a 1-D bool mask; the ONNX `NonZero` sees float input,
    the type TensorRT's parser takes for it."""
    return torch.nonzero(mask.float()).squeeze(1)


def roi_align_levels(
    features: list[Tensor],
    rois: Tensor,
    image_size: int,
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: int,
    canonical_level: int,
) -> tuple[Tensor, Tensor]:
    """`mrcnn.layers.poolers.roi_align_levels` for export, in level order: rows [N, 5] ->
    pooled [N, C, o, o] and order int64 [N] (pooled row i is RoI `order[i]`).

    Each level pools only its own RoIs (`NonZero` + `Gather`), so no level does 4x the work,
    and the levels' results are concatenated: callers run their head on them as they are and
    put the head's (much smaller) output back in RoI order, so the pooled features are never
    scattered.
    """
    rois = rois.float()
    levels = assign_levels(rois[:, 1:], canonical_scale, canonical_level)
    pooled, order = [], []
    for level, feat in enumerate(features[: K_MAX - K_MIN + 1]):
        idx = _nonzero(levels == level)
        scale = feat.shape[-1] / image_size
        pooled.append(roi_align(feat, rois[idx], output_size, scale, sampling_ratio, aligned))
        order.append(idx)
    return torch.cat(pooled), torch.cat(order)


def _roi_order(order: Tensor, n: int) -> Tensor:
    """The inverse of `roi_align_levels`'s `order`: rows in level order, gathered by it, are in
    the order of the n RoIs. Its static length n keeps the graph's shapes after it static."""
    return torch.zeros(n, dtype=torch.int64).index_put((order,), torch.arange(n))


def mask_probs_for_labels(head: MaskHead, pooled: Tensor, labels: Tensor) -> Tensor:
    """`MaskHead` for export, only the given class's mask: pooled [N, C, P, P], labels int64
    [N] -> sigmoid probabilities [N, 2P, 2P].

    The same arithmetic as `head(pooled)` then picking the label's channel, in the operators
    a CPU runs fastest. Each output pixel (2i + a, 2j + b) of the 2x2 stride-2 deconv takes
    exactly one kernel tap (a, b), so the deconv is a 1x1 conv to C_out x 4 sub-pixel channels;
    the 1x1 logits conv then needs only the label's weights (a batched matmul over C_out, not
    all K classes), and only the [N, 4, P, P] logits are interleaved into [N, 2P, 2P].
    """
    x = pooled
    for conv in head.convs:
        x = conv(x).relu()
    deconv = head.deconv  # weight [C_in, C_out, 2, 2]
    c_in, c_out, kh, kw = deconv.weight.shape
    weight = deconv.weight.permute(1, 2, 3, 0).reshape(c_out * kh * kw, c_in, 1, 1)
    x = F.conv2d(x, weight, deconv.bias.repeat_interleave(kh * kw)).relu()
    n, _, p, _ = x.shape  # x [N, C_out * 4, P, P], channel o * 4 + a * 2 + b
    class_weight = head.logits.weight[:, :, 0, 0][labels]  # [N, C_out]
    logits = torch.bmm(class_weight[:, None, :], x.reshape(n, c_out, kh * kw * p * p))
    logits = logits.reshape(n, kh, kw, p, p).permute(0, 3, 1, 4, 2).reshape(n, kh * p, kw * p)
    return (logits + head.logits.bias[labels][:, None, None]).sigmoid()


class InferenceGraph(nn.Module):
    """A `MaskRCNN` (eval mode, shared modules) as one fixed-shape function.

    forward(images uint8 [B, 3, S, S], windows float [B, 4] (y1, x1, y2, x2)) ->
        boxes [B, D, 4] (padded frame), scores [B, D], labels int64 [B, D], valid bool [B, D],
        mask_probs [B, D, M, M] (sigmoid of the label's mask; zeros in invalid slots)
    i.e. the fields of `RawDetections`, in that order.
    """

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model
        anchors, counts = model.rpn.anchor_generator(model.image_size)
        self.register_buffer("anchors", anchors, persistent=False)
        self.counts = list(counts)

    def forward(self, images: Tensor, windows: Tensor) -> tuple[Tensor, ...]:
        m, rpn, heads = self.model, self.model.rpn, self.model.roi_heads
        s = m.image_size
        windows = windows.float()
        features = m.backbone(m.normalize(images, windows))
        objectness, deltas = rpn.head(features)
        proposals, proposal_valid = propose(
            objectness,
            deltas,
            self.anchors,
            self.counts,
            windows,
            pre_nms_top_n=rpn.pre_nms_top_n[1],
            post_nms_top_n=rpn.post_nms_top_n[1],
            nms_thresh=rpn.nms_thresh,
            min_size=rpn.min_size,
            score_thresh=rpn.score_thresh,
        )
        b, r, _ = proposals.shape
        pool = dict(
            image_size=s,
            sampling_ratio=heads.sampling_ratio,
            aligned=heads.aligned,
            canonical_scale=heads.canonical_scale,
            canonical_level=heads.canonical_level,
        )
        pooled, order = roi_align_levels(
            features, rois_with_image_index(proposals), output_size=heads.box_pool_size, **pool
        )
        inverse = _roi_order(order, b * r)
        class_logits, box_deltas = (t[inverse] for t in heads.box_head(pooled))
        boxes, scores, labels, valid = detection_layer(
            class_logits.reshape(b, r, -1),
            box_deltas.reshape(b, r, -1),
            proposals,
            proposal_valid,
            windows,
            box_weights=heads.box_weights,
            score_thresh=heads.score_thresh,
            nms_thresh=heads.nms_thresh,
            detections_per_img=heads.detections_per_img,
        )
        # The mask head runs on the valid detections plus one dummy RoI (a 1 px box of image
        # 0, label 1, written to a spare last slot), so its batch is never empty.
        d = boxes.shape[1]
        rois = torch.cat([rois_with_image_index(boxes), torch.tensor([[0.0, 0, 0, 1, 1]])])
        flat_labels = torch.cat([labels.reshape(-1), torch.ones(1, dtype=labels.dtype)])
        flat_valid = torch.cat([valid.reshape(-1), torch.ones(1, dtype=torch.bool)])
        sel = _nonzero(flat_valid)
        pooled, order = roi_align_levels(
            features, rois[sel], output_size=heads.mask_pool_size, **pool
        )
        slots = sel[order]  # the slot of each pooled RoI
        probs = mask_probs_for_labels(heads.mask_head, pooled, flat_labels[slots])
        mk = 2 * heads.mask_pool_size  # the mask head doubles the pooled side (deconv)
        mask_probs = torch.zeros((b * d + 1, mk, mk), dtype=probs.dtype)
        mask_probs = mask_probs.index_put((slots,), probs)[: b * d].reshape(b, d, mk, mk)
        return boxes, scores, labels, valid, mask_probs
