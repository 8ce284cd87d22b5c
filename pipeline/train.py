"""Stage `train`: data-parallel Mask R-CNN training with Ray Train, tracked in MLflow.

    python -m pipeline.train [--params params.yaml]

The driver checks the tracking store, opens (or resumes) the MLflow run, and starts a Ray Train
`TorchTrainer` with `train.num_workers` workers (DDP: gloo on CPU, NCCL on GPU). Each worker
runs `train_loop`: its share of every global batch (`mrcnn.data.TrainLoader`), bf16 autocast on
GPU, gradient clipping, the lr schedule, and every `train.checkpoint_every` iterations a
checkpoint through `ray.train.report` (weights, optimiser, schedule, iteration, RNG). Rank 0
logs losses, lr, images/s and memory to MLflow.

Restarting with the same parameters resumes: the Ray run is named `<train.run_name>-<hash of
the shards, model and train params>`, Ray Train V2 restores the latest checkpoint of that name,
and the MLflow run id stored beside it is continued. A worker that dies is replaced and the
group resumes from the last checkpoint (`train.max_failures`). A non-finite loss stops all
workers together with an error naming the iteration and the losses; the last good checkpoint
stays in `runs/`.

Outputs: `models/final/` (weights + config, `mrcnn.weights.save`), `metrics/train.json`,
`reports/train/losses.csv` (for `dvc plots`) and `reports/train/losses.png`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import signal
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mrcnn import weights
from mrcnn.config import Config
from mrcnn.data import ShardDataset, TrainLoader
from mrcnn.fileio import write_json_atomic
from mrcnn.model import build_model
from mrcnn.solver import build_optimizer, lr_scheduler, scale_schedule
from pipeline.params import (
    MlflowParams,
    TrainParams,
    from_dict,
    load_model_config,
    load_section,
    to_dict,
)

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
MLFLOW_RUN_FILE = "mlflow_run.json"
NONFINITE_FILE = "nonfinite.json"  # rank 0 writes it into the run directory on a NaN/inf loss


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the run stopped before using it."""


@dataclass(frozen=True)
class TrainPaths:
    shards: Path  # data/shards (train/ and val/ inside)
    model_dir: Path  # models/final
    metrics: Path  # metrics/train.json
    reports: Path  # reports/train
    storage: Path  # Ray Train storage (runs/)

    @classmethod
    def under(cls, root: Path, params: TrainParams) -> TrainPaths:
        storage = Path(params.storage_path)
        return cls(
            shards=root / "data" / "shards",
            model_dir=root / "models" / "final",
            metrics=root / "metrics" / "train.json",
            reports=root / "reports" / "train",
            storage=storage if storage.is_absolute() else root / storage,
        )


