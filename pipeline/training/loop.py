"""The loop every Ray Train worker runs (`train_loop`).

Each worker builds the same model (same seed), keeps an EMA of its weights when
`train.ema_decay` > 0 (`pipeline.training.ema`), wraps the model in DDP
(`ray.train.torch.prepare_model`: gloo on CPU, NCCL on GPU), reads its share of every global
batch (`mrcnn.data.TrainLoader`: `train.accumulate` micro-batches per iteration) and runs the
step of `pipeline.training.step` (bf16 autocast on GPU, clipping, lr schedule, EMA), which
leaves the losses on the device.

The host waits for the device only at *checks*: log steps and checkpoints. There the loss
window is read once (`LossWindow.read`) and the ranks agree (one tiny all-reduce) on the first
non-finite iteration, which stops every rank before anything of it is checkpointed, and on the
time budget (`train.max_minutes`). A checkpoint is reported every `train.checkpoint_every`
iterations, at every validation (`train.eval_every`: rank 0 validates the EMA, or the weights
without one, and tells the others the result), at a stop and at the end; it carries the
validation score Ray ranks checkpoints on (`pipeline.training.selection`) and, at a stop, why
(`pipeline.training.stopping`). Rank 0 logs to MLflow and writes the progress record the
driver shows (`pipeline.training.progress`).
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
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
from pipeline.tracking import login
from pipeline.train_params import TrainParams
from pipeline.training import faults
from pipeline.training.checkpoints import (
    NONFINITE_FILE,
    parameters_digest,
    report_checkpoint,
    resume_state,
    write_run_file,
)
from pipeline.training.ema import ModelEma
from pipeline.training.periodic_eval import PeriodicEval, iou_types_of
from pipeline.training.progress import PROGRESS_FILE, RankZeroLog
from pipeline.training.runtime import unseal
from pipeline.training.selection import SCORE_KEY, UNSCORED, resolve_metric
from pipeline.training.step import LossWindow, TrainStep, agree
from pipeline.training.stopping import Budget, Patience, still_stopped

logger = logging.getLogger(__name__)


@dataclass
class Worker:
    """What one worker trains and how it reports (built by `train_loop`)."""

    p: TrainParams
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    patience: Patience
    budget: Budget
    log: RankZeroLog
    evaluate: PeriodicEval | None
    metric: str | None
    total: int  # the run's last iteration
    window: LossWindow
    resumes: int = 0

    def checkpoint(
        self, n: int, loss: torch.Tensor, validate: bool, stop: str | None
    ) -> str | None:
        """Validate (when due) and report the checkpoint of iteration `n` on every rank ->
        why the run stops here (`stop`, or early_stop from this validation), or None."""
        metrics: dict[str, Any] = {"iteration": n, "loss": loss.item()}
        if self.metric is not None:
            metrics[SCORE_KEY] = UNSCORED
        if validate:
            t0 = time.monotonic()
            found, early = share(self._validate(n) if self.rank == 0 else None, self.world)
            metrics |= found
            stop = stop or ("early_stop" if early else None)
            self.log.paused(time.monotonic() - t0)
        if stop:
            metrics["stopped"] = stop
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": n,
            "resumes": self.resumes,
            "patience": self.patience.state_dict(),
            "loss_window": self.window.state_dict(),  # rank 0's is the one logged
            "elapsed_s": self.budget.elapsed(),
            "stopped": stop,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        last = stop is not None or n == self.total
        digest = parameters_digest(self.model) if last else None
        ema_digest = parameters_digest(self.ema.module) if last and self.ema else None
        self.log.flush()  # the metrics up to `n` reach MLflow before the checkpoint says n
        report_checkpoint(state, metrics, self.rank, digest, ema_digest, self.world)
        return stop

    def _validate(self, n: int) -> tuple[dict[str, float], bool]:
        """Rank 0: the val APs of the EMA (or the weights) and whether patience ran out."""
        found = self.evaluate(self.ema.module if self.ema is not None else self.model, n)
        value = found[self.metric]
        self.patience.validated(n, value)
        self.log.validated(n, value, (self.patience.best_iteration, self.patience.best))
        return found | {SCORE_KEY: value}, self.patience.exhausted


def quiet_report_lines() -> None:
    """Ray Train logs every `ray.train.report` at INFO ("Reporting training result ...") under a
    logger named by its file's path, which `RunConfig(logging_config=...)` does not reach; the
    progress line and MLflow say the same. Those loggers (any named by a path under ray/train/)
    are set to WARNING on this worker."""
    marker = f"{os.sep}ray{os.sep}train{os.sep}"
    for name in list(logging.root.manager.loggerDict):
        if marker in name:
            logging.getLogger(name).setLevel(logging.WARNING)


def train_loop(config: dict[str, Any]) -> None:
    """One worker's training. `config` is `pipeline.training.driver.loop_config`'s output."""
    import ray.train
    import ray.train.torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    quiet_report_lines()
    p = from_dict(TrainParams, config["train"], "train")
    cfg = Config.from_dict(config["model"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if rank == 0:  # the rank that logs to MLflow signs in as whoever started the run
        login.use(unseal(config["mlflow"].get("login"), {}))
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(p.cpus_per_worker)
    global_batch = p.global_batch(world)
    sched = scale_schedule(
        p.lr, p.iterations, p.warmup_iters, global_batch, p.reference_batch, p.schedule, p.steps
    )
    metric = resolve_metric(p.select_metric, cfg) if p.eval_every else None

    torch.manual_seed(p.seed)  # identical initial weights on every rank
    model = build_model(cfg)
    if p.init_weights:
        load_init_weights(model, Path(p.init_weights))
    if p.channels_last:
        model.use_channels_last()
    model.to(device)
    ema = ModelEma(model, p.ema_decay) if p.ema_decay else None  # before compile: plain copy
    if p.compile:
        model.compile_static()
    optimizer = build_optimizer(model, p.optimizer, sched.lr, p.weight_decay, p.momentum)
    scheduler = lr_scheduler(optimizer, sched)
    ddp = ray.train.torch.prepare_model(model)  # DDP when world > 1

    patience = Patience(p.patience)
    window = LossWindow(device)
    start, resumes, elapsed, stopped = 0, 0, 0.0, None
    state = resume_state(rank)
    if state is not None:
        start, resumes, elapsed, stopped = restore(
            state, model, optimizer, scheduler, ema, patience, window
        )
        logger.info("rank %d resumed at iteration %d (resume #%d)", rank, start, resumes)
        del state
    else:
        torch.manual_seed(p.seed * 1000 + rank)  # sampling randomness differs per rank
    budget = Budget(p.max_minutes, elapsed)
    if still_stopped(stopped, patience, budget):
        logger.info(
            "rank %d: the run stopped (%s) at iteration %d; raise train.patience or "
            "train.max_minutes to continue it",
            rank,
            stopped,
            start,
        )
        return

    loader = TrainLoader(
        ShardDataset(
            storage.join(config["shards"], "train"), cache_dir=p.shard_cache or None
        ),  # a folder, or s3://... read by each worker itself (cached per node with shard_cache)
        p.batch_size,
        seed=p.seed,
        rank=rank,
        world_size=world,
        start_iteration=start * p.accumulate,  # the loader counts micro-batches
        hflip=p.hflip,
        augment=augmentation(p),
        max_gt=p.max_gt,
        num_workers=p.loader_workers,
        pin_memory=device.type == "cuda",
        keypoint_flip_map=cfg.keypoints.flip_map,
        num_keypoints=cfg.keypoints.count or None,
    )
    log = RankZeroLog(
        config["mlflow"],
        enabled=rank == 0,
        resumed=start > 0,
        start=start,
        total=sched.iterations,
        global_batch=global_batch,
        device=device,
        metric=metric,
        write=lambda record: write_run_file(PROGRESS_FILE, record),
        log_buffer=p.log_buffer,
    )
    evaluate = PeriodicEval(config, p, iou_types_of(cfg)) if p.eval_every and rank == 0 else None
    worker = Worker(
        p, rank, world, device, model, ema, optimizer, scheduler, patience, budget, log,
        evaluate, metric, sched.iterations, window, resumes,
    )  # fmt: skip
    bf16 = p.amp and device.type == "cuda"
    step = TrainStep(
        ddp,
        model,
        optimizer,
        scheduler,
        accumulate=p.accumulate,
        grad_clip=p.grad_clip,
        autocast=lambda: torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext(),
        ema=ema,
    )
    fault = faults.load()
    batches = iter(loader)
    ddp.train()
    status = "FAILED"  # on an error or a non-finite loss (train.status: the driver)
    try:
        for it in range(start, sched.iterations):
            nan = faults.inject(fault, rank, it) if fault else False
            if fault:
                faults.corrupt(fault, model, it)
            micro = (next(batches).to(device, non_blocking=True) for _ in range(p.accumulate))
            terms, total = step(micro, poison=nan)
            window.add(it, terms, total)

            n = it + 1  # iterations done
            done = n == sched.iterations
            log_due = n % p.log_every == 0 or done
            validate = p.eval_every > 0 and (n % p.eval_every == 0 or done)
            save_due = n % p.checkpoint_every == 0 or done or validate
            if not (log_due or save_due):
                continue  # no host sync on this iteration
            first_bad, bad_terms, means = window.read(reset=log_due)
            first_bad, out_of_time = agree(first_bad, budget.exhausted, world, device)
            if first_bad is not None:  # nothing after it is checkpointed
                if rank == 0:
                    write_run_file(NONFINITE_FILE, {"iteration": first_bad, "losses": bad_terms})
                return
            if log_due:
                log.log(n, means, scheduler.get_last_lr()[0])
            stop = "time_budget" if out_of_time else ("iterations" if done else None)
            if save_due or stop:
                validate = validate or (stop is not None and p.eval_every > 0)
                stop = worker.checkpoint(n, total, validate, stop)
            if stop:
                log.stopped(stop)
                break
        status = "FINISHED"
    finally:
        log.close(status)


def restore(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ema: ModelEma | None,
    patience: Patience,
    window: LossWindow,
) -> tuple[int, int, float, str | None]:
    """Load a checkpoint's state (and this rank's RNG state) -> (iteration, resume count,
    training seconds so far, why it stopped or None)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.load_state_dict(state.get("ema") or {"weights": state["model"], "updates": 0})
    if "patience" in state:
        patience.load_state_dict(state["patience"])
    if "loss_window" in state:  # the losses since the last log step
        window.load_state_dict(state["loss_window"])
    if "rng" in state:
        torch.set_rng_state(state["rng"])
    resumes = int(state.get("resumes", 0)) + 1
    return (
        int(state["iteration"]),
        resumes,
        float(state.get("elapsed_s", 0.0)),
        state.get("stopped"),
    )


def share(value: Any, world: int) -> Any:
    """Rank 0's `value` on every rank (one broadcast; nothing to do with one worker)."""
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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
