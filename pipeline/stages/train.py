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
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mrcnn import weights
from mrcnn.config import Config
from mrcnn.data import ShardDataset, storage
from mrcnn.fileio import replace_dir, write_json_atomic
from mrcnn.modeling.model import build_model
from pipeline import cli, layout
from pipeline.paramfile import DEFAULT_PRESET, load_model_config, load_params, load_section
from pipeline.params import MlflowParams
from pipeline.reporting.train import write_loss_reports
from pipeline.tracking import store
from pipeline.tracking import training as tracked_run
from pipeline.tracking.store import TrackingError
from pipeline.train_params import TrainParams
from pipeline.training import driver
from pipeline.training.checkpoints import STATE_FILE, NonFiniteLossError, load_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainPaths:
    shards: Path | str  # train/ and val/ inside; a folder or s3://bucket/prefix
    model_dir: Path
    metrics: Path  # train.json
    run_info: Path  # train_run.json
    reports: Path
    storage: Path | str  # Ray Train storage: a folder or s3://bucket/prefix


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
    created here (see `pipeline.tracking.store.default_artifact_location`).

    Nothing of an earlier success is touched until this run has everything: the outputs are
    written beside and swapped in at the end. The MLflow run's tag `train.status` ends
    `finished` or `failed` (and the run FINISHED or FAILED)."""
    store.check_tracking_uri(uri)
    # fails early on a missing/broken shard set
    train_set = ShardDataset(storage.join(paths.shards, "train"))
    name = driver.run_name(params, cfg, train_set.manifest)
    run_dir = storage.join(driver.resolve(paths.storage), name)
    run_id = driver.mlflow_run(
        run_dir, name, params, cfg, train_set, mlflow_params.experiment, uri, artifact_location
    )
    logger.info("Ray run %s (storage %s), MLflow run %s", name, paths.storage, run_id)
    start = time.time()
    try:
        config = driver.loop_config(params, cfg, paths.shards, uri, run_id)
        result = driver.fit(config, params, name, paths.storage)
        this = {"wall_s": round(time.time() - start, 1), "status": "finished"}
        attempts = [*driver.read_attempts(run_dir), this]  # this one recorded once it is done
        out = _write_outputs(result, params, cfg, paths, train_set, name, run_id, uri, attempts)
        driver.record_attempt(run_dir, this["wall_s"], "finished")
    except BaseException as e:
        driver.record_attempt(run_dir, time.time() - start, "failed")
        store.end_run(uri, run_id, "failed", f"{type(e).__name__}: {e}", prefix="train")
        raise
    store.end_run(uri, run_id, "finished", prefix="train")
    return out


def _write_outputs(
    result: Any,
    params: TrainParams,
    cfg: Config,
    paths: TrainPaths,
    train_set: ShardDataset,
    name: str,
    run_id: str,
    uri: str,
    attempts: list[dict[str, Any]],
) -> dict[str, Any]:
    """Model, losses, train.json, train_run.json: each built beside its target, then swapped in
    (a failure before the swaps leaves the previous outputs as they were)."""
    with result.checkpoint.as_directory() as d:  # downloaded first from object storage
        state = load_state(Path(d) / STATE_FILE)
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    class_map = train_set.manifest.get("class_map", {})
    history = tracked_run.loss_history(uri, run_id)
    metrics = {
        "iterations": int(state["iteration"]),
        "images_seen": int(state["iteration"]) * params.global_batch(),
        "final_loss": history[-1].get("loss") if history else None,
        "wall_s": round(sum(a["wall_s"] for a in attempts), 1),  # over every attempt
        "attempts": len(attempts),
        "resumes": int(state.get("resumes", 0)),  # continued from a checkpoint
    }
    run_info = {
        "run_name": name,
        "mlflow_run_id": run_id,
        "checkpoint": str(result.checkpoint.path),
        "data_source": driver.data_source(train_set.manifest),
    }
    staged_model = paths.model_dir.with_name(f".{paths.model_dir.name}.new")
    staged_reports = paths.reports.with_name(f".{paths.reports.name}.new")
    for d in (staged_model, staged_reports):
        shutil.rmtree(d, ignore_errors=True)
    weights.save(model, staged_model, extra={"class_map": class_map, "run_name": name})
    write_loss_reports(history, staged_reports)
    replace_dir(staged_model, paths.model_dir)
    paths.reports.mkdir(parents=True, exist_ok=True)
    for f in sorted(staged_reports.iterdir()):
        os.replace(f, paths.reports / f.name)
    staged_reports.rmdir()
    write_json_atomic(paths.metrics, metrics)
    write_json_atomic(paths.run_info, run_info)
    outcome = {  # wall_s: every attempt together
        "train/wall_s": metrics["wall_s"],
        "train/images_seen": metrics["images_seen"],
    }
    tracked_run.log_outcome(uri, run_id, outcome, [paths.reports / "losses.png"], "train")
    return metrics | run_info


def main(argv: list[str] | None = None) -> None:
    ap = cli.parser(__doc__)
    ap.add_argument("--shards", default=str(layout.SHARDS), help="a folder or s3://bucket/prefix")
    ap.add_argument("--model", type=Path, default=layout.MODEL, help="final model folder")
    ap.add_argument("--metrics", type=Path, default=layout.TRAIN_METRICS)
    ap.add_argument("--run-info", type=Path, default=layout.TRAIN_RUN)
    ap.add_argument("--reports", type=Path, default=layout.TRAIN_REPORTS)
    args = ap.parse_args(argv)
    errors = (TrackingError, driver.ClusterResourceError, NonFiniteLossError)
    cli.run_main(args, lambda: _main(args), errors, "%(asctime)s %(name)s: %(message)s")


def _main(args: argparse.Namespace) -> None:
    root = layout.project_root(args.params)
    params = load_section(args.params, "train", TrainParams)
    if params.init_weights:  # Ray workers do not run in the project folder
        params = replace(params, init_weights=str(layout.under(root, params.init_weights)))
    mlflow_params = load_section(args.params, "mlflow", MlflowParams)
    shards = args.shards if storage.is_url(args.shards) else layout.under(root, args.shards)
    manifest = ShardDataset(storage.join(shards, "train")).manifest
    cfg = load_model_config(
        args.params,
        num_classes=manifest["num_classes"],
        image_size=manifest["image_size"],
        class_names=tuple(manifest["class_names"]),
    )
    if not params.run_name:  # <data source>-<preset>, e.g. shapes-shapes-small
        preset = (load_params(args.params).get("model") or {}).get("preset", DEFAULT_PRESET)
        params = replace(params, run_name=driver.default_run_label(manifest, str(preset)))
    paths = TrainPaths(
        shards=shards,
        model_dir=layout.under(root, args.model),
        metrics=layout.under(root, args.metrics),
        run_info=layout.under(root, args.run_info),
        reports=layout.under(root, args.reports),
        storage=params.storage_path
        if storage.is_url(params.storage_path)
        else layout.under(root, params.storage_path),
    )
    uri = store.tracking_uri(args.params, mlflow_params.tracking_uri)
    location = store.default_artifact_location(args.params, uri, mlflow_params)
    print(json.dumps(run(params, cfg, paths, mlflow_params, uri, location), indent=2))


if __name__ == "__main__":
    main()
