import pytest
import torch
from torchvision.models import resnet18

from mrcnn import presets
from mrcnn.modeling.model import build_model
from mrcnn.weights import load, load_backbone, read_meta, read_state_dict, save
from tests.mrcnn.scenes import make_batch, tiny_model


def test_save_load_round_trip_gives_the_same_outputs(tmp_path):
    model = tiny_model(inference={"score_thresh": 0.0})
    model.eval()
    batch, _ = make_batch()
    ref = model.predict(batch)
    save(model, tmp_path / "m", extra={"class_map": {"1": 7}})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    again = load(tmp_path / "m")
    assert again.cfg == model.cfg
    out = again.predict(batch)
    torch.testing.assert_close(out.scores, ref.scores)
    torch.testing.assert_close(out.mask_probs, ref.mask_probs)
    save(again, tmp_path / "m")  # overwriting an existing save works
    assert not (tmp_path / "m.tmp").exists()


def test_config_json_records_the_preset_and_older_files_still_load(tmp_path):
    model = tiny_model()
    save(model, tmp_path / "m", extra={"class_map": {"1": 7}}, preset="shapes_small")
    meta = read_meta(tmp_path / "m")
    assert meta["preset"] == "shapes_small" and meta["class_map"] == {"1": 7}
    assert meta["config"] == model.cfg.to_dict()
    save(model, tmp_path / "old")  # as saved before the preset was recorded: no such key
    assert "preset" not in read_meta(tmp_path / "old")
    assert load(tmp_path / "old").cfg == model.cfg


def test_load_missing_dir_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load(tmp_path)


def test_load_imagenet_backbone(tmp_path):
    torch.manual_seed(0)
    ref = resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    cfg = presets.shapes_small(backbone={"width_multiplier": 1.0, "norm": "frozen_bn"})
    model = build_model(cfg)
    load_backbone(model, read_state_dict(tmp_path / "r18.pth"))
    torch.testing.assert_close(
        model.backbone.body.layer3[1].conv2.weight, ref.layer3[1].conv2.weight
    )
    torch.testing.assert_close(model.backbone.body.bn1.running_var, ref.bn1.running_var)
    wrong = build_model(
        presets.shapes_small(backbone={"arch": "resnet34", "width_multiplier": 1.0})
    )
    with pytest.raises(ValueError, match="backbone.arch"):
        load_backbone(wrong, ref.state_dict())


def test_read_state_dict_refuses_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="[Ww]eights only"):
        read_state_dict(tmp_path / "evil.pth")
