"""Our model with torchvision's weights gives torchvision's detections.

torchvision's `maskrcnn_resnet50_fpn` is built with a fixed seed and re-initialised with
non-trivial random weights (no download needed), loaded into our model through
`load_torchvision`, and both run on the same image whose size equals the input size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.ops import box_iou

from mrcnn import presets
from mrcnn.modeling.model import build_model
from mrcnn.weights import load_torchvision

S = 320


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Scale-preserving random weights everywhere, so scores are spread and no ties decide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_mean"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif p.dim() == 1 and ("bn" in name or "downsample.1" in name):
                p.copy_(
                    torch.rand(p.shape, generator=g) * 0.5 + 0.5
                    if name.endswith("weight")
                    else torch.randn(p.shape, generator=g) * 0.1
                )
            elif p.dim() == 1:  # conv / linear biases
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:  # fan-in scaled weights keep activations O(1) through the network
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / fan_in) ** 0.5)
        # Spread the mask logits (std ~0.14 -> ~3) so masks have real shapes, not a coin flip
        # at the 0.5 threshold everywhere.
        sd = model.state_dict()
        if "roi_heads.mask_predictor.mask_fcn_logits.weight" in sd:  # Keypoint R-CNN has none
            sd["roi_heads.mask_predictor.mask_fcn_logits.weight"].mul_(20)


def _image(seed: int = 0) -> np.ndarray:
    """Smooth random blobs: structure at several scales for the pyramid to respond to."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S]
    img = np.full((S, S, 3), 90.0) + rng.normal(0, 8, (S, S, 3))
    for _ in range(12):
        cy, cx, r = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(10, 90)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.uniform(0, 255, 3)
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=S, max_size=S, box_score_thresh=0.0
    )
    _randomise(tv, seed=1)
    tv.eval()
    ours = build_model(
        presets.torchvision_r50_fpn(num_classes=91, image_size=S, box_score_thresh=0.0)
    )
    load_torchvision(ours, tv.state_dict())
    ours.eval()
    return tv, ours


def test_rpn_proposals_match(models):
    tv, ours = models
    img = _image()
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        images, _ = tv.transform([x])
        tv_props = tv.rpn(images, tv.backbone(images.tensors))[0][0]
        batch = ours.prepare([img])
        feats = ours.backbone(ours.normalize(batch.images, batch.windows))
        props, valid, _ = ours.rpn(feats, batch.windows, S)
    props = props[0][valid[0]]
    assert len(tv_props) > 500  # a real test: many proposals survive
    assert abs(len(props) - len(tv_props)) <= 0.01 * len(tv_props)
    err = torch.cdist(tv_props, props, p=1).min(dim=1).values
    assert (err < 1e-2).float().mean() > 0.99
    # Same order too: the top 100 are the same boxes in the same ranks.
    assert torch.allclose(tv_props[:100], props[:100], atol=1e-2)


def test_detections_match(models):
    tv, ours = models
    img = _image()
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        ref = tv([x])[0]
    det = ours.detect([img])[0]
    assert len(ref["boxes"]) == 100 and len(det) == 100  # score threshold 0 fills the top 100
    ref_masks = (ref["masks"][:, 0] > 0.5).numpy()
    ours_boxes = torch.from_numpy(det.boxes)
    matched, mask_ious = 0, []
    for i in range(len(ref["boxes"])):
        same = np.flatnonzero(det.labels == int(ref["labels"][i]))
        if len(same) == 0:
            continue
        err = (ours_boxes[same] - ref["boxes"][i]).abs().max(dim=1).values
        j = same[int(err.argmin())]
        if err.min() < 1e-2 and abs(det.scores[j] - float(ref["scores"][i])) < 1e-4:
            matched += 1
            inter = (det.masks[j] & ref_masks[i]).sum()
            union = (det.masks[j] | ref_masks[i]).sum()
            mask_ious.append(1.0 if union == 0 else inter / union)
    assert matched >= 95, f"only {matched}/100 detections matched"
    # Masks are real shapes: most are neither empty nor filling their whole box.
    areas = (ref["boxes"][:, 2] - ref["boxes"][:, 0]) * (ref["boxes"][:, 3] - ref["boxes"][:, 1])
    fill = det.masks.sum(axis=(1, 2)) / areas.numpy().clip(min=1)
    assert ((fill > 0.05) & (fill < 0.95)).mean() > 0.5
    assert np.mean(mask_ious) > 0.98
    assert np.min(mask_ious) > 0.9
    # Boxes are real: not all degenerate, spread over the image.
    assert float(box_iou(ours_boxes, ours_boxes).mean()) < 0.9


def test_load_torchvision_rejects_wrong_keys(models):
    tv, _ = models
    ours = build_model(presets.torchvision_r50_fpn(num_classes=91, image_size=S))
    sd = dict(tv.state_dict())
    sd["roi_heads.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected"):
        load_torchvision(ours, sd)
    sd.pop("roi_heads.extra.weight")
    sd.pop("rpn.head.cls_logits.weight")
    with pytest.raises(ValueError, match="missing"):
        load_torchvision(ours, sd)
    # Another class count is fine-tuning (tests/mrcnn/test_finetune.py); any other shape is not.
    small = build_model(presets.torchvision_r50_fpn(num_classes=5, image_size=S))
    assert len(load_torchvision(small, tv.state_dict())) == 6
    sd = dict(tv.state_dict())
    sd["rpn.head.conv.0.0.weight"] = sd["rpn.head.conv.0.0.weight"][:, :128]
    with pytest.raises(ValueError, match=r"'rpn\.head\.conv\.weight' has shape"):
        load_torchvision(small, sd)
