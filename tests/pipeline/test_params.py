"""pipeline.params: typed sections, errors that name `section.key`."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.params import DataParams, InspectParams, ShardsParams, load_section

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_project_params_load():
    data = load_section(ROOT / "params.yaml", "data", DataParams)
    shards = load_section(ROOT / "params.yaml", "shards", ShardsParams)
    inspect = load_section(ROOT / "params.yaml", "inspect", InspectParams)
    assert data.source == "shapes" and data.shapes.num_val >= 200
    assert (shards.image_size, shards.resize_mode, shards.mini_mask_shape) == (128, "square", 28)
    assert inspect.anchor_ratios == (0.5, 1.0, 2.0)


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
        ("inspect:\n  anchor_sizes: [8, 16]\n", "params key 'inspect.anchor_sizes'"),
        ("shards: [1, 2]\n", "params section 'shards' must be a mapping"),
    ],
)
def test_bad_params_name_the_key(tmp_path, text, message):
    p = write(tmp_path, text)
    section = text.split(":")[0]
    cls = {"data": DataParams, "shards": ShardsParams, "inspect": InspectParams}[section]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_section(p, section, cls)


@pytest.mark.parametrize("path", ["params.yaml", "configs/coco_8gpu.yaml"])
def test_shipped_params_files_are_valid(path):
    """Every section of the shipped params files loads and the model config builds."""
    from pathlib import Path

    from pipeline import params as P

    root = Path(__file__).resolve().parents[2]
    file = root / path
    sections = {
        "data": P.DataParams,
        "shards": P.ShardsParams,
        "inspect": P.InspectParams,
        "train": P.TrainParams,
        "evaluate": P.EvaluateParams,
        "mlflow": P.MlflowParams,
        "export": P.ExportParams,
    }
    for name, cls in sections.items():
        P.load_section(file, name, cls)
    shards = P.load_section(file, "shards", P.ShardsParams)
    cfg = P.load_model_config(file, num_classes=81, image_size=shards.image_size)
    assert cfg.input.image_size == shards.image_size
