"""Stage `train`: data-parallel Mask R-CNN training with Ray Train, tracked in MLflow.

    python -m pipeline.train [--params params.yaml] [--shards DIR] [--model DIR] ...

Starts a Ray Train `TorchTrainer` with `train.num_workers` workers (`pipeline.training`): DDP,
checkpoints every `train.checkpoint_every` iterations, resume of a run started again with the
same parameters (same run name), a dead worker replaced (`train.max_failures`), a non-finite
loss stopping every worker with an error naming the iteration. Rank 0 logs to MLflow.

Writes the final model (`mrcnn.weights.save`: weights + config with the class map),
`metrics/train.json` (metrics only: iterations, images seen, final loss, wall time, resumes),
`metrics/train_run.json` (run name, MLflow run id, checkpoint) and `reports/train/losses.{csv,png}`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mrcnn import weights
from mrcnn.config import Config
from mrcnn.data import ShardDataset
from mrcnn.fileio import write_json_atomic
from mrcnn.model import build_model
from pipeline import layout
from pipeline.params import MlflowParams, TrainParams, load_model_config, load_section
from pipeline.reporting.train import write_loss_reports
from pipeline.tracking import store
from pipeline.training import driver
from pipeline.training.checkpoints import STATE_FILE, load_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainPaths:
    shards: Path  # train/ and val/ inside
    model_dir: Path
    metrics: Path  # train.json
    run_info: Path  # train_run.json
    reports: Path
    storage: Path  # Ray Train storage


def run(
    params: TrainParams,
    cfg: Config,
    paths: TrainPaths,
    mlflow_params: MlflowParams,
    uri: str,
    artifact_location: str | None = None,
) -> dict[str, Any]:
    """Train, then write the final model, the metrics and the loss curves -> train.json's
    metrics and train_run.json's run info in one dict. `artifact_location`: for an experiment
    created here (see `pipeline.tracking.store.default_artifact_location`)."""
    store.check_tracking_uri(uri)
    train_set = ShardDataset(paths.shards / "train")  # fails early on a missing/broken shard set
    name = driver.run_name(params, cfg, train_set.manifest)
    run_dir = paths.storage / name
    run_id = driver.mlflow_run(
        run_dir, name, params, cfg, train_set, mlflow_params.experiment, uri, artifact_location
    )
    logger.info("Ray run %s (storage %s), MLflow run %s", name, paths.storage, run_id)
    start = time.time()
    config = driver.loop_config(params, cfg, paths.shards, uri, run_id)
    result = driver.fit(config, params, name, paths.storage)
    wall = time.time() - start
    state = load_state(Path(result.checkpoint.path) / STATE_FILE)
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    class_map = train_set.manifest.get("class_map", {})
    weights.save(model, paths.model_dir, extra={"class_map": class_map, "run_name": name})
    history = driver.loss_history(uri, run_id)
    metrics = {
        "iterations": int(state["iteration"]),
        "images_seen": int(state["iteration"]) * params.global_batch(),
        "final_loss": history[-1].get("loss") if history else None,
        "wall_s": round(wall, 1),
        "resumes": int(state.get("resumes", 0)),
    }
    run_info = {
        "run_name": name,
        "mlflow_run_id": run_id,
        "checkpoint": str(result.checkpoint.path),
    }
    write_loss_reports(history, paths.reports)
    write_json_atomic(paths.metrics, metrics)
    write_json_atomic(paths.run_info, run_info)
    with store.start_run(uri, mlflow_params.experiment, run_id=run_id):  # resumes
        import mlflow

        mlflow.log_metrics({"train/wall_s": wall, "train/images_seen": metrics["images_seen"]})
        mlflow.log_artifact(str(paths.reports / "losses.png"), "train")
    return metrics | run_info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train Mask R-CNN with Ray Train (params: train).")
    ap.add_argument("--params", type=Path, default=layout.PARAMS)
    ap.add_argument("--shards", type=Path, default=layout.SHARDS)
    ap.add_argument("--model", type=Path, default=layout.MODEL, help="final model folder")
    ap.add_argument("--metrics", type=Path, default=layout.TRAIN_METRICS)
    ap.add_argument("--run-info", type=Path, default=layout.TRAIN_RUN)
    ap.add_argument("--reports", type=Path, default=layout.TRAIN_REPORTS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    root = layout.project_root(args.params)
    params = load_section(args.params, "train", TrainParams)
    if params.init_weights:  # Ray workers do not run in the project folder
        params = replace(params, init_weights=str(layout.under(root, params.init_weights)))
    mlflow_params = load_section(args.params, "mlflow", MlflowParams)
    shards = layout.under(root, args.shards)
    manifest = ShardDataset(shards / "train").manifest
    cfg = load_model_config(
        args.params,
        num_classes=manifest["num_classes"],
        image_size=manifest["image_size"],
        class_names=tuple(manifest["class_names"]),
    )
    paths = TrainPaths(
        shards=shards,
        model_dir=layout.under(root, args.model),
        metrics=layout.under(root, args.metrics),
        run_info=layout.under(root, args.run_info),
        reports=layout.under(root, args.reports),
        storage=layout.under(root, params.storage_path),
    )
    uri = store.tracking_uri(args.params, mlflow_params.tracking_uri)
    location = store.default_artifact_location(args.params, uri, mlflow_params)
    print(json.dumps(run(params, cfg, paths, mlflow_params, uri, location), indent=2))


if __name__ == "__main__":
    main()
