"""The evaluate stage with keypoint models: what it evaluates, logs and draws."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn import presets
from mrcnn.modeling.model import build_model
from pipeline.params import EvaluateParams
from pipeline.reporting.evaluate import _keypoints
from pipeline.stages.evaluate import iou_types
from pipeline.tracking.runs import mlflow_metrics

SLIM = {
    "backbone": {"width_multiplier": 0.25, "fpn_channels": 16},
    "roi_heads": {"box_head_dim": 32, "mask_head_channels": 8, "mask_head_convs": 1},
}


def test_iou_types_follow_the_heads():
    kp = {"count": 3, "head_channels": 8, "head_convs": 1}
    plain = build_model(presets.shapes_small(**SLIM))
    assert iou_types(plain) == ("bbox", "segm")
    with_kp = build_model(presets.shapes_small(keypoints=kp, **SLIM))
    assert iou_types(with_kp) == ("bbox", "segm", "keypoints")
    no_masks = build_model(
        presets.shapes_small(
            keypoints=kp, **{**SLIM, "roi_heads": {**SLIM["roi_heads"], "masks": False}}
        )
    )
    assert iou_types(no_masks) == ("bbox", "keypoints")


def test_keypoint_metrics_are_logged():
    metrics = {
        "bbox": {"AP": 0.5},
        "keypoints": {"AP": 0.25, "APl": -1.0},
        "per_category": {"square": {"bbox_AP": 0.5, "keypoints_AP": 0.2}},
    }
    assert mlflow_metrics(metrics) == {
        "val/final/bbox_AP": 0.5,
        "val/final/keypoints_AP": 0.25,
        "val/final/per_category/square/bbox_AP": 0.5,
        "val/final/per_category/square/keypoints_AP": 0.2,
    }


def test_overlay_keypoints_zoom_with_the_boxes():
    entries = [{"keypoints": [10.0, 20.0, 2, 3.5, 4.0, 0]}, {"keypoints": [1, 2, 1, 0, 0, 0]}]
    np.testing.assert_allclose(
        _keypoints(entries, 2), [[[20, 40, 2], [7, 8, 0]], [[2, 4, 1], [0, 0, 0]]]
    )
    assert _keypoints([{"bbox": [0, 0, 1, 1]}], 2) is None and _keypoints([], 2) is None


def test_oks_sigmas_must_be_positive():
    assert EvaluateParams(oks_sigmas=(0.05, 0.1)).oks_sigmas == (0.05, 0.1)
    with pytest.raises(ValueError, match="oks_sigmas"):
        EvaluateParams(oks_sigmas=(0.05, 0.0)).validate()