def run(
    params: TrainParams,
    cfg: Config,
    paths: TrainPaths,
    mlflow_params: MlflowParams,
    tracking_uri: str,
    *,
    fault: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, then write the final model, metrics/train.json and the loss curves."""
    from pipeline import tracking

    tracking.check_tracking_uri(tracking_uri)
    train_set = ShardDataset(paths.shards / "train")  # fails early on a missing/broken shard set
    run_name = f"{params.run_name}-{config_hash(params, cfg, train_set.manifest)}"
    run_dir = paths.storage / run_name
    run_id = _mlflow_run(run_dir, run_name, params, cfg, train_set, mlflow_params, tracking_uri)
    logger.info("Ray run %s (storage %s), MLflow run %s", run_name, paths.storage, run_id)
    loop_config = make_loop_config(params, cfg, paths.shards, tracking_uri, run_id, fault=fault)
    start = time.time()
    result = fit(loop_config, params, run_name, paths.storage)
    wall = time.time() - start
    state = load_state(Path(result.checkpoint.path) / STATE_FILE)
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    class_map = {k: v["category_id"] for k, v in train_set.manifest.get("class_map", {}).items()}
    weights.save(model, paths.model_dir, extra={"class_map": class_map, "run_name": run_name})
    history = _loss_history(tracking_uri, run_id)
    summary = {
        "iterations": int(state["iteration"]),
        "images_seen": int(state["iteration"]) * _global_batch(params),
        "final_loss": history[-1]["loss"] if history else None,
        "wall_s": round(wall, 1),
        "resumes": int(state.get("resumes", 0)),
        "run_name": run_name,
        "mlflow_run_id": run_id,
        "checkpoint": str(result.checkpoint.path),
    }
    _write_reports(history, paths.reports)
    write_json_atomic(paths.metrics, summary)
    with tracking.start_run(tracking_uri, mlflow_params.experiment, run_id=run_id):  # resumes
        import mlflow

        mlflow.log_metrics({"train/wall_s": wall, "train/images_seen": summary["images_seen"]})
        if (paths.reports / "losses.png").exists():
            mlflow.log_artifact(str(paths.reports / "losses.png"), "train")
    return summary


def make_loop_config(
    params: TrainParams,
    cfg: Config,
    shards: Path,
    tracking_uri: str,
    mlflow_run_id: str,
    *,
    fault: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What `train_loop` gets on every worker: plain, serialisable values only.

    Rank 0 logs into the MLflow run `mlflow_run_id` (a sweep passes each trial's nested run)."""
    return {
        "train": to_dict(params),
        "model": cfg.to_dict(),
        "shards": str(Path(shards).resolve()),
        "val_annotations": str(_val_annotations(Path(shards))) if params.eval_every else "",
        "mlflow": {"tracking_uri": tracking_uri, "run_id": mlflow_run_id},
        "fault": fault,
    }


def fit(
    loop_config: dict[str, Any],
    params: TrainParams,
    run_name: str,
    storage: Path,
    callbacks: list | None = None,
):
    """Run `train_loop` under a Ray Train `TorchTrainer`; returns its `Result`.

    Also the entry point of sweeps: `pipeline.tune` calls it from each trial with
    `TuneReportCallback`. Raises `NonFiniteLossError` when the loss went NaN/inf.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=params.num_workers,
            use_gpu=params.use_gpu,
            resources_per_worker={"CPU": params.cpus_per_worker}
            | ({"GPU": 1} if params.use_gpu else {}),
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(Path(storage).resolve()),
            failure_config=FailureConfig(max_failures=params.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or [],
        ),
    )
    run_dir = Path(storage).resolve() / run_name
    (run_dir / NONFINITE_FILE).unlink(missing_ok=True)  # from an earlier attempt of this run
    result = trainer.fit()
    _raise_if_nonfinite(run_dir)
    return result


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster at RAY_ADDRESS, or start a local Ray with its dashboard. Ray Train V2
    cleans up a run's worker placement group through the dashboard's state API (for a sweep's
    stopped trials, see `pipeline.tune.check_state_api`); without it its watcher logs "State
    API may be temporarily unavailable" every few seconds. No-op when Ray is up already."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    port = _free_port()
    # Ray's own processes look the dashboard up through this variable; without it they give up
    # when the machine runs more than one Ray instance ("Found multiple active Ray instances").
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        log_to_driver=True,
        configure_logging=False,
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_hash(params: TrainParams, cfg: Config, manifest: dict[str, Any]) -> str:
    """8 hex digits identifying a training run: same data, model and recipe -> same name.

    Scaling, logging and fault-tolerance settings are left out, so changing them resumes."""
    recipe = to_dict(params)
    for key in ("max_failures", "log_every", "loader_workers", "storage_path", "run_name"):
        recipe.pop(key)
    data = {k: manifest.get(k) for k in ("index", "params", "counts", "class_map")}
    blob = json.dumps({"train": recipe, "model": cfg.to_dict(), "data": data}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


# ---------------------------------------------------------------------------------------------
# The loop every Ray worker runs.


def train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p = from_dict(TrainParams, config["train"], "train")
    cfg = Config.from_dict(config["model"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(p.cpus_per_worker)
    global_batch = p.batch_size * world
    sched = scale_schedule(
        p.lr, p.iterations, p.warmup_iters, global_batch, p.reference_batch, p.schedule, p.steps
    )

    torch.manual_seed(p.seed)  # identical initial weights on every rank
    model = build_model(cfg)
    if p.init_weights:
        _load_init_weights(model, Path(p.init_weights))
    if p.channels_last:
        model.use_channels_last()
    model.to(device)
    if p.compile:
        model.compile_static()
    optimizer = build_optimizer(model, p.optimizer, sched.lr, p.weight_decay, p.momentum)
    scheduler = lr_scheduler(optimizer, sched)
    ddp = ray.train.torch.prepare_model(model)  # DDP when world > 1

    start, resumes = 0, 0
    state = _resume_state(rank)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, resumes = int(state["iteration"]), int(state.get("resumes", 0)) + 1
        if "rng" in state:
            torch.set_rng_state(state["rng"])
        logger.info("rank %d resumed at iteration %d (resume #%d)", rank, start, resumes)
        del state
    else:
        torch.manual_seed(p.seed * 1000 + rank)  # sampling randomness differs per rank

    loader = TrainLoader(
        ShardDataset(Path(config["shards"]) / "train"),
        p.batch_size,
        seed=p.seed,
        rank=rank,
        world_size=world,
        start_iteration=start,
        hflip=p.hflip,
        max_gt=p.max_gt,
        num_workers=p.loader_workers,
        pin_memory=device.type == "cuda",
    )
    log = _RankZeroLog(config["mlflow"], enabled=rank == 0, resumed=start > 0)
    evaluate = _PeriodicEval(config, p) if p.eval_every and rank == 0 else None
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if p.amp and device.type == "cuda"
        else nullcontext()
    )
    fault = config.get("fault") or {}
    batches = iter(loader)
    ddp.train()
    try:
        for it in range(start, sched.iterations):
            nan = _inject_fault(fault, rank, it)
            batch = next(batches).to(device, non_blocking=True)
            with amp:
                losses = ddp(batch)
            loss = model.total_loss(losses) * (float("nan") if nan else 1.0)
            if not _all_finite(loss, world):
                if rank == 0:
                    _write_run_file(
                        NONFINITE_FILE,
                        {"iteration": it, "losses": {k: v.item() for k, v in losses.items()}},
                    )
                return
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if p.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            optimizer.step()
            scheduler.step()
            log.step(
                it + 1,
                losses,
                loss,
                scheduler.get_last_lr()[0],
                global_batch,
                device,
                every=p.log_every,
                total=sched.iterations,
            )
            done = it + 1 == sched.iterations
            eval_due = p.eval_every > 0 and ((it + 1) % p.eval_every == 0 or done)
            if (it + 1) % p.checkpoint_every == 0 or done or eval_due:
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "iteration": it + 1,
                    "resumes": resumes,
                }
                metrics = {"iteration": it + 1, "loss": loss.item()}
                if eval_due and evaluate is not None:  # rank 0; the others wait in report
                    metrics |= evaluate(model, it + 1)
                digest = parameters_digest(model) if done else None
                _report_checkpoint(state, metrics, rank, digest)
    finally:
        log.close()


def _resume_state(rank: int) -> dict[str, Any] | None:
    """The training state to resume from (with this rank's RNG state under "rng"), or None.

    Usually Ray's latest registered checkpoint. But the Ray Train controller collects the
    workers' reports every 2 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), so a worker that dies just
    after `report` leaves a complete checkpoint on storage that Ray never registered; on local
    or mounted storage a newer such directory is used instead of losing those iterations."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    registered = Path(checkpoint.path).name if checkpoint is not None else ""
    for d in _unregistered_checkpoints(registered):
        try:
            return _read_checkpoint(d, rank)
        except Exception as e:  # a half-written copy: the worker died while persisting it
            logger.warning("skipping unregistered checkpoint %s: %s", d, e)
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return _read_checkpoint(Path(d), rank)


def _unregistered_checkpoints(registered: str) -> list[Path]:
    """Checkpoint directories of this run newer than `registered` (by name, which Ray stamps
    with the time), newest first; [] on remote storage."""
    import pyarrow.fs
    import ray.train

    try:  # a DeveloperAPI of Ray Train: without it, only registered checkpoints are used
        storage = ray.train.get_context().get_storage()
        local = isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem)
        experiment = Path(storage.experiment_fs_path)
    except AttributeError:
        return []
    if not local:
        return []
    found = experiment.glob("checkpoint_*")
    return sorted((d for d in found if d.is_dir() and d.name > registered), reverse=True)


def _read_checkpoint(d: Path, rank: int) -> dict[str, Any]:
    state = load_state(d / STATE_FILE)
    rng = d / f"rng_rank{rank}.pt"
    if rng.exists():
        state["rng"] = torch.load(rng, weights_only=True)
    return state


def _write_run_file(name: str, data: dict[str, Any]) -> None:
    """A JSON file in this run's Ray Train storage directory (local or remote). Ray V2's
    `Result.metrics` only holds the metrics of the latest checkpoint, so what the driver must
    learn without a checkpoint travels this way."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    path = f"{storage.experiment_fs_path}/{name}"
    with storage.storage_filesystem.open_output_stream(path) as f:
        f.write(json.dumps(data).encode())


def _raise_if_nonfinite(run_dir: Path) -> None:
    marker = run_dir / NONFINITE_FILE
    if not marker.is_file():
        return
    info = json.loads(marker.read_text())
    raise NonFiniteLossError(
        f"non-finite loss at iteration {info['iteration']}: {info['losses']}; training stopped, "
        f"the last good checkpoint is kept in {run_dir} (lower train.lr, raise "
        "train.warmup_iters or set train.grad_clip)"
    )


def _all_finite(loss: torch.Tensor, world: int) -> bool:
    """True when every rank's loss is finite (one tiny all-reduce, so all ranks stop together)."""
    ok = torch.isfinite(loss.detach()).float().reshape(1)
    if world > 1:
        ok = ok.cpu() if dist.get_backend() == "gloo" else ok
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() == 1.0)


