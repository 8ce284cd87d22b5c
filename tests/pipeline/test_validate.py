"""The whole params file is checked before any stage works (`pipeline.params.validate_file`),
and user errors reach the terminal as one line (`pipeline.cli`)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.params import SECTIONS, validate_file
from pipeline.stages import download, evaluate, export, inspect, shards, train
from pipeline.sweep import entry
from tests import REPO_ROOT


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    "path", [REPO_ROOT / "params.yaml", *sorted((REPO_ROOT / "configs").glob("*.yaml"))]
)
def test_the_shipped_params_files_are_valid(path):
    doc = validate_file(path)
    assert set(doc) <= set(SECTIONS) and "train" in doc


def test_an_unknown_section_is_named_with_the_nearest_known_one(tmp_path):
    path = _write(tmp_path, {"train": {"iterations": 5}, "evalute": {"batch_size": 2}})
    with pytest.raises(
        ValueError, match=r"unknown params section 'evalute'.*did you mean 'evaluate'"
    ):
        validate_file(path)


@pytest.mark.parametrize(
    "section, key",
    [
        ("data", "sorce"),
        ("shards", "image_sise"),
        ("inspect", "num_sample"),
        ("train", "iteration"),
        ("tune", "num_sample"),
        ("mlflow", "tracking_url"),
        ("evaluate", "batchsize"),
        ("export", "registered_models"),
        ("predict", "treshold"),
    ],
)
def test_an_unknown_key_in_any_section_is_named(tmp_path, section, key):
    path = _write(tmp_path, {section: {key: 1}})
    with pytest.raises(ValueError, match=rf"unknown params key '{section}\.{key}'"):
        validate_file(path)


def test_the_model_section_and_the_sweep_space_are_checked_too(tmp_path):
    with pytest.raises(ValueError, match=r"unknown params key 'model\.rpn\.nms_tresh'"):
        validate_file(_write(tmp_path, {"model": {"rpn": {"nms_tresh": 0.5}}}))
    with pytest.raises(ValueError, match=r"model\.preset"):
        validate_file(_write(tmp_path, {"model": {"preset": "resnet9000"}}))
    bad_space = {"tune": {"space": {"train.lr": {"loguniform": [1e-3]}}}}
    with pytest.raises(ValueError, match=r"tune\.space"):
        validate_file(_write(tmp_path, bad_space))
    bad_value = {"evaluate": {"batch_size": 0}}
    with pytest.raises(ValueError, match=r"'evaluate\.batch_size' must be >= 1"):
        validate_file(_write(tmp_path, bad_value))
    with pytest.raises(FileNotFoundError, match="no params file"):
        validate_file(tmp_path / "missing.yaml")


def test_export_register_takes_yaml_booleans_and_auto(tmp_path):
    from pipeline.paramfile import load_section
    from pipeline.serve_params import ExportParams

    for value, want in ((True, "true"), (False, "false"), ("auto", "auto")):
        path = _write(tmp_path, {"export": {"register": value}})
        assert load_section(path, "export", ExportParams).register == want
    with pytest.raises(ValueError, match=r"export\.register"):
        validate_file(_write(tmp_path, {"export": {"register": "sometimes"}}))


def _error_lines(caplog) -> list[str]:
    """What the stage logged at ERROR, line by line (one record of one line, for a user error)."""
    records = [r for r in caplog.records if r.levelname == "ERROR"]
    return [line for r in records for line in r.getMessage().splitlines()]


STAGE_MAINS = [download.main, shards.main, inspect.main, train.main, evaluate.main, export.main]


@pytest.mark.parametrize("main", [*STAGE_MAINS, entry.main], ids=lambda m: m.__module__)
def test_every_stage_fails_at_once_on_a_typo_in_another_section(tmp_path, caplog, main):
    # Nothing else exists (no data, no shards, no model): the typo is what every stage reports.
    path = _write(tmp_path, {"train": {"iterations": 5}, "evaluate": {"batchsize": 2}})
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["--params", str(path)])
    assert exit_info.value.code == 1
    assert time.monotonic() - start < 5
    err = _error_lines(caplog)
    assert len(err) == 1 and "unknown params key 'evaluate.batchsize'" in err[0]
    assert "--debug" in err[0]


def test_debug_shows_the_error_itself(tmp_path):
    path = _write(tmp_path, {"evalute": {}})
    with pytest.raises(ValueError, match="evalute"):
        train.main(["--params", str(path), "--debug"])


def test_a_missing_input_is_one_line_too(tmp_path, caplog):
    """Valid params, no shards: the stage says what is missing, without a traceback."""
    path = _write(tmp_path, {"train": {"iterations": 5}})
    with pytest.raises(SystemExit):
        train.main(["--params", str(path), "--shards", str(tmp_path / "no_shards")])
    err = _error_lines(caplog)
    assert len(err) == 1 and "no_shards" in err[0]


@pytest.mark.slow  # a fresh interpreter imports torch: seconds
def test_the_command_line_prints_no_traceback(tmp_path):
    path = _write(tmp_path, {"evalute": {}})
    cmd = [sys.executable, "-m", "pipeline.train", "--params", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "unknown params section 'evalute'" in done.stderr.strip().splitlines()[-1]
    debug = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_an_error_from_a_dataloader_worker_is_its_own_message_on_one_line(tmp_path):
    """torch's DataLoader re-raises a worker's error with the worker's traceback in the message;
    the one line is the original message (a damaged shard read by `evaluate.num_workers`)."""
    import torch

    from mrcnn.data import ShardReadError
    from pipeline.cli import one_line

    class Damaged(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            raise ShardReadError("shard-000001.tar: sample 1 does not decode; rebuild the split")

    loader = torch.utils.data.DataLoader(Damaged(), num_workers=1)
    with pytest.raises(ShardReadError) as caught:
        next(iter(loader))
    assert "Original Traceback" in str(caught.value)
    assert one_line(caught.value) == "shard-000001.tar: sample 1 does not decode; rebuild the split"
