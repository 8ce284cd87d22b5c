"""Fine-tuning: a checkpoint for another class count loads everything but the predictors."""

from __future__ import annotations

import logging

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from mrcnn import presets
from mrcnn.modeling.model import build_model
from mrcnn.weights import PREDICTORS, load_init, save, torchvision_key
from tests.mrcnn.scenes import tiny_model

PREDICTOR_KEYS = sorted(f"{p}{t}" for p in PREDICTORS for t in ("weight", "bias"))


@pytest.fixture(scope="module")
def coco_checkpoint(tmp_path_factory):
    """A 91-class torchvision-format Mask R-CNN state dict (random weights, no download)."""
    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path_factory.mktemp("ckpt") / "maskrcnn_coco.pth"
    torch.save(tv.state_dict(), path)
    return path, tv.state_dict()


def test_torchvision_91_class_checkpoint_fine_tunes_into_4_classes(coco_checkpoint, caplog):
    path, tv_sd = coco_checkpoint
    torch.manual_seed(1)
    model = build_model(presets.torchvision_r50_fpn(num_classes=4, image_size=256))
    with caplog.at_level(logging.INFO, logger="mrcnn.weights"):
        skipped = load_init(model, path)
    assert skipped == PREDICTOR_KEYS
    assert "fine-tuning from 91 classes to 4" in caplog.text
    assert "roi_heads.box_head.cls_score.weight (91, 1024)->(4, 1024)" in caplog.text
    ours = model.state_dict()
    loaded = 0
    for k, v in tv_sd.items():
        key = torchvision_key(k)
        if key in skipped or k.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(ours[key], v, rtol=0, atol=0, msg=key)
        loaded += 1
    counters = sum(k.endswith("num_batches_tracked") for k in tv_sd)  # BatchNorm2d w/o weights
    assert loaded == len(tv_sd) - counters - len(PREDICTOR_KEYS) == 301
    # The predictors are fresh: the init distribution, not the checkpoint's rows.
    cls = ours["roi_heads.box_head.cls_score.weight"]
    assert cls.shape == (4, 1024)
    assert not torch.equal(cls, tv_sd["roi_heads.box_predictor.cls_score.weight"][:4])
    assert 0.005 < cls.std().item() < 0.02  # normal(std=0.01)
    assert torch.count_nonzero(ours["roi_heads.mask_head.logits.bias"]) == 0
    assert ours["roi_heads.box_head.bbox_pred.weight"].std().item() < 0.002  # std=0.001


def test_another_shape_mismatch_raises_naming_the_tensor(coco_checkpoint, tmp_path):
    _, tv_sd = coco_checkpoint
    sd = dict(tv_sd)
    sd["roi_heads.box_head.fc6.weight"] = sd["roi_heads.box_head.fc6.weight"][:512]
    torch.save(sd, tmp_path / "bad.pth")
    model = build_model(presets.torchvision_r50_fpn(num_classes=4, image_size=256))
    with pytest.raises(ValueError, match=r"'roi_heads\.box_head\.fc6\.weight' has shape \(512"):
        load_init(model, tmp_path / "bad.pth")
    # A predictor whose other dimensions differ is not a class-count change either.
    sd = dict(tv_sd)
    w = sd["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    sd["roi_heads.mask_predictor.mask_fcn_logits.weight"] = w[:5]
    torch.save(sd, tmp_path / "bad2.pth")
    with pytest.raises(ValueError, match=r"roi_heads\.mask_head\.logits\.weight"):
        load_init(model, tmp_path / "bad2.pth")


def test_saved_folder_of_any_class_count_fine_tunes(tmp_path):
    src = tiny_model(seed=0, num_classes=7)
    save(src, tmp_path / "m7")
    dst = tiny_model(seed=5, num_classes=3)
    skipped = load_init(dst, tmp_path / "m7")
    assert skipped == PREDICTOR_KEYS
    for k, v in src.state_dict().items():
        if k in skipped:
            assert dst.state_dict()[k].shape[0] in (3, 12)
        else:
            assert torch.equal(dst.state_dict()[k], v), k
    # Same class count: everything loads, nothing is skipped.
    same = tiny_model(seed=5, num_classes=7)
    assert load_init(same, tmp_path / "m7") == []
    assert torch.equal(
        same.state_dict()["roi_heads.mask_head.logits.weight"],
        src.state_dict()["roi_heads.mask_head.logits.weight"],
    )


def test_load_init_says_what_it_expected(tmp_path):
    model = tiny_model()
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_init(model, tmp_path / "missing.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model.safetensors"):
        load_init(model, tmp_path / "empty")


def test_imagenet_checkpoint_initialises_the_backbone_only(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    ref = resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    model = build_model(presets.shapes_small(backbone={"width_multiplier": 1.0}))
    head = model.roi_heads.box_head.fc6.weight.clone()
    assert load_init(model, tmp_path / "r18.pth") == []
    torch.testing.assert_close(
        model.backbone.body.layer2[0].conv1.weight, ref.layer2[0].conv1.weight
    )
    assert torch.equal(model.roi_heads.box_head.fc6.weight, head)