def _report_checkpoint(
    state: dict[str, Any], metrics: dict[str, Any], rank: int, digest: str | None = None
) -> None:
    """Every rank reports (a barrier); rank 0 writes the weights, each rank its RNG state (and
    on the last one a digest of its parameters, which DDP keeps equal across ranks)."""
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        if rank == 0:
            torch.save(state, Path(d) / STATE_FILE)
        torch.save(torch.get_rng_state(), Path(d) / f"rng_rank{rank}.pt")
        if digest:
            (Path(d) / f"weights_rank{rank}.sha256").write_text(digest)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def parameters_digest(model: torch.nn.Module) -> str:
    """sha256 of every learnable parameter. (BatchNorm's running statistics are buffers that
    each rank updates from its own images, so they are left out.)"""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode() + p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_state(path: Path) -> dict[str, Any]:
    """A training checkpoint (tensors and plain values only: loaded with weights_only=True)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_init_weights(model, path: Path) -> None:
    sd = weights.read_state_dict(path)
    if any(k.startswith("roi_heads.") for k in sd):
        weights.load_torchvision(model, sd)
    else:
        weights.load_backbone(model, sd)


def _inject_fault(fault: dict[str, Any], rank: int, it: int) -> bool:
    """Tests only. `fault["kill"] = {rank, iteration, marker}` SIGKILLs that worker once;
    `fault["nan_iteration"] = it` makes that iteration's loss NaN (returns True)."""
    kill = fault.get("kill")
    if kill and kill["rank"] == rank and kill["iteration"] == it:
        marker = Path(kill["marker"])
        if not marker.exists():
            marker.write_text(f"killed rank {rank} at iteration {it}\n")
            os.kill(os.getpid(), signal.SIGKILL)
    return fault.get("nan_iteration") == it


