"""The training driver: a Ray Train `TorchTrainer` run of `pipeline.training.loop.train_loop`.

A run is named `<train.run_name>-<hash of the shards, model and train params>` (`run_name`;
`train.run_name` defaults to `<data source>-<model preset>`), so starting the same training
again resumes it: Ray Train V2 restores the latest checkpoint of that name from
`train.storage_path`, and the MLflow run id stored beside it (`mlflow_run.json`) is continued
(`mlflow_run`). Each start of the stage is an attempt, recorded in `attempts.json` beside it
(`record_attempt`), so the wall time of a resumed run is the sum over its attempts. `fit`
checks first that the cluster has what the run asks for (`check_resources`); it is also the
entry point of sweeps: `pipeline.sweep.trial` calls it from each trial with `TuneReportCallback`.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from mrcnn.config import Config
from mrcnn.data import ShardDataset, storage
from mrcnn.evaluation.ground_truth import val_annotations
from mrcnn.fileio import json_digest
from pipeline.paramfile import to_dict
from pipeline.tracking import login, store
from pipeline.tracking import training as tracked_run
from pipeline.train_params import PLACEMENTS, TrainParams
from pipeline.training import run_storage
from pipeline.training.checkpoints import NONFINITE_FILE, raise_if_nonfinite
from pipeline.training.loop import train_loop
from pipeline.training.progress import PROGRESS_FILE, ProgressLine
from pipeline.training.runtime import init_ray, seal
from pipeline.training.selection import checkpoint_config

logger = logging.getLogger(__name__)

MLFLOW_RUN_FILE = "mlflow_run.json"  # in the run directory: the MLflow run it logs to
ATTEMPTS_FILE = "attempts.json"  # in the run directory: one entry per start of the stage
# Settings that do not change what is trained: changing them resumes the same run. (Patience
# and the time budget only say where to stop: raising them continues a stopped run.)
NOT_IN_RUN_NAME = (
    "max_failures",
    "patience",
    "max_minutes",
    "keep",
    "log_every",
    "log_buffer",
    "loader_workers",
    "storage_path",
    "run_name",
    "placement",
    "shard_cache",
)


class ClusterResourceError(RuntimeError):
    """The Ray cluster lacks the GPUs or CPUs the run asks for; the message says what it has."""


def check_resources(params: TrainParams, available: dict[str, float]) -> None:
    """Raise `ClusterResourceError` unless `available` (`ray.cluster_resources()`) holds
    `train.num_workers` GPUs (with `train.use_gpu`) and num_workers x cpus_per_worker CPUs.
    (Ray itself would wait for them forever, retrying every minute.)"""
    gpus, cpus = available.get("GPU", 0.0), available.get("CPU", 0.0)
    sees = f"Ray sees {cpus:g} CPUs and {gpus:g} GPUs"
    if params.use_gpu and gpus < params.num_workers:
        raise ClusterResourceError(
            f"train.use_gpu is true with train.num_workers {params.num_workers}, but {sees}: set "
            "train.use_gpu: false, lower train.num_workers, or join a cluster with GPUs "
            "(RAY_ADDRESS)"
        )
    need = params.num_workers * params.cpus_per_worker
    if need > cpus:
        raise ClusterResourceError(
            f"train.num_workers {params.num_workers} x train.cpus_per_worker "
            f"{params.cpus_per_worker} = {need} CPUs, but {sees}: lower one of them"
        )


def check_cluster(params: TrainParams) -> None:
    """Start (or join) Ray and `check_resources` against it: what the train stage does before
    it opens an MLflow run, so that a run it cannot start leaves no FAILED run behind."""
    import ray

    init_ray()
    check_resources(params, ray.cluster_resources())


def data_source(manifest: dict[str, Any]) -> str:
    """The data source the shards were built from (`shapes`, `coco`, `local`): the raw folder
    `data/raw/<source>/` the manifest names; "data" when it names none."""
    images = (manifest.get("source") or {}).get("images", "")
    return Path(images).parent.name if images else "data"


def default_run_label(manifest: dict[str, Any], preset: str) -> str:
    """`train.run_name` when params.yaml leaves it empty: `<data source>-<model preset>`."""
    return f"{data_source(manifest)}-{preset}".replace("_", "-")


def run_name(params: TrainParams, cfg: Config, manifest: dict[str, Any]) -> str:
    """`<train.run_name>-<8 hex digits>`: same data, model and recipe -> same name
    (`train.run_name` should be set; `default_run_label` when it is empty)."""
    recipe = {k: v for k, v in to_dict(params).items() if k not in NOT_IN_RUN_NAME}
    data = {k: manifest.get(k) for k in ("index", "params", "counts", "class_map")}
    digest = json_digest({"train": recipe, "model": cfg.to_dict(), "data": data}, length=8)
    return f"{params.run_name or 'run'}-{digest}"


def loop_config(
    params: TrainParams, cfg: Config, shards: Path | str, tracking_uri: str, mlflow_run_id: str
) -> dict[str, Any]:
    """What `train_loop` gets on every worker: plain, serialisable values only.

    Rank 0 logs into the MLflow run `mlflow_run_id` (a sweep passes each trial's nested run),
    signed in with this process's MLflow login (`pipeline.tracking.login`), which the config
    carries `Sealed` (Ray is connected by now): a worker does not inherit it from the driver
    (a cluster's workers, or a local Ray started before the login was set, lack it), and a
    plain value would show in Ray Train's run state. `shards` is a folder every node sees or a
    URL (s3://...), which every node reads itself."""
    run = {"tracking_uri": tracking_uri, "run_id": mlflow_run_id}
    return {
        "train": to_dict(params),
        "model": cfg.to_dict(),
        "shards": resolve(shards),
        "val_annotations": val_annotations(shards) if params.eval_every else "",
        "mlflow": run | {"login": seal(login.current())},
    }


def resolve(location: Path | str) -> str:
    """A URL as is, a folder made absolute (Ray workers do not run in the project folder)."""
    return str(location) if storage.is_url(location) else str(Path(location).resolve())


def fit(
    config: dict[str, Any],
    params: TrainParams,
    name: str,
    storage_path: Path | str,
    callbacks: list | None = None,
    progress: bool = False,
):
    """Run `train_loop` under a Ray Train `TorchTrainer` -> its `Result`.

    `storage_path`: a folder every node sees, or a URL (s3://bucket/prefix: checkpoints and run
    files go there through Ray's pyarrow filesystem, credentials from each node's environment).
    Workers are placed by `train.placement` (Ray placement-group strategy: PACK fills a node
    first, SPREAD / STRICT_SPREAD put them on different nodes). With periodic validation Ray
    keeps the best checkpoint beside the latest (`pipeline.training.selection`). `progress`:
    show rank 0's progress as one live line (`pipeline.training.progress.ProgressLine`); Ray
    Train's own INFO lines (every checkpoint and report, worker-group start-up) then stay in the
    run's log files, not on the console (warnings and errors still show).
    Raises `NonFiniteLossError` when the loss went NaN/inf."""
    import ray
    import ray.train
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    quiet = {}
    if progress and hasattr(ray.train, "LoggingConfig"):  # Ray Train V2 (not older Rays)
        quiet = {"logging_config": ray.train.LoggingConfig(log_level="WARNING")}

    init_ray()
    check_resources(params, ray.cluster_resources())
    ray_path, ray_filesystem = run_storage.for_ray(resolve(storage_path))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=params.num_workers,
            use_gpu=params.use_gpu,
            resources_per_worker={"CPU": params.cpus_per_worker}
            | ({"GPU": 1} if params.use_gpu else {}),
            placement_strategy=PLACEMENTS[params.placement],
        ),
        run_config=RunConfig(
            name=name,
            storage_path=ray_path,
            storage_filesystem=ray_filesystem,  # s3://: retried for MRCNN_STORAGE_RETRY_S
            failure_config=FailureConfig(max_failures=params.max_failures),
            checkpoint_config=checkpoint_config(params),
            callbacks=callbacks or [],
            **quiet,
        ),
    )
    run_dir = storage.join(resolve(storage_path), name)
    for stale in (NONFINITE_FILE, PROGRESS_FILE):  # from an earlier attempt of this run
        storage.remove(storage.join(run_dir, stale))
    with ProgressLine(run_dir) if progress else nullcontext():
        result = trainer.fit()
    raise_if_nonfinite(run_dir)
    return result


def mlflow_run(
    run_dir: Path | str,
    name: str,
    params: TrainParams,
    cfg: Config,
    train_set: ShardDataset,
    experiment: str,
    uri: str,
    artifact_location: str | None = None,
) -> str:
    """The MLflow run of this training run: resumed from `run_dir/mlflow_run.json`, else new
    (with the flattened params logged once) -> its id. The new run is named `name`, or after
    the DVC experiment under `dvc exp run` (tag `dvc.experiment`). `artifact_location` applies
    when the experiment is created here (`pipeline.tracking.store.default_artifact_location`)."""
    marker = storage.join(run_dir, MLFLOW_RUN_FILE)  # a folder or a URL
    try:
        run_id = json.loads(storage.read_text(marker))["run_id"]
    except FileNotFoundError:
        run_id = None
    if run_id is not None:
        if tracked_run.run_exists(uri, run_id):
            return run_id
        logger.warning("MLflow run %s (from %s) is gone; starting a new one", run_id, marker)
    dvc_exp = store.dvc_experiment()
    flat = store.flatten({"train": to_dict(params), "model": cfg.to_dict()})
    flat["data.train_images"] = str(len(train_set))
    flat["data.manifest_sha256"] = train_set.manifest.get("index", {}).get("sha256", "")
    tags = {"stage": "train", "ray_run": name, "data.source": data_source(train_set.manifest)}
    tags |= {"dvc.experiment": dvc_exp} if dvc_exp else {}
    run_id = tracked_run.open_run(uri, experiment, dvc_exp or name, flat, tags, artifact_location)
    storage.write_text(marker, json.dumps({"run_id": run_id, "tracking_uri": uri}))
    return run_id


def record_attempt(run_dir: Path | str, wall_s: float, status: str) -> list[dict[str, Any]]:
    """Append this start of the stage (`wall_s`, `status` finished / failed) to the run's
    `attempts.json` (a folder or a URL) -> every attempt so far."""
    attempts = read_attempts(run_dir) + [{"wall_s": round(wall_s, 1), "status": status}]
    storage.write_text(storage.join(run_dir, ATTEMPTS_FILE), json.dumps(attempts, indent=1))
    return attempts


def read_attempts(run_dir: Path | str) -> list[dict[str, Any]]:
    """The attempts recorded for a run ([] for a new one)."""
    try:
        return json.loads(storage.read_text(storage.join(run_dir, ATTEMPTS_FILE)))
    except FileNotFoundError:
        return []
