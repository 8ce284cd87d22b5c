import pytest

from mrcnn import Config, presets


def test_round_trip_through_dict():
    cfg = presets.torchvision_r50_fpn(num_classes=5, image_size=512, rpn_nms_thresh=0.6)
    again = Config.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.rpn.nms_thresh == 0.6
    assert again.input.image_size == 512
    assert isinstance(again.anchors.sizes, tuple)


def test_partial_dict_keeps_defaults():
    cfg = Config.from_dict({"num_classes": 3, "rpn": {"nms_thresh": 0.65}})
    assert cfg.rpn.nms_thresh == 0.65
    assert cfg.rpn.post_nms_top_n_test == 1000
    assert cfg.num_classes == 3


@pytest.mark.parametrize(
    ("d", "key"),
    [
        ({"rpn": {"nms_tresh": 0.5}}, "rpn.nms_tresh"),
        ({"backbone": {"arch": "vgg16"}}, "backbone.arch"),
        ({"anchors": {"sizes": [32, 64]}}, "anchors.sizes"),
        ({"input": {"image_size": 1000}}, "input.image_size"),
        ({"roi_heads": {"box_weights": [10, 10, 5]}}, "roi_heads.box_weights"),
        ({"inference": {"detections_per_img": "many"}}, "inference.detections_per_img"),
        ({"roi_heads": {"aligned": 1}}, "roi_heads.aligned"),
        ({"num_classes": 1}, "num_classes"),
        ({"colour": "red"}, "colour"),
        ({"rpn": 3}, "rpn"),
    ],
)
def test_bad_keys_raise_naming_the_key(d, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        Config.from_dict(d)


def test_torchvision_preset_takes_torchvision_names():
    cfg = presets.torchvision_r50_fpn(
        box_score_thresh=0.2,
        box_nms_thresh=0.4,
        box_detections_per_img=50,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=300,
        rpn_nms_thresh=0.6,
    )
    assert (cfg.inference.score_thresh, cfg.inference.nms_thresh) == (0.2, 0.4)
    assert cfg.inference.detections_per_img == 50
    assert (cfg.rpn.pre_nms_top_n_test, cfg.rpn.post_nms_top_n_test) == (500, 300)
    assert cfg.rpn.nms_thresh == 0.6
    assert cfg.backbone.arch == "resnet50" and cfg.backbone.norm == "frozen_bn"
    assert cfg.roi_heads.aligned is False


def test_preset_overrides_and_unknown_preset():
    cfg = presets.shapes_small(rpn={"nms_thresh": 0.5})
    assert cfg.rpn.nms_thresh == 0.5
    assert cfg.rpn.pre_nms_top_n_train == presets.shapes_small().rpn.pre_nms_top_n_train != 2000
    assert cfg.backbone.arch == "resnet18"
    with pytest.raises(ValueError, match="unknown preset"):
        presets.get("yolo")
