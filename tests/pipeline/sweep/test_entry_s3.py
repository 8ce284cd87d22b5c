"""`python -m pipeline.tune` with `tune.storage_path: s3://...` and `--shards s3://...` (moto):
the Tune experiment, every trial's results and its Ray Train checkpoints land in the bucket (Ray
reaches it through pyarrow with AWS_ENDPOINT_URL from the environment), and the same command
restores the finished sweep from there."""

from __future__ import annotations

import json

import mlflow
import pytest
import yaml

from pipeline.sweep import entry
from tests.pipeline.sweep.test_entry import MODEL, TRAIN

pytestmark = pytest.mark.slow


def test_sweep_with_tune_storage_and_shards_in_s3(
    s3_shards, s3_bucket, s3_server, ray_s3, tmp_path
):
    bucket = s3_bucket.removeprefix("s3://")
    doc = {
        "model": MODEL,
        "train": TRAIN,
        "tune": {
            "name": "s3",
            "scheduler": "fifo",
            "num_samples": 1,
            "metric": "loss",
            "mode": "min",
            "iterations": 4,
            "eval_every": 2,  # also each trial's checkpoint interval
            "eval_images": 2,
            "space": {"train.lr": {"grid": [3.0e-3, 1.0e-3]}},
            "storage_path": f"{s3_bucket}/tune",
            "out_dir": str(tmp_path / "sweeps"),
        },
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "sweeps"},
    }
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(doc))
    argv = ["--params", str(params), "--shards", s3_shards]

    entry.main(argv)

    summary = json.loads((tmp_path / "sweeps" / "s3" / "summary.json").read_text())
    trials = summary["trials"]
    assert len(trials) == 2 and summary["failed"] == []
    assert all(t["status"] == "completed" and t["iteration"] == 4 for t in trials)
    assert (tmp_path / "sweeps" / "s3" / "best_params.yaml").is_file()

    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="tune/s3/")
    keys = [o["Key"].removeprefix("tune/s3/") for o in listed["Contents"]]
    assert "sweep.json" in keys  # the sweep's identity and parent run, read on restore
    assert any(k.startswith("experiment_state") for k in keys)
    for t in trials:
        trial = f"trial-{t['trial_id']}"
        assert f"{trial}/result.json" in keys  # Tune's per-trial results
        # Ray Train's checkpoints of the trial, with the weights: the latest and, when it is not
        # the latest, the best validated one (pipeline.training.selection keeps no others).
        checkpoints = {
            k.split("/")[2]
            for k in keys
            if k.startswith(f"train/{trial}/checkpoint_") and k.count("/") == 3
        }
        assert 1 <= len(checkpoints) <= 2, keys
        states = sum(k.endswith("/state.pt") for k in keys if k.startswith(f"train/{trial}/"))
        assert states == len(checkpoints), keys

    client = mlflow.MlflowClient(doc["mlflow"]["tracking_uri"])
    parent = client.get_run(summary["parent_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(
        t["trial_id"] for t in trials
    )
    assert all("val/segm_AP" in r.data.metrics for r in children)  # validated from S3 shards

    # The same command again: restored from the bucket, nothing reruns, the same parent run.
    entry.main(argv)
    again = json.loads((tmp_path / "sweeps" / "s3" / "summary.json").read_text())
    assert again["parent_run_id"] == summary["parent_run_id"]
    assert [t["trial_id"] for t in again["trials"]] == [t["trial_id"] for t in trials]
