"""Detection layer: class-specific boxes, per-class NMS, top-k, in fixed [B, D] slots.

Shape shorthand: B images, R proposals per image, K classes incl. background, D detections per
image, M mask side (28).

Like torchvision's `RoIHeads.postprocess_detections`, every (proposal, foreground class) pair
is a candidate with its own decoded box; candidates above the score threshold go through one
`batched_nms` grouped by (image, class), and each image keeps its D best, in fixed [B, D] slots.
The kept boxes' masks are pasted into the image by `mrcnn.inference.mask_paste`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mrcnn.layers import box_coder
from mrcnn.layers.nms import NmsTopK, batched_nms_top_k, gather_slots

MIN_BOX_SIZE = 1e-2  # drop degenerate boxes (torchvision's remove_small_boxes at inference)


@dataclass
class DetectionLayer:
    """The detection layer: every (proposal, foreground class) pair is a candidate with its own
    decoded box (`candidates`); calling it runs one NMS per (image, class) over them and keeps
    each image's D best, in fixed [B, D] slots.

    __call__(class_logits [B, R, K], box_deltas [B, R, K * 4], proposals [B, R, 4],
             proposal_valid bool [B, R], windows [B, 4], *, box_weights, nms)
        -> boxes [B, D, 4] (padded frame), scores [B, D], labels int64 [B, D], valid bool [B, D],
        each row sorted by score. `nms` is the NMS primitive (`mrcnn.layers.nms`; the exported
        graph passes its static one).

    Attributes (settable, e.g. `model.roi_heads.detection_layer.score_thresh = 0.3`):
        score_thresh: class scores at or below this are dropped before NMS (0.05).
        nms_thresh: IoU threshold of the per-class NMS (0.5).
        detections_per_img: D, the detections kept per image (100).
    """

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100

    @torch.no_grad()
    def candidates(
        self,
        class_logits: Tensor,
        box_deltas: Tensor,
        proposals: Tensor,
        proposal_valid: Tensor,
        windows: Tensor,
        *,
        box_weights: tuple[float, ...],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The detection layer before its NMS: every (proposal, foreground class) pair.

        -> boxes [B, R * (K-1), 4] (decoded with the class's deltas, clipped to the window),
        scores [B, R * (K-1)] (softmax), labels int64 [R * (K-1)] (class-minor: 1..K-1 for
        proposal 0, then for proposal 1, ...), ok bool [B, R * (K-1)]: above `score_thresh`,
        from a valid proposal, not degenerate.
        """
        b, r, k = class_logits.shape
        scores = F.softmax(class_logits.float(), dim=-1)[..., 1:]  # [B, R, K-1], no background
        deltas = box_deltas.float().reshape(b, r, k, 4)[:, :, 1:]
        boxes = box_coder.decode(deltas, proposals.float()[:, :, None], box_weights)
        boxes = box_coder.clip_to_windows(boxes, windows)  # [B, R, K-1, 4]
        ok = (scores > self.score_thresh) & proposal_valid[..., None]
        ok = ok & box_coder.box_sizes_at_least(boxes, MIN_BOX_SIZE)  # not &=: no in-place in ONNX
        labels = torch.arange(1, k, device=scores.device).repeat(r)  # [R * (K-1)], class-minor
        return boxes.reshape(b, -1, 4), scores.reshape(b, -1), labels, ok.reshape(b, -1)

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
        boxes, scores, labels, ok = self.candidates(
            class_logits, box_deltas, proposals, proposal_valid, windows, box_weights=box_weights
        )
        # Candidates are class-minor (proposal r, class c at r * (K-1) + c - 1): the groups are
        # interleaved, one per foreground class.
        index, valid = nms(boxes, scores, None, k - 1, ok, self.nms_thresh, self.detections_per_img)
        out_boxes = gather_slots(boxes, index, valid)
        out_scores = gather_slots(scores, index, valid)
        out_labels = torch.where(valid, labels[index], torch.zeros_like(index))
        return out_boxes, out_scores, out_labels, valid
