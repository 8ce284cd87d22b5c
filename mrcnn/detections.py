"""What `detect` returns (eager `MaskRCNN` and `OnnxModel` alike): numpy only, no torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """One image's detections in original-image coordinates (what `MaskRCNN.detect` returns).

    boxes:  float32 [N, 4] xyxy in original-image pixels
    scores: float32 [N]
    labels: int64   [N] model class index (1..K-1; 0 = background is never returned)
    masks:  bool    [N, H, W] at original resolution
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)
