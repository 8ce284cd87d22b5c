"""Stage `train`: data-parallel Mask R-CNN training with Ray Train, tracked in MLflow.

    python -m pipeline.train [--params params.yaml] [--shards DIR] [--model DIR] ...

Starts a Ray Train `TorchTrainer` with `train.num_workers` workers (`pipeline.training`): DDP,
checkpoints every `train.checkpoint_every` iterations, resume of a run started again with the
same parameters (same run name), a dead worker replaced (`train.max_failures`), a non-finite
loss stopping every worker with an error naming the iteration. Rank 0 logs to MLflow.

With periodic validation (`train.eval_every`) Ray keeps the best checkpoint by
`train.select_metric` beside the latest, and `train.keep` (best | last) says which one the model
is made of; `train.patience` and `train.max_minutes` stop a run early, with a checkpoint, and
the stage still succeeds. With `train.ema_decay` the model holds the EMA of the weights. The
driver shows rank 0's progress as one live line.

Writes the final model (`mrcnn.weights.save`: weights + config with the class map),
`metrics/train.json` (what experiments compare: iterations, images seen, final loss;
`stopped`: iterations | early_stop | time_budget; `best_iteration`, `best_metric`,
`best_value`, `kept` and `kept_iteration`: which checkpoint the model is),
`metrics/train_run.json` (run name, MLflow run id, checkpoint, and what differs between two
runs of one recipe: wall time over every attempt, attempts, resumes) and `reports/train/`:
`losses.{csv,png}` and `results.png` (losses, lr and validation AP over the iterations, the
best marked).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mrcnn import weights
from mrcnn.config import Config
from mrcnn.data import ShardDataset, storage
from mrcnn.fileio import replace_dir, write_json_atomic
from mrcnn.modeling.model import build_model
from pipeline import cli, layout
from pipeline.params import Params, load
from pipeline.reporting.train import write_loss_reports, write_results_figure
from pipeline.tracking import names, store
from pipeline.tracking import training as tracked_run
from pipeline.tracking.store import Tracking, TrackingError
from pipeline.train_params import TrainParams
from pipeline.training import driver
from pipeline.training.checkpoints import STATE_FILE, NonFiniteLossError, load_state
from pipeline.training.selection import Choice, choose, resolve_metric

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainPaths:
    """What train reads and writes."""

    shards: Path | str  # train/ and val/ inside; a folder or s3://bucket/prefix
    model_dir: Path
    metrics: Path  # train.json
    run_info: Path  # train_run.json
    reports: Path
    storage: Path | str  # Ray Train storage: a folder or s3://bucket/prefix
    tracking: Tracking  # the MLflow store and experiment of the run


@dataclass(frozen=True)
class TrainingRun:
    """One training run: its recipe (`train` with the run name filled in), model config and
    preset, names (Ray run, its folder, MLflow run) and training data."""

    recipe: TrainParams
    cfg: Config
    preset: str
    name: str
    run_dir: Path | str
    mlflow_run_id: str
    train_set: ShardDataset


def run(params: Params, paths: TrainPaths) -> dict[str, Any]:
    """Train (`train` and `model` sections), then write the final model, the metrics and the
    loss curves -> train.json's metrics and train_run.json's run info in one dict.

    Nothing of an earlier success is touched until this run has everything: the outputs are
    written beside and swapped in at the end. The MLflow run's tag `train.status` ends
    `finished` or `failed` (and the run FINISHED or FAILED)."""
    job = prepare(params, paths)
    uri = paths.tracking.uri
    logger.info(
        "Ray run %s (storage %s), MLflow run %s", job.name, paths.storage, job.mlflow_run_id
    )
    start = time.time()
    try:
        config = driver.loop_config(job.recipe, job.cfg, paths.shards, uri, job.mlflow_run_id)
        result = driver.fit(config, job.recipe, job.name, paths.storage, progress=True)
        this = {"wall_s": round(time.time() - start, 1), "status": "finished"}
        attempts = [*driver.read_attempts(job.run_dir), this]  # this one recorded once done
        out = _write_outputs(result, job, paths, attempts)
        driver.record_attempt(job.run_dir, this["wall_s"], "finished")
    except BaseException as e:
        driver.record_attempt(job.run_dir, time.time() - start, "failed")
        error = f"{type(e).__name__}: {e}"
        store.end_run(uri, job.mlflow_run_id, "failed", error, prefix="train")
        raise
    store.end_run(uri, job.mlflow_run_id, "finished", prefix="train")
    return out


def prepare(params: Params, paths: TrainPaths) -> TrainingRun:
    """The run to start or resume: model config from the shards' classes and size, the run
    name (`train.run_name`, by default `<data source>-<preset>`, plus a digest), the MLflow run
    (found again beside a resumed Ray run, else new). Fails early, before the MLflow run is
    opened, on a missing shard set, an unusable tracking store (a login refused, an experiment
    the login may not use), any input file the run will need (`check_inputs`) and a Ray
    cluster without the GPUs or CPUs asked for."""
    train_set = ShardDataset(storage.join(paths.shards, "train"))
    train_set.verify()  # a damaged shard fails here in one line, not in a worker mid-run
    store.check_tracking_uri(paths.tracking.uri)  # a server that is down, a login refused
    tracked_run.check_experiment(paths.tracking.uri, paths.tracking.experiment)  # 403
    manifest = train_set.manifest
    cfg = params.model_config(
        num_classes=manifest["num_classes"],
        image_size=manifest["image_size"],
        class_names=tuple(manifest["class_names"]),
    )
    recipe = params.train
    check_inputs(recipe, cfg, paths.shards)
    warn_about_recipe(recipe)
    if recipe.eval_every:
        resolve_metric(recipe.select_metric, cfg)  # a metric this model lacks fails here
    if not recipe.run_name:  # <data source>-<preset>, e.g. shapes-shapes-small
        recipe = replace(recipe, run_name=driver.default_run_label(manifest, params.preset))
    name = driver.run_name(recipe, cfg, manifest)
    run_dir = storage.join(driver.resolve(paths.storage), name)
    driver.check_cluster(recipe)  # GPUs / CPUs it lacks: refused before an MLflow run exists
    t = paths.tracking
    run_id = driver.mlflow_run(
        run_dir, name, recipe, cfg, train_set, t.experiment, t.uri, t.artifact_location
    )
    return TrainingRun(recipe, cfg, params.preset, name, run_dir, run_id, train_set)


def check_inputs(recipe: TrainParams, cfg: Config, shards: Path | str) -> None:
    """Every file the run will need, checked here, before Ray starts (inside Ray a missing file
    costs the worker retries and pages of tracebacks): the val shards when training evaluates
    (`train.eval_every`; checked against their manifest's checksums), and `train.init_weights`,
    loaded into a model on this process as each worker will load it (a file that is missing,
    not a checkpoint or of another architecture fails now, in one line)."""
    if recipe.eval_every:
        ShardDataset(storage.join(shards, "val")).verify()
    if recipe.init_weights:
        try:
            weights.load_init(build_model(cfg), recipe.init_weights)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"train.init_weights: {e}") from e


def warn_about_recipe(recipe: TrainParams) -> None:
    """Settings that are valid but rarely meant: said once, before training."""
    if recipe.warmup_iters > recipe.iterations:
        logger.warning(
            "train.warmup_iters (%d) is more than train.iterations (%d): the learning rate never "
            "reaches train.lr; lower warmup_iters",
            recipe.warmup_iters,
            recipe.iterations,
        )


def _write_outputs(
    result: Any, job: TrainingRun, paths: TrainPaths, attempts: list[dict[str, Any]]
) -> dict[str, Any]:
    """Model, losses, train.json, train_run.json: each built beside its target, then swapped in
    (a failure before the swaps leaves the previous outputs as they were)."""
    choice = choose(result, job.recipe.keep)
    latest = _load(result.checkpoint)
    kept = latest if choice.checkpoint.path == result.checkpoint.path else _load(choice.checkpoint)
    model = build_model(job.cfg)
    model.load_state_dict(kept["ema"]["weights"] if "ema" in kept else kept["model"])
    uri = paths.tracking.uri
    history = tracked_run.loss_history(uri, job.mlflow_run_id)
    validations = tracked_run.val_history(uri, job.mlflow_run_id)
    metrics = {
        "iterations": int(latest["iteration"]),
        "images_seen": int(latest["iteration"]) * job.recipe.global_batch(),
        "final_loss": history[-1].get("loss") if history else None,
    } | _selection(job, latest, kept, choice)
    run_info = {  # what differs between two runs of the same recipe: not metrics to compare
        "run_name": job.name,
        "mlflow_run_id": job.mlflow_run_id,
        "checkpoint": str(choice.checkpoint.path),  # the one the model is made of
        "latest_checkpoint": str(result.checkpoint.path),
        "data_source": driver.data_source(job.train_set.manifest),
        "wall_s": round(sum(a["wall_s"] for a in attempts), 1),  # over every attempt
        "attempts": len(attempts),
        "resumes": int(latest.get("resumes", 0)),  # continued from a checkpoint
    }
    extra = {"class_map": job.train_set.manifest.get("class_map", {}), "run_name": job.name}

    def reports(out: Path) -> None:
        write_loss_reports(history, out)
        write_results_figure(history, validations, metrics, out)

    _swap_in(paths, reports, lambda d: weights.save(model, d, extra, preset=job.preset))
    write_json_atomic(paths.metrics, metrics)
    write_json_atomic(paths.run_info, run_info)
    _log_outcome(uri, job.mlflow_run_id, metrics | run_info, paths.reports)
    return metrics | run_info


def _load(checkpoint: Any) -> dict[str, Any]:
    with checkpoint.as_directory() as d:  # downloaded first from object storage
        return load_state(Path(d) / STATE_FILE)


def _selection(
    job: TrainingRun, latest: dict[str, Any], kept: dict[str, Any], choice: Choice
) -> dict[str, Any]:
    """train.json's account of the stop and the choice: why training stopped, the best
    validation (None without one), which checkpoint the model is and whether it holds the EMA
    of the weights."""
    metric = resolve_metric(job.recipe.select_metric, job.cfg) if job.recipe.eval_every else None
    out = {
        "stopped": latest.get("stopped") or "iterations",
        "best_iteration": choice.best_iteration,
        "best_metric": metric,
        "best_value": choice.best_value,
        "kept": choice.kept,
        "kept_iteration": int(kept["iteration"]),
        "weights": "ema" if "ema" in kept else "raw",
    }
    logger.info(
        "training stopped (%s) at iteration %d; the model is the %s checkpoint, iteration %d%s",
        out["stopped"],
        int(latest["iteration"]),
        out["kept"],
        out["kept_iteration"],
        f" (best val {metric} {choice.best_value:.4f} at iteration {choice.best_iteration})"
        if choice.best_value is not None
        else "",
    )
    return out


def _log_outcome(uri: str, run_id: str, metrics: dict[str, Any], reports: Path) -> None:
    """What the MLflow run gets at the end: wall time, images, the best validation, why it
    stopped and what was kept (tags), and the report pictures."""
    outcome = {  # wall_s: every attempt together
        "wall_s": metrics["wall_s"],
        "images_seen": metrics["images_seen"],
    }
    if metrics["best_iteration"] is not None:
        outcome["best_iteration"] = metrics["best_iteration"]
        outcome[f"best_{metrics['best_metric']}"] = metrics["best_value"]
    tags = {
        "train.stopped": metrics["stopped"],
        "train.kept": f"{metrics['kept']} (iteration {metrics['kept_iteration']})",
        "train.weights": metrics["weights"],
    }
    pictures = [reports / "losses.png", reports / "results.png"]
    summary = names.prefixed(names.SUMMARY, outcome)  # train/summary/wall_s, ...
    tracked_run.log_outcome(uri, run_id, summary, pictures, "train", tags=tags)


def _swap_in(
    paths: TrainPaths, write_reports: Callable[[Path], Any], save_model: Callable[[Path], Any]
) -> None:
    """The model folder (written by `save_model`) and the reports (`write_reports`), staged
    beside their targets, then moved into place."""
    staged_model = paths.model_dir.with_name(f".{paths.model_dir.name}.new")
    staged_reports = paths.reports.with_name(f".{paths.reports.name}.new")
    for d in (staged_model, staged_reports):
        shutil.rmtree(d, ignore_errors=True)
    save_model(staged_model)
    write_reports(staged_reports)
    replace_dir(staged_model, paths.model_dir)
    paths.reports.mkdir(parents=True, exist_ok=True)
    for f in sorted(staged_reports.iterdir()):
        os.replace(f, paths.reports / f.name)
    staged_reports.rmdir()


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    errors = (TrackingError, driver.ClusterResourceError, NonFiniteLossError)
    log_format = "%(asctime)s %(name)s: %(message)s"
    cli.run_main(args, lambda: cli.show(run(*inputs(args))), errors, log_format)


def parser() -> argparse.ArgumentParser:
    ap = cli.parser(__doc__)
    ap.add_argument("--shards", default=str(layout.SHARDS), help="a folder or s3://bucket/prefix")
    ap.add_argument("--model", type=Path, default=layout.MODEL, help="final model folder")
    ap.add_argument("--metrics", type=Path, default=layout.TRAIN_METRICS)
    ap.add_argument("--run-info", type=Path, default=layout.TRAIN_RUN)
    ap.add_argument("--reports", type=Path, default=layout.TRAIN_REPORTS)
    return ap


def inputs(args: argparse.Namespace) -> tuple[Params, TrainPaths]:
    """The params file and the command line's paths, relative ones from the project root (Ray
    workers do not run in the project folder)."""
    params = load(args.params)
    root = layout.project_root(args.params)
    return params, TrainPaths(
        shards=layout.place(root, args.shards),
        model_dir=layout.under(root, args.model),
        metrics=layout.under(root, args.metrics),
        run_info=layout.under(root, args.run_info),
        reports=layout.under(root, args.reports),
        storage=layout.place(root, params.train.storage_path),
        tracking=store.locate(args.params, params.mlflow),
    )


if __name__ == "__main__":
    main()
