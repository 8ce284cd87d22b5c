"""pipeline.sweep.config: what every trial starts from."""

from __future__ import annotations

import yaml

from pipeline.sweep.config import load_sweep

DATASET = {"num_classes": 4, "image_size": 64, "class_names": ("bg", "a", "b", "c")}


def test_a_relative_init_weights_reaches_the_trials_from_the_project_root(tmp_path, monkeypatch):
    """Trials run in their own folders on Ray workers: a relative `train.init_weights` must
    reach them absolute, taken from the project root as in every stage (it reached them as
    written, relative to nothing the trial knows)."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    doc = {
        "model": {"preset": "shapes_small"},
        "train": {"num_workers": 1, "init_weights": "models/pretrained/r18.pth"},
        "tune": {"name": "t", "space": {"train.lr": {"choice": [0.001, 0.002]}}},
    }
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.chdir(tmp_path / "configs")
    _, sweep = load_sweep(path, DATASET)
    expected = str(tmp_path / "models/pretrained/r18.pth")
    assert sweep.sections["train"]["init_weights"] == expected
    params, _ = sweep.trial_params({})
    assert params.init_weights == expected
