"""What `detect` returns (eager `MaskRCNN` and `OnnxModel` alike): numpy only, no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mrcnn.inference.grid_masks import GridMasks


@dataclass
class Detections:
    """One image's detections in original-image coordinates (what `MaskRCNN.detect` returns).

    boxes:  float32 [N, 4] xyxy in original-image pixels
    scores: float32 [N]
    labels: int64   [N] model class index (1..K-1; 0 = background is never returned)
    masks:  bool    [N, H, W] at original resolution ([N, 0, 0] for a model without a mask
            head, e.g. torchvision's Keypoint R-CNN); or, from `MaskRCNN.postprocess(...,
            grid_masks=True)`, a `mrcnn.inference.grid_masks.GridMasks` (the masks as the mask
            head's grid and their boxes; `.full()` gives [N, H, W], `.encode()` COCO RLEs)
    keypoints:   float32 [N, Kp, 3] (x, y, score) in original-image pixels (keypoint models;
                 None otherwise); the score is the heatmap logit at the keypoint, as torchvision's
    mask_scores: float32 [N] the masks' own scores (Mask Scoring R-CNN: class score x predicted
                 mask IoU; None otherwise): the score of the segm results, boxes keep `scores`
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | GridMasks
    keypoints: np.ndarray | None = None
    mask_scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)
