"""Our Keypoint R-CNN with torchvision's weights gives torchvision's keypoints.

torchvision's `keypointrcnn_resnet50_fpn` gets non-trivial random weights (no download), they are
loaded into `presets.torchvision_keypoint_r50_fpn` through `load_torchvision`, and both run on the
same image whose size equals the input size. 20 detections per image keep the 8 x 512 keypoint
head (~7 GFLOP per RoI) cheap on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection import keypointrcnn_resnet50_fpn

from mrcnn import presets
from mrcnn.modeling.model import build_model
from mrcnn.weights import load_torchvision
from tests.mrcnn.modeling.test_parity_torchvision import S, _image, _randomise

D = 20


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    tv = keypointrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        min_size=S,
        max_size=S,
        box_score_thresh=0.0,
        box_detections_per_img=D,
    )
    _randomise(tv, seed=2)
    tv.eval()
    cfg = presets.torchvision_keypoint_r50_fpn(
        num_classes=2,
        num_keypoints=17,
        image_size=S,
        box_score_thresh=0.0,
        box_detections_per_img=D,
    )
    ours = build_model(cfg)
    load_torchvision(ours, tv.state_dict())
    ours.eval()
    return tv, ours


@pytest.mark.slow
def test_keypoints_match(models):
    tv, ours = models
    img = _image(seed=3)
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        ref = tv([x])[0]
    det = ours.detect([img])[0]
    assert len(ref["boxes"]) == D and len(det) == D
    assert det.masks.shape == (D, 0, 0) and det.keypoints.shape == (D, 17, 3)
    ours_boxes = torch.from_numpy(det.boxes)
    matched, kp_err, score_err = 0, [], []
    for i in range(D):
        err = (ours_boxes - ref["boxes"][i]).abs().max(dim=1).values
        j = int(err.argmin())
        if err[j] < 1e-2 and abs(det.scores[j] - float(ref["scores"][i])) < 1e-4:
            matched += 1
            kp_err.append(np.abs(det.keypoints[j, :, :2] - ref["keypoints"][i, :, :2].numpy()))
            score_err.append(np.abs(det.keypoints[j, :, 2] - ref["keypoints_scores"][i].numpy()))
    assert matched >= D - 1, f"only {matched}/{D} detections matched"
    kp_err, score_err = np.stack(kp_err), np.stack(score_err)
    # Every keypoint within 1e-2 px, every heatmap score within 1e-4 (relative to its size).
    assert (kp_err.max(axis=-1) < 1e-2).mean() == 1.0, kp_err.max()
    ref_scale = np.abs(ref["keypoints_scores"].numpy()).max()
    assert score_err.max() < 1e-4 * max(1.0, ref_scale)
    # Keypoints are real: spread inside their boxes, not all in one cell.
    assert len(np.unique(det.keypoints[..., :2].reshape(-1, 2).round(1), axis=0)) > 5 * D


def test_preset_and_weight_names_fit_torchvision(models):
    tv, ours = models
    cfg = ours.cfg
    assert cfg.keypoints.count == 17 and cfg.keypoints.heatmap_size == 56
    assert cfg.keypoints.flip_map[1:3] == (2, 1) and not cfg.roi_heads.masks
    assert ours.roi_heads.mask_head is None and len(ours.roi_heads.keypoint_head.convs) == 8
    sd = dict(tv.state_dict())
    sd.pop("roi_heads.keypoint_head.14.weight")
    with pytest.raises(ValueError, match="missing"):
        load_torchvision(ours, sd)
