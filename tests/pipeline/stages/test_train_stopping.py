"""The train stage stopped by its time budget under the real Ray Train, with real periodic
validation and Ray's checkpoint scoring: it exits 0 with a usable model and says why it
stopped. (Keeping the peak of a metric that peaks early, and patience, are in
tests/pipeline/training/test_loop_stopping.py: the tiny model's real AP stays 0.)"""

from __future__ import annotations

import json

import mlflow
import pytest
import yaml

from mrcnn import weights
from mrcnn.data import ShardDataset
from pipeline.stages import train
from tests.pipeline.tiny_model import TINY_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def test_the_time_budget_stops_the_stage_cleanly_with_a_usable_model(tmp_path, tiny_shards):
    """max_minutes spent by the first check (iteration 2 of 6): `python -m pipeline.train`
    returns (exit 0), the model is the validated checkpoint of iteration 2, train.json and the
    MLflow run say time_budget."""
    params = {
        "model": {"preset": "shapes_small", **TINY_MODEL},
        "train": {
            "num_workers": 1,
            "cpus_per_worker": 1,
            "batch_size": 2,
            "reference_batch": 2,
            "iterations": 6,
            "checkpoint_every": 3,
            "log_every": 2,
            "warmup_iters": 1,
            "max_gt": 8,
            "eval_every": 3,
            "eval_images": 4,
            "max_minutes": 1e-9,
            "run_name": "budget",
            "storage_path": "runs",
        },
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "t"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    train.main(["--params", str(tmp_path / "params.yaml"), "--shards", str(tiny_shards)])

    metrics = json.loads((tmp_path / "metrics/train.json").read_text())
    assert (metrics["stopped"], metrics["iterations"]) == ("time_budget", 2)
    assert (metrics["kept"], metrics["kept_iteration"], metrics["best_iteration"]) == (
        "best",
        2,
        2,
    )  # validated before stopping, so Ray ranked it
    assert metrics["best_metric"] == "segm_AP" and 0 <= metrics["best_value"] <= 1
    model = weights.load(tmp_path / "models/final")
    assert len(model.detect([ShardDataset(tiny_shards / "val")[0].image])) == 1
    assert (tmp_path / "reports/train/results.png").is_file()
    run_id = json.loads((tmp_path / "metrics/train_run.json").read_text())["mlflow_run_id"]
    run = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id)
    assert run.data.tags["train.stopped"] == "time_budget"
    assert run.data.tags["train.status"] == "finished"
