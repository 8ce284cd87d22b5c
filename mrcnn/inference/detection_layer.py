"""Detection layer: class-specific boxes, per-class NMS, top-k, in fixed [B, D] slots.

Shape shorthand: B images, R proposals per image, K classes incl. background, D detections per
image, M mask side (28).

Like torchvision's `RoIHeads.postprocess_detections`, every (proposal, foreground class) pair
is a candidate with its own decoded box; candidates above the score threshold go through one
`batched_nms` grouped by (image, class), and each image keeps its D best, in fixed [B, D] slots.
The kept boxes' masks are pasted into the image by `mrcnn.layers.resample`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mrcnn.layers import box_coder
from mrcnn.layers.nms import NmsTopK, batched_nms_top_k, gather_slots

MIN_BOX_SIZE = 1e-2  # drop degenerate boxes (torchvision's remove_small_boxes at inference)


@torch.no_grad()
def detection_candidates(
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: Tensor,
    proposal_valid: Tensor,
    windows: Tensor,
    *,
    box_weights: tuple[float, ...],
    score_thresh: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The detection layer before its NMS: every (proposal, foreground class) pair.

    class_logits [B, R, K], box_deltas [B, R, K * 4], proposals [B, R, 4] + valid [B, R],
    windows [B, 4] -> boxes [B, R * (K-1), 4] (decoded with the class's deltas, clipped to the
    window), scores [B, R * (K-1)] (softmax), labels int64 [R * (K-1)] (class-minor: 1..K-1
    for proposal 0, then for proposal 1, ...), ok bool [B, R * (K-1)]: above `score_thresh`,
    from a valid proposal, not degenerate.
    """
    b, r, k = class_logits.shape
    scores = F.softmax(class_logits.float(), dim=-1)[..., 1:]  # [B, R, K-1], background dropped
    deltas = box_deltas.float().reshape(b, r, k, 4)[:, :, 1:]
    boxes = box_coder.decode(deltas, proposals.float()[:, :, None], box_weights)  # [B,R,K-1,4]
    boxes = box_coder.clip_to_windows(boxes, windows)
    ok = (scores > score_thresh) & proposal_valid[..., None]
    ok = ok & box_coder.box_sizes_at_least(boxes, MIN_BOX_SIZE)  # not &=: ONNX has no in-place and
    labels = torch.arange(1, k, device=scores.device).repeat(r)  # [R * (K-1)], class-minor
    return boxes.reshape(b, -1, 4), scores.reshape(b, -1), labels, ok.reshape(b, -1)


@dataclass
class DetectionLayer:
    """The detection layer's settings; called on the box head's outputs.

    __call__(class_logits [B, R, K], box_deltas [B, R, K * 4], proposals [B, R, 4],
             proposal_valid bool [B, R], windows [B, 4], *, box_weights, nms)
        -> boxes [B, D, 4] (padded frame), scores [B, D], labels int64 [B, D], valid bool [B, D],
        each row sorted by score: `detection_candidates`, then one NMS per (image, class) and
        the D best. `nms` is the NMS primitive (`mrcnn.layers.nms`; the exported graph passes
        its static one).

    Attributes (settable, e.g. `model.roi_heads.detection_layer.score_thresh = 0.3`):
        score_thresh: class scores at or below this are dropped before NMS (0.05).
        nms_thresh: IoU threshold of the per-class NMS (0.5).
        detections_per_img: D, the detections kept per image (100).
    """

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100

    @torch.no_grad()
    def __call__(
        self,
        class_logits: Tensor,
        box_deltas: Tensor,
        proposals: Tensor,
        proposal_valid: Tensor,
        windows: Tensor,
        *,
        box_weights: tuple[float, ...],
        nms: NmsTopK = batched_nms_top_k,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        k = class_logits.shape[-1]
        boxes, scores, labels, ok = detection_candidates(
            class_logits,
            box_deltas,
            proposals,
            proposal_valid,
            windows,
            box_weights=box_weights,
            score_thresh=self.score_thresh,
        )
        # Candidates are class-minor (proposal r, class c at r * (K-1) + c - 1): the groups
        # are interleaved, one per foreground class.
        index, valid = nms(boxes, scores, None, k - 1, ok, self.nms_thresh, self.detections_per_img)
        out_boxes = gather_slots(boxes, index, valid)
        out_scores = gather_slots(scores, index, valid)
        out_labels = torch.where(valid, labels[index], torch.zeros_like(index))
        return out_boxes, out_scores, out_labels, valid
