import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from safetensors.torch import save_file
from torchvision.models import resnet18

from mrcnn import presets
from mrcnn.modeling.model import build_model
from mrcnn.weights import (
    NotASavedModelError,
    load,
    load_backbone,
    load_init,
    read_meta,
    read_state_dict,
    save,
)
from tests.fuzz import fuzz, fuzz_settings
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
    again = load(tmp_path / "m", channels_last=False)
    assert again.cfg == model.cfg
    out = again.predict(batch)
    torch.testing.assert_close(out.scores, ref.scores)
    torch.testing.assert_close(out.mask_probs, ref.mask_probs)
    save(again, tmp_path / "m")  # overwriting an existing save works
    assert not (tmp_path / "m.tmp").exists()


def test_load_on_cpu_is_channels_last_with_the_same_detections(tmp_path):
    """On CPU `load` gives the NHWC model (oneDNN's faster convolutions): same detections up to
    float rounding, and it saves back as plain contiguous tensors."""
    model = tiny_model(inference={"score_thresh": 0.0})
    model.eval()
    batch, _ = make_batch()
    ref = model.predict(batch)
    save(model, tmp_path / "m")
    fast = load(tmp_path / "m")
    conv = fast.backbone.body.conv1.weight
    assert fast.channels_last and conv.is_contiguous(memory_format=torch.channels_last)
    assert not conv.is_contiguous()  # really NHWC, not a layout both formats share
    out = fast.predict(batch)
    assert out.valid.sum() > 0 and torch.equal(out.valid, ref.valid)
    torch.testing.assert_close(out.boxes, ref.boxes, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(out.scores, ref.scores, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(out.mask_probs, ref.mask_probs, atol=1e-4, rtol=1e-3)
    save(fast, tmp_path / "again")
    plain = load(tmp_path / "again", channels_last=False)
    assert plain.backbone.body.conv1.weight.is_contiguous() and not plain.channels_last
    torch.testing.assert_close(plain.predict(batch).scores, ref.scores)


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
    with pytest.raises(ValueError, match="not a checkpoint of tensors"):
        read_state_dict(tmp_path / "evil.pth")


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("notes.pth", b"not weights at all\n", "not a checkpoint of tensors"),
        ("cut.pth", None, "not a weights file torch can read"),  # a checkpoint cut short
        ("model.safetensors", b"junk", "not a weights file torch can read"),
        ("empty.pt", b"", "not a weights file: it is empty"),
        ("numbers.pth", "numbers", "holds no state dict of tensors"),
    ],
)
def test_read_state_dict_says_when_a_file_is_not_what_it_claims(tmp_path, name, content, reason):
    """A file named like weights that is not: one ValueError naming the file and why, never
    torch's or safetensors' own exception types (the stages report ValueError in one line)."""
    path = tmp_path / name
    if content is None:
        torch.save({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif content == "numbers":
        torch.save({"lr": 0.1, "w": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=reason) as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)


def _pth(path, value) -> None:
    torch.save(value, path)


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("hello.pth", lambda p: p.write_text("hello\n"), "it is text"),
        ("empty.pth", lambda p: p.write_bytes(b""), "it is empty"),
        ("empty_dict.pth", lambda p: _pth(p, {}), "holds no tensors"),
        ("int_keys.pth", lambda p: _pth(p, {1: torch.zeros(1)}), "a key is a int, not a name"),
        ("list.pth", lambda p: _pth(p, [torch.zeros(1)]), "holds no state dict of tensors"),
        ("object.pkl", lambda p: p.write_bytes(pickle.dumps(Exception("x"))), "a Python pickle"),
        ("other.zip.pth", lambda p: _zip(p), "a zip archive, but not a whole PyTorch checkpoint"),
        ("zip.safetensors", lambda p: _zip(p), "not a weights file torch can read"),
        ("pth.safetensors", lambda p: _pth(p, {"w": torch.zeros(2)}), "not a weights file"),
        ("st.pth", lambda p: save_file({"w": torch.zeros(2)}, str(p)), "name it .safetensors"),
        ("cut.safetensors", lambda p: _cut_safetensors(p), "not a weights file torch can read"),
    ],
)
def test_every_file_that_is_not_what_it_claims_is_one_value_error(tmp_path, name, make, reason):
    """Issue 23: each of these is one ValueError naming the file and saying what it is (int
    keys raised AttributeError from load_init, an empty dict loaded as weights)."""
    path = tmp_path / name
    make(path)
    with pytest.raises(ValueError, match=reason) as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ValueError):
        load_init(tiny_model(), path)


