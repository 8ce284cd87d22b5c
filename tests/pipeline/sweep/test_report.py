"""A finished sweep's files: the trial table (CSV and Markdown), best_params.yaml with its
`dvc exp run` line, summary.json and the picture."""

from __future__ import annotations

import csv
import json

import numpy as np
import yaml
from PIL import Image

from pipeline.search_space import Dimension, SearchSpace
from pipeline.sweep import report
from pipeline.sweep.records import COMPLETED, FAILED, STOPPED, TrialRecord

SPACE = SearchSpace(
    (
        Dimension("train.lr", "loguniform", (1e-4, 1e-2)),
        Dimension("model.anchors.sizes", "choice", ((8, 16), (4, 8))),
        Dimension("train.optimizer", "choice", ("adamw", "sgd")),
    )
)


def _records() -> list[TrialRecord]:
    return [
        TrialRecord(
            "00000",
            COMPLETED,
            {"train.lr": 0.001, "model.anchors.sizes": [8, 16], "train.optimizer": "adamw"},
            iteration=6,
            planned_iterations=6,
            metrics={"segm_AP": 0.3, "loss": 1.25},
            curve=[(2, 0.1), (4, 0.2), (6, 0.3)],
            mlflow_run_id="abc",
        ),
        TrialRecord(
            "00001",
            STOPPED,
            {"train.lr": 0.005, "model.anchors.sizes": [4, 8], "train.optimizer": "sgd"},
            iteration=2,
            planned_iterations=6,
            metrics={"segm_AP": 0.15},
            curve=[(2, 0.15)],
        ),
        TrialRecord(
            "00002",
            FAILED,
            {"train.lr": 0.0002, "model.anchors.sizes": [8, 16], "train.optimizer": "a,b"},
            error='ValueError: bad "value"\nTraceback ...',
        ),
    ]


def test_table_rows():
    rows = report.table_rows(_records(), SPACE)
    assert list(rows[0]) == [
        "trial_id",
        "status",
        "iteration",
        "planned_iterations",
        "segm_AP",
        "bbox_AP",
        "loss",
        "train.lr",
        "model.anchors.sizes",
        "train.optimizer",
        "error",
        "mlflow_run_id",
    ]
    assert rows[0]["segm_AP"] == 0.3 and rows[0]["bbox_AP"] == ""  # missing metrics empty
    assert rows[0]["model.anchors.sizes"] == "[8, 16]"  # lists as JSON
    assert rows[2]["error"] == 'ValueError: bad "value"'  # first line only
    assert rows[0]["mlflow_run_id"] == "abc"


def test_write_reports(tmp_path):
    recs = _records()
    files = report.write_reports(
        tmp_path / "sweep",
        recs,
        recs[0],
        SPACE,
        "segm_AP",
        {"train": {"lr": 0.01}, "model": {}},
        {"trials": 3, "best": "00000"},
    )
    assert sorted(files) == [
        "best_params.yaml",
        "summary.json",
        "sweep.png",
        "trials.csv",
        "trials.md",
    ]
    with open(files["trials.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["trial_id"] for r in rows] == ["00000", "00001", "00002"]
    assert rows[0]["train.lr"] == "0.001" and rows[1]["status"] == "stopped_early"
    assert rows[0]["model.anchors.sizes"] == "[8, 16]"  # quoted: it holds a comma
    assert rows[2]["train.optimizer"] == "a,b" and rows[2]["error"] == 'ValueError: bad "value"'
    md = files["trials.md"].read_text().splitlines()
    assert md[0].startswith("| trial_id | status | iteration |") and len(md) == 2 + 3
    assert md[1] == "|" + " --- |" * 12
    assert "| 0.3 |" in md[2] and "| 0.001 |" in md[2]
    assert json.loads(files["summary.json"].read_text()) == {"trials": 3, "best": "00000"}
    picture = np.asarray(Image.open(files["sweep.png"]))
    assert picture.ndim == 3 and picture.shape[0] > 100
    assert not list(tmp_path.glob("sweep/*.tmp*"))  # every file written atomically
    # Without a best trial (all failed) there is no best_params.yaml.
    none = report.write_reports(tmp_path / "none", recs[2:], None, SPACE, "segm_AP", None, {})
    assert "best_params.yaml" not in none and (tmp_path / "none/sweep.png").is_file()


def test_best_params_text_holds_the_swept_keys_and_the_command():
    text = report.best_params_text(_records()[0], "segm_AP", {"train": {"lr": 0.01}})
    lines = text.splitlines()
    assert lines[0] == "# Best trial 00000: segm_AP 0.3000 after 6 iterations."
    assert lines[2] == (
        "#   dvc exp run -S train.lr=0.001 -S '++model.anchors.sizes=[8,16]' "
        "-S ++train.optimizer=adamw"
    )
    assert yaml.safe_load(text) == {
        "train": {"lr": 0.001, "optimizer": "adamw"},
        "model": {"anchors": {"sizes": [8, 16]}},
    }


def test_csv_cells_and_curve_values():
    assert report._csv(0.1) == "0.1" and report._csv(1 / 3) == repr(1 / 3)  # floats in full
    assert report._csv("a,b") == '"a,b"' and report._csv('say "x"') == '"say ""x"""'
    assert report._csv("line\nbreak") == '"line\nbreak"' and report._csv(7) == "7"
    curve = [(2, 0.1), (4, 0.2), (6, 0.3)]
    assert report._value_at(curve, 4) == 0.2 and report._value_at(curve, 5) == 0.2
    assert report._value_at(curve, 1) == 0.1  # before the first point: the first value
    assert report._text(1 / 3) == "0.3333" and report._text("x") == "x"


def test_records_as_dicts_leave_out_the_curves():
    [first, *_] = report.records_as_dicts(_records())
    assert "curve" not in first and first["trial_id"] == "00000"
    assert first["values"]["model.anchors.sizes"] == [8, 16]
