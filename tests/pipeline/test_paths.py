"""One rule for paths (`pipeline.layout.project_root`): relative paths on every stage's command
line and in the params file (`data.local_dir`, `train.init_weights`, the sqlite tracking store,
the artifact folder) are taken from the project root, wherever the params file lives and
whichever folder of the project the stage runs from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pipeline import layout
from pipeline.stages import download, evaluate, export, inspect, shards, train
from tests import REPO_ROOT

STAGES = {
    "download": download,
    "shards": shards,
    "inspect": inspect,
    "train": train,
    "evaluate": evaluate,
    "export": export,
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A project (its dvc.yaml), the working directory a subfolder of it, and a params file
    kept outside it with relative paths in it."""
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    doc = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    doc["data"]["local_dir"] = "labels/own"
    doc["train"]["init_weights"] = "weights/coco.pth"
    outside = tmp_path / "experiments" / "own.yaml"
    outside.parent.mkdir()
    outside.write_text(yaml.safe_dump(doc))
    monkeypatch.chdir(root / "notebooks")
    return {"root": root.resolve(), "params": outside, "cwd": root / "notebooks"}


def test_the_rule(tmp_path: Path) -> None:
    proj = tmp_path / "p"
    (proj / "configs").mkdir(parents=True)
    (proj / "dvc.yaml").write_text("stages: {}\n")
    elsewhere = tmp_path / "e"
    elsewhere.mkdir()
    # 1. a params file inside a project: that project, from wherever it is run
    assert layout.project_root(proj / "configs" / "x.yaml", cwd=elsewhere) == proj.resolve()
    # 2. a params file outside any project: the project of the working directory
    assert layout.project_root(elsewhere / "x.yaml", cwd=proj / "configs") == proj.resolve()
    # 3. neither: the params file's folder
    (elsewhere / "run").mkdir()
    assert layout.project_root(elsewhere / "x.yaml", cwd=elsewhere / "run") == elsewhere.resolve()


def _paths(value: object) -> list[Path]:
    fields = getattr(value, "__dataclass_fields__", {})
    found = [getattr(value, name) for name in fields if name != "params_file"]
    return [p for p in found if isinstance(p, Path)]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_takes_relative_paths_from_the_project_root(project, stage) -> None:
    """With the defaults of its command line (all relative), each stage's paths, the params
    file's relative paths and the tracking store all land inside the project."""
    module = STAGES[stage]
    params, paths = module.inputs(module.parser().parse_args(["--params", str(project["params"])]))
    found = _paths(paths)
    assert found, f"{stage}: no paths seen"
    for p in found:
        assert p.is_absolute() and project["root"] in p.parents, (stage, p)
    assert params.data.local_dir == str(project["root"] / "labels" / "own")
    assert params.train.init_weights == str(project["root"] / "weights" / "coco.pth")
    tracking = getattr(paths, "tracking", None)
    if tracking is not None:
        assert tracking.uri == f"sqlite:///{project['root'] / 'mlflow.db'}"
        assert Path(tracking.artifact_location).is_relative_to(project["root"])
    assert not (project["params"].parent / "mlflow.db").exists()  # no second store