def _zip(path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not a checkpoint")


def _cut_safetensors(path) -> None:
    save_file({"w": torch.zeros(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:500])


def _saved(tmp_path, name="m"):
    return save(tiny_model(), tmp_path / name)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda m: (m / "config.json").unlink(), "is not a saved model"),
        (lambda m: (m / "model.safetensors").unlink(), "is not a saved model"),
        (lambda m: (m / "config.json").write_text("{not json"), "config.json is not JSON"),
        (lambda m: (m / "config.json").write_bytes(b"\xff\xfe"), "config.json is not JSON"),
        (lambda m: (m / "config.json").write_text("[1]"), "not a JSON object"),
        (lambda m: (m / "config.json").write_text("{}"), "holds no usable model config"),
        (
            lambda m: (m / "config.json").write_text('{"config": {"bogus": 1}}'),
            "holds no usable model config (unknown config key 'bogus'",
        ),
        (lambda m: (m / "model.safetensors").write_bytes(b"hello"), "model.safetensors is not"),
        (lambda m: _cut(m / "model.safetensors"), "model.safetensors is not a weights file"),
        (
            lambda m: save_file({"w": torch.zeros(1)}, str(m / "model.safetensors")),
            "does not fit the model its config.json describes: Missing key",
        ),
    ],
)
def test_a_saved_model_folder_that_is_not_one_is_one_value_error(tmp_path, damage, reason):
    """`weights.load` (evaluate, export, predict, the pyfunc) on a damaged folder: one
    ValueError naming the file (was KeyError, TypeError, SafetensorError, RuntimeError)."""
    folder = _saved(tmp_path)
    damage(folder)
    with pytest.raises(ValueError, match=re.escape(reason)) as caught:
        load(folder)
    assert str(folder) in str(caught.value)


def test_a_folder_without_its_files_is_still_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load(tmp_path)
    with pytest.raises(NotASavedModelError):
        load(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a saved model"):
        load(tmp_path / "file")


def test_load_init_names_a_damaged_saved_model(tmp_path):
    folder = _saved(tmp_path)
    _cut(folder / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors is not a weights file"):
        load_init(tiny_model(), folder)


def _cut(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@fuzz
@fuzz_settings(60)
@given(
    which=st.sampled_from(["model.pth", "model.safetensors", "config.json"]),
    kind=st.sampled_from(["truncate", "flip", "zero_tail"]),
    at=st.floats(0, 1, exclude_max=True),
    bit=st.integers(0, 7),
)
def test_fuzz_damaged_weights_load_or_raise_value_error(saved_files, which, kind, at, bit):
    """A real checkpoint and saved model, damaged: loading works or raises ValueError (never
    another exception, never a crash); bytes inside tensor data may load (no checksum there)."""
    folder, pth = saved_files
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(shutil.copytree(folder, Path(tmp) / "m"))
        shutil.copy(pth, Path(tmp) / "model.pth")
        target = Path(tmp) / "model.pth" if which == "model.pth" else copy / which
        data = bytearray(target.read_bytes())
        p = int(at * len(data))
        if kind == "truncate":
            data = data[:p]
        elif kind == "flip":
            data[p] ^= 1 << bit
        else:
            data[p:] = bytes(len(data) - p)
        target.write_bytes(bytes(data))
        try:
            if which == "model.pth":
                load_init(tiny_model(), target)
            else:
                load(copy)
            event(f"{which} {kind}: loaded")
        except ValueError as e:
            assert str(e).strip()
            event(f"{which} {kind}: ValueError")


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    model = tiny_model()
    torch.save(model.state_dict(), root / "model.pth")
    return save(model, root / "m"), root / "model.pth"
