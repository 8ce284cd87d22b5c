"""pipeline.params: typed sections, errors that name `section.key`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.paramfile import load_section
from pipeline.params import DataParams, InspectParams, ShardsParams
from pipeline.serve_params import ExportParams
from pipeline.train_params import TrainParams
from tests import REPO_ROOT

ROOT = REPO_ROOT


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_mini_mask_shape_takes_a_side_or_a_square(tmp_path):
    for text in ("56", "[56, 56]"):
        p = write(tmp_path, f"shards:\n  mini_mask_shape: {text}\n")
        assert load_section(p, "shards", ShardsParams).mini_mask_shape == 56
    p = write(tmp_path, "shards:\n  mini_mask_shape: [28, 56]\n")
    with pytest.raises(
        ValueError, match=r"'shards\.mini_mask_shape' must be one side .* \[28, 56\]"
    ):
        load_section(p, "shards", ShardsParams)


def test_shard_options_per_split_come_from_the_section():
    params = ShardsParams(image_size=256, mini_mask_shape=28, keep_negatives_train=False)
    train, val = params.options("train"), params.options("val")
    assert (train.image_size, train.mini_mask_shape, train.keep_negatives) == (256, 28, False)
    assert val.keep_negatives is True and val.jpeg_quality == params.jpeg_quality


def test_global_batch_is_workers_times_batch():
    params = TrainParams(num_workers=4, batch_size=2)
    assert params.global_batch() == 8 and params.global_batch(3) == 6
    assert TrainParams(num_workers=0, batch_size=2).global_batch() == 2  # in-process


def test_missing_section_and_keys_keep_defaults(tmp_path):
    p = write(tmp_path, "shards:\n  image_size: 256\n")
    assert load_section(p, "data", DataParams) == DataParams()
    s = load_section(p, "shards", ShardsParams)
    assert s.image_size == 256 and s.mini_mask_shape == ShardsParams().mini_mask_shape


@pytest.mark.parametrize(
    "text, message",
    [
        ("data:\n  sorce: coco\n", "unknown params key 'data.sorce'"),
        ("data:\n  shapes:\n    min_sise: 3\n", "unknown params key 'data.shapes.min_sise'"),
        ("data:\n  source: web\n", "params key 'data.source' must be one of"),
        ("data:\n  source: local\n", "params key 'data.local_dir'"),
        ("data:\n  shapes:\n    max_size: 90\n", "params key 'data.shapes.image_size'"),
        ("shards:\n  image_size: 100\n", "params key 'shards.image_size' must be a multiple"),
        ("shards:\n  image_size: big\n", "params key 'shards.image_size' must be an integer"),
        ("shards:\n  keep_negatives_val: 1\n", "'shards.keep_negatives_val' must be true or"),
        ("shards:\n  resize_mode: crop\n", "params key 'shards.resize_mode'"),
        ("inspect:\n  anchor_sizes: [8, 16]\n", "unknown params key 'inspect.anchor_sizes'"),
        ("inspect:\n  num_samples: 0\n", "params key 'inspect.num_samples' must be in 1..64"),
        ("shards: [1, 2]\n", "params section 'shards' must be a mapping"),
        ("data:\n  local_format: labelme2\n", "params key 'data.local_format' must be one of"),
        ("data:\n  val_fraction: 1.0\n", "params key 'data.val_fraction' must be in [0, 1)"),
        ("train:\n  scale_jitter: [2.0, 1.0]\n", "params key 'train.scale_jitter' must be []"),
        ("train:\n  scale_jitter: [0.5]\n", "params key 'train.scale_jitter' must be []"),
        ("train:\n  random_crop: [0.5, 1.5]\n", "params key 'train.random_crop' must be []"),
        (
            "train:\n  scale_jitter: [0.5, 2]\n  short_sides: [64]\n",
            "params key 'train.short_sides' excludes scale_jitter",
        ),
        ("export:\n  pyfunc_backend: tensorrt\n", "'export.pyfunc_backend' must be torch or"),
        (
            "export:\n  pyfunc_backend: onnxruntime\n  portable: false\n",
            "'export.pyfunc_backend' onnxruntime runs the ONNX file: set portable: true",
        ),
        (
            "export:\n  pyfunc_backend: openvino\n  portable: false\n",
            "'export.pyfunc_backend' openvino runs the ONNX file: set portable: true",
        ),
    ],
)
def test_bad_params_name_the_key(tmp_path, text, message):
    p = write(tmp_path, text)
    section = text.split(":")[0]
    cls = {
        "data": DataParams,
        "shards": ShardsParams,
        "inspect": InspectParams,
        "train": TrainParams,
        "export": ExportParams,
    }[section]
    with pytest.raises(ValueError, match=re.escape(message)):
        load_section(p, section, cls)


@pytest.mark.parametrize("path", ["params.yaml", "configs/coco_8gpu.yaml", "configs/finetune.yaml"])
def test_shipped_params_files_are_valid(path):
    """Every section of the shipped params files loads and the model config builds."""
    from pipeline.params import load

    params = load(ROOT / path)
    cfg = params.model_config(num_classes=81, image_size=params.shards.image_size)
    assert cfg.input.image_size == params.shards.image_size


def test_load_gives_every_section_typed_and_paths_from_the_project(tmp_path):
    """`load`: the whole file as `Params`, defaults where it has nothing, the preset default
    applied in one place, relative paths taken from the project root (here the file's own
    project: its folder holds a dvc.yaml; the rule's other cases: tests/pipeline/test_paths.py)."""
    from pipeline.params import Params, load

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    text = "data: {source: local, local_dir: mine}\ntrain: {init_weights: w/r50.pth}\n"
    params = load(write(tmp_path, text))
    assert params.data.local_dir == str(tmp_path / "mine")
    assert params.train.init_weights == str(tmp_path / "w/r50.pth")
    assert params.evaluate == Params().evaluate and params.model == {}
    assert params.preset == "shapes_small"  # no model.preset: the default
    other = load(write(tmp_path, "model: {preset: torchvision_r50_fpn}\n"))
    assert other.preset == "torchvision_r50_fpn"
    assert other.model_config(num_classes=3, image_size=256).input.image_size == 256


def test_num_workers_means_the_same_in_every_section(tmp_path, monkeypatch):
    """0 = none (the main process works), N = N processes, -1 = one per core: in shards and
    evaluate alike; shards keeps using every core by default through -1."""
    from pipeline.paramfile import ALL_CORES, worker_processes
    from pipeline.params import EvaluateParams

    monkeypatch.setattr("os.cpu_count", lambda: 12)
    assert [worker_processes(n) for n in (0, 3, ALL_CORES)] == [0, 3, 12]
    assert ShardsParams().num_workers == ALL_CORES and EvaluateParams().num_workers == 0
    assert load_section(ROOT / "params.yaml", "shards", ShardsParams).num_workers == ALL_CORES
    for section, cls in (("shards", ShardsParams), ("evaluate", EvaluateParams)):
        assert load_section(write(tmp_path, f"{section}:\n  num_workers: -1\n"), section, cls)
        with pytest.raises(ValueError, match=rf"'{section}.num_workers' must be >= 0 \(0 = none"):
            load_section(write(tmp_path, f"{section}:\n  num_workers: -2\n"), section, cls)