class _PeriodicEval:
    """Val AP of the first `train.eval_images` val images (rank 0), for sweeps and curves."""

    def __init__(self, config: dict[str, Any], p: TrainParams) -> None:
        import contextlib
        import io

        from pycocotools.coco import COCO

        self.val = ShardDataset(Path(config["shards"]) / "val")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints
            self.gt = COCO(config["val_annotations"])
        n = min(p.eval_images, len(self.val))
        self.image_ids = [int(self.val.read_meta(i)["image_id"]) for i in range(n)]
        self.batch_size = p.batch_size

    def __call__(self, model, iteration: int) -> dict[str, float]:
        import mlflow

        from mrcnn.coco_eval import coco_evaluate
        from pipeline.evaluate import predict_dataset

        results = predict_dataset(
            model, self.val, self.batch_size, max_images=len(self.image_ids), progress=False
        )
        scores = coco_evaluate(self.gt, results, image_ids=self.image_ids)
        metrics = {"bbox_AP": scores.metrics["bbox"]["AP"], "segm_AP": scores.metrics["segm"]["AP"]}
        if mlflow.active_run() is not None:
            mlflow.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=iteration)
        logger.info(
            "iteration %d: val bbox AP %.3f, segm AP %.3f",
            iteration,
            metrics["bbox_AP"],
            metrics["segm_AP"],
        )
        return metrics


class _RankZeroLog:
    """Losses, lr, images/s and memory to MLflow (rank 0 only) and a progress line to the log."""

    def __init__(self, mlflow_cfg: dict[str, Any], enabled: bool, resumed: bool) -> None:
        self.enabled = enabled
        self.sums: dict[str, float] = {}
        self.count = 0
        self.t0 = time.time()
        self.start = time.time()
        if enabled:
            import mlflow

            mlflow.set_tracking_uri(mlflow_cfg["tracking_uri"])
            mlflow.start_run(run_id=mlflow_cfg["run_id"], log_system_metrics=True)
            mlflow.set_tag("train.status", "resumed" if resumed else "running")

    def step(self, it, losses, loss, lr, global_batch, device, *, every: int, total: int) -> None:
        if not self.enabled:
            return
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.item()
        self.sums["loss"] = self.sums.get("loss", 0.0) + loss.item()
        self.count += 1
        if it % every and it != total:
            return
        import mlflow

        dt = time.time() - self.t0
        metrics = {k: v / self.count for k, v in self.sums.items()}
        metrics["lr"] = lr
        metrics["images_per_s"] = self.count * global_batch / max(dt, 1e-9)
        metrics["memory_gb"] = _memory_gb(device)
        mlflow.log_metrics(metrics, step=it)
        eta = (total - it) * dt / self.count
        logger.info(
            "iter %d/%d loss %.4f lr %.2e %.1f img/s eta %s",
            it,
            total,
            metrics["loss"],
            lr,
            metrics["images_per_s"],
            _hms(eta),
        )
        self.sums, self.count, self.t0 = {}, 0, time.time()

    def close(self) -> None:
        if self.enabled:
            import mlflow

            mlflow.end_run()


