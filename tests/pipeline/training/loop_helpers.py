"""The worker loop's test config (`loop_config`: a tiny model on the tiny shards, one worker) and
a fresh MLflow run (`new_run`), shared by test_loop.py and test_loop_stopping.py."""

from __future__ import annotations

from pathlib import Path

import mlflow

from mrcnn import presets
from pipeline.paramfile import to_dict
from pipeline.train_params import TrainParams
from tests.pipeline.tiny_model import TINY_MODEL


def loop_config(shards: Path, uri: str, run_id: str, **train) -> dict:
    params = TrainParams(
        **{
            "num_workers": 1,
            "cpus_per_worker": 1,
            "batch_size": 2,
            "reference_batch": 2,
            "iterations": 4,
            "checkpoint_every": 2,
            "log_every": 1,
            "warmup_iters": 1,
            "max_gt": 8,
            **train,
        }
    )
    return {
        "train": to_dict(params),
        "model": presets.shapes_small(num_classes=4, image_size=64, **TINY_MODEL).to_dict(),
        "shards": str(shards),
        "val_annotations": "",
        "mlflow": {"tracking_uri": uri, "run_id": run_id},
    }


def new_run(uri: str) -> str:
    client = mlflow.MlflowClient(uri)
    return client.create_run(client.create_experiment("loop")).info.run_id
