"""The whole inference as one traceable function of fixed-shape tensors (`InferenceGraph`).

The graph is the eager model's own code: normalisation, backbone, the RPN (head, anchors,
proposal layer), the RoI heads (pooler, box head, detection layer, mask head's `label_probs`),
traced. One primitive differs, because its output size depends on the data: the NMS. Eager it
is `mrcnn.layers.nms.batched_nms_top_k` (torchvision's `batched_nms`, survivors placed into
[B, k] slots); here it is `static_nms_top_k`, with the same contract:

    NMS             ONNX `NonMaxSuppression` (`non_max_suppression`, a PyTorch custom op that
                    both exporters write as that operator), then a fixed-size gather: survivors
                    are marked in a [B, N] mask (ScatterND) and each image's k best are a `TopK`
                    of the masked scores, so the slot count never varies.

Everything else traces as written, with the pooler's RoIAlign as ONNX `RoiAlign` (aligned=True
-> coordinate_transformation_mode "half_pixel", aligned=False -> "output_half_pixel", opset
>= 16, as torchvision exports it) and the heads on level-ordered RoIs (`Gather` back to RoI
order), the mask head on the valid detections plus one dummy RoI.

Shape shorthand: B images, S input side, N candidates, G groups, k slots, D detections, M mask
side. Used for export (`mrcnn.export.onnx`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.onnx.symbolic_helper import parse_args
from torchvision.ops import batched_nms

from mrcnn.modeling.model import MaskRCNN

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


def _top_survivors(scores: Tensor, image: Tensor, cell: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """scores [B, N]; the NMS survivors' image [S] and flat index `cell` [S] into N.

    -> index int64 [B, k] into N (best first), valid bool [B, k]. N may be below k: the rest
    of the slots are invalid.
    """
    b, n = scores.shape
    kept = torch.zeros((b, n), dtype=torch.bool, device=scores.device)
    kept = kept.index_put((image, cell), torch.ones_like(cell, dtype=torch.bool))
    masked = torch.where(kept, scores, torch.full_like(scores, _NOT_A_CANDIDATE))
    top, index = masked.topk(min(k, n), dim=1)
    valid = top > _SCORE_THRESHOLD
    if k > n:
        index = F.pad(index, (0, k - n))
        valid = F.pad(valid, (0, k - n))
    return torch.where(valid, index, torch.zeros_like(index)), valid


def static_nms_top_k(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor | None,
    num_groups: int,
    candidates: Tensor,
    iou_thresh: float,
    k: int,
) -> tuple[Tensor, Tensor]:
    """`mrcnn.layers.nms.batched_nms_top_k` in static shapes (same contract): boxes [B, N, 4],
    scores [B, N], groups, candidates bool [B, N] -> index int64 [B, k], valid bool [B, k].

    Shared boxes with groups (the proposal layer's levels): the groups are the classes of one
    `NonMaxSuppression`, each seeing only its own candidates' scores ([B, G, N]). Interleaved
    groups (`groups` None, the detection layer's class-minor candidates): each (image, group)
    is one batch entry with its own boxes ([B * G, N / G, 4]), so the per-class NMS is exact
    with no coordinate-offset trick and no [B, G, N] score tensor.
    """
    b, n = scores.shape
    masked = torch.where(candidates, scores, torch.full_like(scores, _NOT_A_CANDIDATE))
    if groups is None:
        g = num_groups
        r = n // g
        rows = non_max_suppression(
            boxes.reshape(b, r, g, 4).permute(0, 2, 1, 3).reshape(b * g, r, 4),
            masked.reshape(b, r, g).permute(0, 2, 1).reshape(b * g, 1, r),
            k,
            iou_thresh,
            _SCORE_THRESHOLD,
        )
        # Row (image * G + group, 0, r) -> image, and flat index r * G + group.
        image, cell = rows[:, 0] // g, rows[:, 2] * g + rows[:, 0] % g
    else:
        in_group = (
            groups[..., None, :] == torch.arange(num_groups, device=scores.device)[:, None]
        )  # [(B,) G, N]
        group_scores = torch.where(
            in_group, masked[:, None, :], torch.full_like(masked[:, None, :], _NOT_A_CANDIDATE)
        )  # [B, G, N]
        rows = non_max_suppression(boxes, group_scores, k, iou_thresh, _SCORE_THRESHOLD)
        image, cell = rows[:, 0], rows[:, 2]
    return _top_survivors(scores, image, cell, k)


class InferenceGraph(nn.Module):
    """A `MaskRCNN` (eval mode, shared modules) as one fixed-shape function: `forward` is
    `MaskRCNN.forward` in eval mode with the static NMS.

    forward(images uint8 [B, 3, S, S], windows float [B, 4] (y1, x1, y2, x2)) ->
        boxes [B, D, 4] (padded frame), scores [B, D], labels int64 [B, D], valid bool [B, D],
        mask_probs [B, D, M, M] (sigmoid of the label's mask; zeros in invalid slots)
    i.e. the fields of `RawDetections`, in that order.
    """

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, windows: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        s = m.image_size
        windows = windows.float()
        features = m.backbone(m.normalize(images, windows))
        proposals, valid, _ = m.rpn(features, windows, s, nms=static_nms_top_k)
        raw = m.roi_heads.detect(
            features, s, proposals, valid, windows, nms=static_nms_top_k, extra_heads=False
        )
        return raw.boxes, raw.scores, raw.labels, raw.valid, raw.mask_probs
