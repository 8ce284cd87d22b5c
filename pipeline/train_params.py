"""The `train` and `tune` sections of params.yaml: the training recipe (`TrainParams`,
`pipeline.train`) and the Ray Tune sweeps over it (`TuneParams`, `pipeline.tune`).

Loaded like every section (`pipeline.paramfile.load_section`) and checked with the others by
`pipeline.params.validate_file`; the sweep's search space `tune.space` is a mapping parsed by
`pipeline.search_space` (not a field).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.paramfile import check


def check_range(v: tuple[float, ...], key: str, top: float) -> None:
    """`[]` (off) or `[lo, hi]` with 0 < lo <= hi <= top."""
    ok = not v or (len(v) == 2 and 0 < v[0] <= v[1] <= top)
    check(ok, key, f"must be [] or [lo, hi] with 0 < lo <= hi <= {top}")


# train.select_metric: what periodic validation reports (auto: segm_AP with a mask head, else
# bbox_AP; keypoints_AP for a keypoint model; `pipeline.training.selection.resolve_metric`)
SELECT_METRICS = ("auto", "segm_AP", "bbox_AP", "keypoints_AP")

# train.placement -> Ray's placement-group strategy for the worker group
PLACEMENTS = {"pack": "PACK", "spread": "SPREAD", "strict_spread": "STRICT_SPREAD"}


@dataclass
class TrainParams:
    """`train`: data-parallel training with Ray Train (`pipeline.train`).

    `lr`, `iterations`, `warmup_iters` and `steps` are given at `reference_batch` images per
    iteration and scale with the real global batch (workers x batch_size x accumulate): the lr
    linearly, the iteration counts inversely (Goyal et al., 2017), so one setting serves 1 CPU
    or 8 GPUs.

    With periodic validation (`eval_every` > 0) Ray keeps the checkpoint with the best
    `select_metric` beside the latest; `keep` says which one becomes the model, `patience`
    stops a run whose validation stopped improving, `max_minutes` one that used its time.
    """

    num_workers: int = 1  # Ray Train workers: CPU processes here, one per GPU with use_gpu
    use_gpu: bool = False
    cpus_per_worker: int = 2  # torch threads per worker on CPU
    batch_size: int = 8  # images per worker per iteration
    reference_batch: int = 8
    iterations: int = 800
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9, the paper's recipe)
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | step
    warmup_iters: int = 50
    steps: tuple[float, ...] = (0.75, 1.0)  # step schedule: lr x0.1 at these fractions
    grad_clip: float = 10.0  # max gradient norm; 0 = off
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    compile: bool = False  # torch.compile the fixed-shape parts (GPU)
    channels_last: bool = False
    max_gt: int = 16  # ground-truth slots per image (COCO: 100)
    loader_workers: int = 0  # DataLoader processes per Ray worker
    hflip: bool = True
    scale_jitter: tuple[float, ...] = ()  # [lo, hi]: each image scaled by U(lo, hi); [] = off
    short_sides: tuple[int, ...] = ()  # multi-scale: short side drawn from these px (<= frame)
    random_crop: tuple[float, ...] = ()  # [lo, hi]: crop U(lo, hi) of each side; [] = off
    seed: int = 0
    log_every: int = 20
    # metric points held while the tracking server is unreachable (sent when it is back); past
    # it the oldest are dropped and named on the run (tag tracking.dropped_steps)
    log_buffer: int = 100_000
    checkpoint_every: int = 200
    eval_every: int = 0  # val AP every N iterations (best checkpoint, patience); 0 = off
    eval_images: int = 100  # val images used by those periodic evaluations
    select_metric: str = "auto"  # the val AP that ranks checkpoints; auto: segm (bbox, keypoints)
    keep: str = "best"  # best | last: the checkpoint models/final is made of (best: eval_every)
    patience: int = 0  # stop after this many validations without improvement; 0 = off
    max_minutes: float = 0.0  # stop cleanly (checkpoint first) after this training time; 0 = off
    ema_decay: float = 0.0  # EMA of the weights, validated and saved instead of them; 0 = off
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)
    max_failures: int = 2  # worker-group restarts from the last checkpoint
    # Ray run = <run_name>-<hash of shards/model/train params>; "" = <data source>-<preset>
    run_name: str = ""
    storage_path: str = "runs"  # Ray Train storage: a folder, or s3://bucket/prefix on a cluster
    placement: str = "pack"  # workers' placement group: pack | spread | strict_spread (nodes)
    shard_cache: str = ""  # s3:// shards: a local folder per node for whole shards; "" = none
    init_weights: str = ""  # torchvision Mask R-CNN (.pth) or ImageNet ResNet checkpoint

    def global_batch(self, world_size: int | None = None) -> int:
        """Images per iteration (optimizer step) over all workers and accumulated micro-batches
        (`world_size` defaults to num_workers): the batch the linear scaling rule counts."""
        return self.batch_size * max(1, world_size or self.num_workers) * self.accumulate

    def validate(self) -> None:
        check(self.num_workers >= 0, "num_workers", "must be >= 0 (0 = in-process, no Ray)")
        for name in ("cpus_per_worker", "batch_size", "reference_batch", "iterations"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(self.optimizer in ("adamw", "sgd"), "optimizer", "must be adamw or sgd")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(self.schedule in ("cosine", "step"), "schedule", "must be cosine or step")
        check(self.warmup_iters >= 0, "warmup_iters", "must be >= 0")
        check(all(0 < s <= 1 for s in self.steps), "steps", "must be fractions in (0, 1]")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0")
        check(self.max_gt >= 1, "max_gt", "must be >= 1")
        check_range(self.scale_jitter, "scale_jitter", float("inf"))  # LSJ: [0.1, 2.0]
        check_range(self.random_crop, "random_crop", 1.0)
        check(all(s >= 1 for s in self.short_sides), "short_sides", "must be sizes in px")
        check(not (self.scale_jitter and self.short_sides), "short_sides", "excludes scale_jitter")
        for name in ("log_every", "checkpoint_every"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(self.log_buffer >= 1, "log_buffer", "must be >= 1")
        check(self.eval_every >= 0, "eval_every", "must be >= 0")
        check(self.eval_images >= 1, "eval_images", "must be >= 1")
        check(
            self.select_metric in SELECT_METRICS,
            "select_metric",
            f"must be one of {SELECT_METRICS}",
        )
        check(self.keep in ("best", "last"), "keep", "must be best or last")
        check(self.patience >= 0, "patience", "must be >= 0 (0 = off)")
        check(
            not self.patience or self.eval_every > 0,
            "patience",
            "counts validations: it needs train.eval_every > 0",
        )
        check(self.max_minutes >= 0, "max_minutes", "must be >= 0 (0 = off)")
        check(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1) (0 = off)")
        check(self.accumulate >= 1, "accumulate", "must be >= 1")
        check(self.max_failures >= 0, "max_failures", "must be >= 0")
        check(self.placement in PLACEMENTS, "placement", f"must be one of {sorted(PLACEMENTS)}")
        check(
            not self.run_name or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.run_name),
            "run_name",
            "must be letters, digits, '.', '_', '-'",
        )


TUNE_METRICS = {"segm_AP": "max", "bbox_AP": "max", "loss": "min"}  # what train_loop reports


@dataclass
class TuneParams:
    """`tune`: Ray Tune sweeps (`pipeline.tune`; not a DVC stage). Trials are training runs of the
    `train` and `model` sections with the sampled values applied and these keys overriding.

    The search space `tune.space` is a mapping parsed by `pipeline.search_space` (not a field).
    """

    name: str = "shapes"  # sweeps/<name>/ and the Ray Tune experiment <storage_path>/<name>
    num_samples: int = 6  # trials (times each grid, when the space has grids)
    metric: str = "segm_AP"  # segm_AP | bbox_AP (val AP, mode max) | loss (mode min)
    mode: str = "max"
    scheduler: str = "asha"  # asha (stops bad trials at rungs) | fifo (every trial runs out)
    grace_period: int = 100  # ASHA: iterations before a trial can be stopped (first rung)
    reduction_factor: float = 2.0  # ASHA: keep the best 1/factor of trials at each rung
    search_alg: str = "random"  # random | optuna | hyperopt (those two need their package)
    seed: int = 0  # of the search algorithm's sampling
    iterations: int = 300  # per trial, replaces train.iterations (same units, reference batch)
    eval_every: int = 100  # val AP every N iterations: what ASHA compares (train.eval_every)
    eval_images: int = 50  # val images in those evaluations (train.eval_images)
    time_budget_s: float = 0.0  # stop starting / running trials after this; 0 = no budget
    max_concurrent_trials: int = 0  # 0 = from the cluster: CPUs (GPUs) / those of one trial
    max_failures: int = 0  # Tune restarts of a trial whose driver died (0: recorded as failed)
    storage_path: str = ""  # Ray Tune storage, a folder or s3://...; "" = <train.storage_path>/tune
    out_dir: str = "sweeps"  # best_params.yaml, trials table and picture: <out_dir>/<name>/

    def validate(self) -> None:
        check(
            re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name) is not None,
            "name",
            "must be letters, digits, '.', '_', '-'",
        )
        check(self.num_samples >= 1, "num_samples", "must be >= 1")
        check(self.metric in TUNE_METRICS, "metric", f"must be one of {tuple(TUNE_METRICS)}")
        check(
            self.mode == TUNE_METRICS.get(self.metric, self.mode),
            "mode",
            f"must be {TUNE_METRICS.get(self.metric)} for metric {self.metric}",
        )
        check(self.scheduler in ("asha", "fifo"), "scheduler", "must be asha or fifo")
        check(self.grace_period >= 1, "grace_period", "must be >= 1")
        check(self.reduction_factor > 1, "reduction_factor", "must be > 1")
        check(
            re.fullmatch(r"[a-z_]+", self.search_alg) is not None,
            "search_alg",
            "must be a name such as random, optuna or hyperopt",
        )
        for name in ("iterations", "eval_every", "eval_images"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(self.time_budget_s >= 0, "time_budget_s", "must be >= 0 (0 = no budget)")
        check(self.max_concurrent_trials >= 0, "max_concurrent_trials", "must be >= 0 (0 = auto)")
        check(self.max_failures >= 0, "max_failures", "must be >= 0")
        check(bool(self.out_dir.strip()), "out_dir", "must not be empty")
