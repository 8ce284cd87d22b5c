"""`python -m pipeline.evaluate --shards s3://...`: the val shards and the val annotations only in
S3 (moto; the raw folder the shards were built from is deleted, `s3_shards`). The stage reads the
annotations from beside the val shards, as periodic validation does, and scores exactly what it
scores from the local shards and raw folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mrcnn import presets, weights
from mrcnn.data import storage
from mrcnn.modeling.model import build_model
from pipeline.stages import evaluate
from tests.pipeline.registry_helpers import fresh_store
from tests.pipeline.tiny_model import TINY_MODEL

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

EVALUATE = {  # few pictures: the numbers are what is compared
    "batch_size": 6,
    "num_overlays": 1,
    "num_step_images": 0,
    "num_error_images": 1,
    "pr_breakdown": False,
    "write_results": True,
    "device": "cpu",
}


def _project(root: Path) -> Path:
    """A project folder with a tiny untrained model (every detection kept), its own MLflow
    store and params.yaml; no data unless the test links it."""
    root.mkdir(parents=True)
    torch.manual_seed(0)
    cfg = presets.shapes_small(
        num_classes=4, image_size=64, inference={"score_thresh": 0.0}, **TINY_MODEL
    )
    weights.save(build_model(cfg).eval(), root / "models" / "final")
    fresh_store(root)
    (root / "metrics").mkdir()
    (root / "metrics" / "train_run.json").write_text(json.dumps({"mlflow_run_id": "f" * 32}))
    doc = {
        "data": {"source": "shapes"},
        "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "mrcnn"},
        "evaluate": EVALUATE,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(doc))
    return root


def _outputs(root: Path) -> tuple[dict, dict, dict, list]:
    summary = json.loads((root / "reports/evaluate/summary.json").read_text())
    return (
        json.loads((root / "metrics/eval.json").read_text()),
        json.loads((root / "metrics/eval_errors.json").read_text()),
        summary["per_category"],
        json.loads((root / "reports/evaluate/results.json").read_text()),
    )


def test_evaluate_from_s3_shards_equals_evaluate_from_the_folder(tiny_shards, s3_shards, tmp_path):
    local = _project(tmp_path / "local")
    (local / "data").symlink_to(tiny_shards.parent, target_is_directory=True)  # shards + raw
    evaluate.main(["--params", str(local / "params.yaml")])

    remote = _project(tmp_path / "remote")  # no data/ at all: shards and annotations in S3
    evaluate.main(["--params", str(remote / "params.yaml"), "--shards", s3_shards])

    assert not (remote / "data").exists()
    got, expected = _outputs(remote), _outputs(local)
    assert got == expected
    assert len(expected[3]) > 10  # the untrained model's detections: the same images
    assert set(got[0]) == {"bbox", "segm"}


def test_s3_shards_without_annotations_say_which_command_writes_them(
    tiny_shards, s3_bucket, tmp_path, caplog
):
    url = f"{s3_bucket}/shards"
    storage.upload_split(tiny_shards / "val", f"{url}/val")  # shards only, no annotations.json
    root = _project(tmp_path / "proj")
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--params", str(root / "params.yaml"), "--shards", url])
    assert e.value.code == 1
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert f"pipeline.evaluate needs the val annotations in {url}/val/annotations.json" in line
    assert f"`python -m pipeline.shards --out {url}`" in line and "\n" not in line
    assert not (root / "metrics" / "eval.json").exists()
