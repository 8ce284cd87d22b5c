"""The train stage checks every file the run will need before Ray starts, and a bad one ends the
stage in one line (issue 22: a missing `train.init_weights` used to surface inside Ray after two
retries and six tracebacks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.pipeline.tiny_model import TINY_MODEL


def _train_cli(tmp_path: Path, shards: Path, **train) -> subprocess.CompletedProcess:
    """`python -m pipeline.train` as a user runs it, in a project of its own."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    params = {
        "model": {"preset": "shapes_small", **TINY_MODEL},
        "train": {"num_workers": 1, "iterations": 2, "batch_size": 2, **train},
        "mlflow": {"tracking_uri": "sqlite:///mlflow.db"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = [sys.executable, "-m", "pipeline.train", "--shards", str(shards)]
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    """The stage failed with one error line and no traceback, before any Ray output."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "ray" not in done.stderr.lower(), done.stderr[-3000:]  # Ray never started
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


def test_a_missing_init_weights_file_fails_before_ray_in_one_line(tmp_path, tiny_shards):
    line = _one_line_error(_train_cli(tmp_path, tiny_shards, init_weights="weights/r50.pth"))
    assert "train.init_weights" in line and str(tmp_path / "weights/r50.pth") in line


def test_init_weights_that_are_not_weights_fail_before_ray_in_one_line(tmp_path, tiny_shards):
    (tmp_path / "notes.pth").write_text("not a checkpoint\n")
    line = _one_line_error(_train_cli(tmp_path, tiny_shards, init_weights="notes.pth"))
    assert "train.init_weights" in line and "not a checkpoint" in line


def test_init_weights_of_another_architecture_fail_before_ray(tmp_path, tiny_shards):
    """A whole-model checkpoint whose tensors do not fit (another width): found by loading it
    into the model on the driver, as each worker would."""
    from mrcnn.modeling.model import build_model
    from mrcnn.presets import get as preset

    cfg = preset("shapes_small")  # full width: TINY_MODEL's backbone is a quarter of it
    torch.save(build_model(cfg).state_dict(), tmp_path / "wide.pth")
    line = _one_line_error(_train_cli(tmp_path, tiny_shards, init_weights="wide.pth"))
    assert "train.init_weights" in line


@pytest.mark.parametrize("missing", ["val"])
def test_missing_val_shards_fail_before_ray_when_training_evaluates(tmp_path, tiny_shards, missing):
    partial = tmp_path / "partial_shards"
    partial.mkdir()
    (partial / "train").symlink_to(tiny_shards / "train")
    line = _one_line_error(_train_cli(tmp_path, partial, eval_every=1))
    assert str(partial / missing) in line


def test_a_warmup_longer_than_training_is_said(caplog):
    from pipeline.stages.train import warn_about_recipe
    from pipeline.train_params import TrainParams

    with caplog.at_level("WARNING"):
        warn_about_recipe(TrainParams(iterations=50, warmup_iters=50))
    assert not caplog.records
    with caplog.at_level("WARNING"):
        warn_about_recipe(TrainParams(iterations=20, warmup_iters=50))
    assert "warmup_iters (50) is more than train.iterations (20)" in caplog.text


def _damage(kind: str, shards: Path) -> Path:
    """Real shards written by the real stage (`tiny_shards`), damaged the way disks and copies
    damage them -> the file the error must name."""
    train = shards / "train"
    shard = train / "shard-000001.tar"
    if kind == "truncated":
        shard.write_bytes(shard.read_bytes()[:5000])
    elif kind == "corrupted":  # same size: only the manifest's sha256 tells
        data = bytearray(shard.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
        shard.write_bytes(bytes(data))
    elif kind == "missing":
        shard.unlink()
    else:  # an empty manifest (a copy cut short)
        shard = train / "manifest.json"
        shard.write_bytes(b"")
    return shard


# missing shards and unreadable manifests: tests/mrcnn/data/test_shard_checks.py (in process)
@pytest.mark.parametrize("kind", ["truncated", "corrupted"])
def test_damaged_shards_end_the_stage_in_one_line_naming_the_file(tmp_path, tiny_shards, kind):
    """Issue 23: a damaged shard is data loss the user must know about: the stage stops before
    Ray with one line naming the file and how to rebuild the split, never a traceback."""
    import shutil

    shards = Path(shutil.copytree(tiny_shards, tmp_path / "shards"))
    bad = _damage(kind, shards)
    line = _one_line_error(_train_cli(tmp_path / "project", shards))
    assert str(bad) in line and "python -m pipeline.shards" in line, line
