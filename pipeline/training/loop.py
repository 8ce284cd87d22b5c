"""The loop every Ray Train worker runs (`train_loop`), and rank 0's logging.

Each worker builds the same model (same seed), wraps it in DDP (`ray.train.torch.prepare_model`:
gloo on CPU, NCCL on GPU), reads its share of every global batch (`mrcnn.data.TrainLoader`),
runs bf16 autocast on GPU, clips gradients, steps the lr schedule, and every
`train.checkpoint_every` iterations reports a checkpoint (`pipeline.training.checkpoints`). A
non-finite loss on any rank stops every rank at the same iteration (one tiny all-reduce).
Rank 0 logs losses, lr, images/s and memory to MLflow and a progress line to the log.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mrcnn import weights
from mrcnn.config import Config
from mrcnn.data import Augmentation, ShardDataset, TrainLoader, storage
from mrcnn.modeling.model import build_model
from mrcnn.solver import build_optimizer, lr_scheduler, scale_schedule
from pipeline.paramfile import from_dict
from pipeline.tracking import active
from pipeline.tracking import training as tracked_run
from pipeline.train_params import TrainParams
from pipeline.training import faults
from pipeline.training.checkpoints import (
    NONFINITE_FILE,
    parameters_digest,
    report_checkpoint,
    resume_state,
    write_run_file,
)
from pipeline.training.periodic_eval import PeriodicEval

logger = logging.getLogger(__name__)


def train_loop(config: dict[str, Any]) -> None:
    """One worker's training. `config` is `pipeline.training.driver.loop_config`'s output."""
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
    global_batch = p.global_batch(world)
    sched = scale_schedule(
        p.lr, p.iterations, p.warmup_iters, global_batch, p.reference_batch, p.schedule, p.steps
    )

    torch.manual_seed(p.seed)  # identical initial weights on every rank
    model = build_model(cfg)
    if p.init_weights:
        load_init_weights(model, Path(p.init_weights))
    if p.channels_last:
        model.use_channels_last()
    model.to(device)
    if p.compile:
        model.compile_static()
    optimizer = build_optimizer(model, p.optimizer, sched.lr, p.weight_decay, p.momentum)
    scheduler = lr_scheduler(optimizer, sched)
    ddp = ray.train.torch.prepare_model(model)  # DDP when world > 1

    start, resumes = 0, 0
    state = resume_state(rank)
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
        ShardDataset(
            storage.join(config["shards"], "train"), cache_dir=p.shard_cache or None
        ),  # a folder, or s3://... read by each worker itself (cached per node with shard_cache)
        p.batch_size,
        seed=p.seed,
        rank=rank,
        world_size=world,
        start_iteration=start,
        hflip=p.hflip,
        augment=augmentation(p),
        max_gt=p.max_gt,
        num_workers=p.loader_workers,
        pin_memory=device.type == "cuda",
        keypoint_flip_map=cfg.keypoints.flip_map,
        num_keypoints=cfg.keypoints.count or None,
    )
    log = RankZeroLog(config["mlflow"], enabled=rank == 0, resumed=start > 0)
    evaluate = PeriodicEval(config, p) if p.eval_every and rank == 0 else None
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if p.amp and device.type == "cuda"
        else nullcontext()
    )
    fault = faults.load()
    batches = iter(loader)
    ddp.train()
    finished = False
    try:
        for it in range(start, sched.iterations):
            nan = faults.inject(fault, rank, it) if fault else False
            batch = next(batches).to(device, non_blocking=True)
            with amp:
                losses = ddp(batch)
            loss = model.total_loss(losses) * (float("nan") if nan else 1.0)
            if not all_finite(loss, world):
                if rank == 0:
                    found = {k: v.item() for k, v in losses.items()}
                    write_run_file(NONFINITE_FILE, {"iteration": it, "losses": found})
                return
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if p.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            optimizer.step()
            scheduler.step()
            lr = scheduler.get_last_lr()[0]
            log.step(it + 1, losses, loss, lr, global_batch, device, p.log_every, sched.iterations)
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
                report_checkpoint(state, metrics, rank, digest)
        finished = True
    finally:  # FAILED, not FINISHED, on an error or a non-finite loss (train.status: the driver)
        log.close("FINISHED" if finished else "FAILED")


def load_init_weights(model: torch.nn.Module, path: Path) -> None:
    """`train.init_weights`: a torchvision Mask R-CNN checkpoint, a folder saved by
    `mrcnn.weights.save` (any class count: the predictors are re-initialised and logged) or an
    ImageNet ResNet (`mrcnn.weights.load_init`)."""
    weights.load_init(model, path)


def augmentation(p: TrainParams) -> Augmentation:
    """The `train:` augmentation keys -> `mrcnn.data.Augmentation`."""
    return Augmentation(
        hflip=p.hflip,
        scale_range=tuple(p.scale_jitter) or None,
        short_sides=tuple(p.short_sides),
        crop=tuple(p.random_crop) or None,
    )


def all_finite(loss: torch.Tensor, world: int) -> bool:
    """True when every rank's loss is finite (one tiny all-reduce, so all ranks stop together)."""
    ok = torch.isfinite(loss.detach()).float().reshape(1)
    if world > 1:
        ok = ok.cpu() if dist.get_backend() == "gloo" else ok
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() == 1.0)


class RankZeroLog:
    """Losses, lr, images/s and memory to MLflow (rank 0 only) and a progress line to the log.

    The loss names are the keys of the model's loss dict (plus the weighted total `loss`)."""

    def __init__(self, mlflow_cfg: dict[str, Any], enabled: bool, resumed: bool) -> None:
        self.enabled = enabled
        self.sums: dict[str, float] = {}
        self.count = 0
        self.t0 = time.time()
        if enabled:
            status = "resumed" if resumed else "running"
            tracked_run.resume_on_worker(mlflow_cfg["tracking_uri"], mlflow_cfg["run_id"], status)

    def step(
        self,
        it: int,
        losses: dict[str, torch.Tensor],
        loss: torch.Tensor,
        lr: float,
        global_batch: int,
        device: torch.device,
        every: int,
        total: int,
    ) -> None:
        if not self.enabled:
            return
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.item()
        self.sums["loss"] = self.sums.get("loss", 0.0) + loss.item()
        self.count += 1
        if it % every and it != total:
            return
        dt = time.time() - self.t0
        metrics = {k: v / self.count for k, v in self.sums.items()}
        metrics["lr"] = lr
        metrics["images_per_s"] = self.count * global_batch / max(dt, 1e-9)
        metrics["memory_gb"] = memory_gb(device)
        active.log_metrics(metrics, step=it)
        eta = (total - it) * dt / self.count
        logger.info(
            "iter %d/%d loss %.4f lr %.2e %.1f img/s eta %s",
            it,
            total,
            metrics["loss"],
            lr,
            metrics["images_per_s"],
            hms(eta),
        )
        self.sums, self.count, self.t0 = {}, 0, time.time()

    def close(self, status: str = "FINISHED") -> None:
        if self.enabled:
            tracked_run.end_on_worker(status)


def memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated, or this process's resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import psutil

    return psutil.Process().memory_info().rss / 1e9


def hms(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"
