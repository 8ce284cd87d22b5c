"""The tensors that travel between data, model and users.

Shape shorthand used across the package:
    B   images in a batch          S   padded input side (image_size)
    G   ground-truth slots (MAX_GT, padded; `gt_valid` says which are real)
    m   mini-mask side (e.g. 56)   K   classes including background
    A   anchors over all levels    R   proposals (RoIs) per image
    D   detections per image       Kp  keypoint types
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "InferenceSteps", "RawDetections"]


@dataclass
class Batch:
    """A fixed-shape batch, as `mrcnn.data.collate` builds it and `MaskRCNN.forward` takes it.

    images:         uint8  [B, 3, S, S] resized and zero-padded (see `mrcnn.data.resize`)
    windows:        float  [B, 4] (y1, x1, y2, x2) of the real image inside the padded frame
    scales:         float  [B] resize factor original -> padded frame
    original_sizes: int64  [B, 2] (h, w) of the original image
    image_ids:      int64  [B] source (COCO) image ids
    gt_boxes:       float  [B, G, 4] xyxy in the padded frame       (training only)
    gt_labels:      int64  [B, G] contiguous labels 1..K-1, 0 in empty slots
    gt_mini_masks:  uint8  [B, G, m, m] each instance's mask cut to its box, resized to m x m
    gt_valid:       bool   [B, G] which slots hold an instance
    gt_keypoints:   float  [B, G, Kp, 3] (x, y, visibility) in the padded frame; visibility 0 =
                    not labelled, 1 = labelled but occluded, 2 = visible (keypoint models only)
    """

    images: Tensor
    windows: Tensor
    scales: Tensor
    original_sizes: Tensor
    image_ids: Tensor
    gt_boxes: Tensor | None = None
    gt_labels: Tensor | None = None
    gt_mini_masks: Tensor | None = None
    gt_valid: Tensor | None = None
    gt_keypoints: Tensor | None = None

    @property
    def has_targets(self) -> bool:
        return self.gt_boxes is not None

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {
            f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Batch(**moved)

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True) so host->GPU copies can overlap compute."""
        return Batch(
            **{
                f.name: (v.pin_memory() if isinstance(v, Tensor) else v)
                for f in fields(self)
                for v in [getattr(self, f.name)]
            }
        )


@dataclass
class RawDetections:
    """Fixed-shape detections in the padded frame, before pasting: what `MaskRCNN.forward`
    returns in eval mode (and `MaskRCNN.predict` always); `MaskRCNN.postprocess` turns them into
    one `Detections` per image.

    boxes:      float32 [B, D, 4] xyxy in the padded frame, each row sorted by score
    scores:     float32 [B, D] softmax score of the label
    labels:     int64   [B, D] class index 1..K-1 (0 in empty slots)
    valid:      bool    [B, D] which slots hold a detection (D = detections_per_img)
    mask_probs: float32 [B, D, M, M] the label's mask after sigmoid, in the box (M = 28);
                None for a model without a mask head
    keypoints:  float32 [B, D, Kp, 3] (x, y, heatmap logit) in the padded frame (keypoint
                models only, else None)
    mask_scores: float32 [B, D] class score x predicted mask IoU (Mask Scoring R-CNN only)
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    valid: Tensor
    mask_probs: Tensor | None
    keypoints: Tensor | None = None
    mask_scores: Tensor | None = None

    def numpy(self) -> dict[str, np.ndarray | None]:
        """Every field on the host as numpy (floats as float32): what
        `mrcnn.inference.postprocess.to_detections` takes."""
        out: dict[str, np.ndarray | None] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                v = v.detach().cpu()
                v = (v.float() if v.is_floating_point() else v).numpy()
            out[f.name] = v
        return out


@dataclass
class InferenceSteps:
    """Every stage's own output for one batch at inference (`MaskRCNN.inference_steps`), in the
    padded frame, for pictures and checks (matterport's `inspect_model` walk-through).

    anchors:          float [A, 4] xyxy, pyramid order; anchors_per_level: A split by level
    objectness:       float [B, A] RPN logits; rpn_deltas: float [B, A, 4] (dx, dy, dw, dh)
    proposals:        float [B, R, 4] after the proposal layer's NMS, sorted by score;
                      proposal_scores [B, R] (sigmoid); proposal_valid bool [B, R]
    candidate_boxes:  float [B, R * (K-1), 4] the detection layer's (proposal, class) boxes;
                      candidate_scores [B, R * (K-1)]; candidate_labels int64 [R * (K-1)];
                      candidate_ok bool [B, R * (K-1)]: above the score threshold (before NMS)
    detections:       `RawDetections` [B, D, ...] after the per-class NMS and top D, with
                      mask probabilities: exactly what `MaskRCNN.predict` returns
    """

    anchors: Tensor
    anchors_per_level: list[int]
    objectness: Tensor
    rpn_deltas: Tensor
    proposals: Tensor
    proposal_scores: Tensor
    proposal_valid: Tensor
    candidate_boxes: Tensor
    candidate_scores: Tensor
    candidate_labels: Tensor
    candidate_ok: Tensor
    detections: RawDetections