def _memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import psutil

    return psutil.Process().memory_info().rss / 1e9


def _hms(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


# ---------------------------------------------------------------------------------------------
# Driver helpers.


def _val_annotations(shards: Path) -> Path:
    """The val split's original COCO annotations, as recorded in its shard manifest."""
    manifest = ShardDataset(shards / "val").manifest
    path = Path(manifest["source"]["annotations"])
    if not path.is_absolute():  # recorded relative to the project root (shards = root/data/shards)
        path = shards.resolve().parent.parent / path
    if not path.is_file():
        raise FileNotFoundError(
            f"train.eval_every needs the val annotations {path} (run the download stage)"
        )
    return path


def _global_batch(params: TrainParams) -> int:
    return params.batch_size * max(1, params.num_workers)


def _mlflow_run(
    run_dir: Path,
    run_name: str,
    params: TrainParams,
    cfg: Config,
    train_set: ShardDataset,
    mlflow_params: MlflowParams,
    uri: str,
) -> str:
    """The MLflow run of this training run: resumed from `run_dir/mlflow_run.json`, else new
    (with the flattened params logged once)."""
    import mlflow

    from pipeline import tracking

    marker = run_dir / MLFLOW_RUN_FILE
    if marker.exists():
        run_id = json.loads(marker.read_text())["run_id"]
        mlflow.set_tracking_uri(uri)
        if tracking.run_exists(run_id):
            return run_id
        logger.warning("MLflow run %s (from %s) is gone; starting a new one", run_id, marker)
    location = mlflow_params.artifact_location or None
    with tracking.start_run(
        uri, mlflow_params.experiment, run_name=run_name, artifact_location=location
    ) as active:
        flat = tracking.flatten({"train": to_dict(params), "model": cfg.to_dict()})
        flat["data.train_images"] = str(len(train_set))
        flat["data.manifest_sha256"] = train_set.manifest.get("index", {}).get("sha256", "")
        mlflow.log_params(flat)
        mlflow.set_tags({"stage": "train", "ray_run": run_name})
        run_id = active.info.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
    return run_id


def _loss_history(uri: str, run_id: str) -> list[dict[str, float]]:
    """Per-step loss terms from MLflow (covers resumed runs as one curve)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    keys = [
        "loss",
        "loss_rpn_objectness",
        "loss_rpn_box",
        "loss_classifier",
        "loss_box",
        "loss_mask",
        "lr",
    ]
    rows: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            rows.setdefault(m.step, {"step": m.step})[key] = m.value
    return [rows[s] for s in sorted(rows)]


def _write_reports(history: list[dict[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    keys = [
        k
        for k in (
            "step",
            "loss",
            "loss_rpn_objectness",
            "loss_rpn_box",
            "loss_classifier",
            "loss_box",
            "loss_mask",
            "lr",
        )
        if any(k in r for r in history)
    ]
    tmp = out / "losses.csv.tmp"
    with open(tmp, "w") as f:
        f.write(",".join(keys) + "\n")
        for r in history:
            f.write(",".join(f"{r.get(k, float('nan')):.6g}" for k in keys) + "\n")
    tmp.replace(out / "losses.csv")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for k in keys:
        if k.startswith("loss"):
            ax.plot(
                [r["step"] for r in history],
                [r.get(k, math.nan) for r in history],
                label=k,
                linewidth=2.0 if k == "loss" else 1.0,
            )
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (log)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "losses.png.tmp.png")
    plt.close(fig)
    (out / "losses.png.tmp.png").replace(out / "losses.png")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train Mask R-CNN with Ray Train (params: train).")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from pipeline import tracking

    root = args.params.resolve().parent
    params = load_section(args.params, "train", TrainParams)
    mlflow_params = load_section(args.params, "mlflow", MlflowParams)
    manifest = ShardDataset(root / "data" / "shards" / "train").manifest
    cfg = load_model_config(
        args.params,
        num_classes=manifest["num_classes"],
        image_size=manifest["image_size"],
        class_names=tuple(manifest["class_names"]),
    )
    uri = tracking.tracking_uri(args.params, mlflow_params.tracking_uri)
    summary = run(params, cfg, TrainPaths.under(root, params), mlflow_params, uri)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
