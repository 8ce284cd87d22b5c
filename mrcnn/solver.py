"""Optimiser and learning-rate schedule.

The paper's recipe (Mask R-CNN sec. 3.1): SGD, momentum 0.9, weight decay 1e-4, lr 0.02 at 16
images per iteration, linear warmup, 160k iterations with lr x0.1 at 120k (steps 0.75, 1.0).
`scale_schedule` applies the linear scaling rule (Goyal et al., 2017) to another global batch.
For training from scratch on a CPU, AdamW with a cosine schedule converges in far fewer
iterations; both are available.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Schedule:
    lr: float
    iterations: int
    warmup_iters: int
    kind: str = "cosine"  # cosine | step
    steps: tuple[float, ...] = (0.75, 1.0)  # step: fractions of `iterations` where lr x0.1
    warmup_factor: float = 0.001  # lr at iteration 0 = warmup_factor * lr

    def factor(self, it: int) -> float:
        """lr multiplier at iteration `it` (0-based)."""
        warm = 1.0
        if it < self.warmup_iters:
            a = it / self.warmup_iters
            warm = self.warmup_factor * (1 - a) + a
        if self.kind == "cosine":
            t = min(it, self.iterations) / self.iterations
            return warm * 0.5 * (1 + math.cos(math.pi * t))
        drops = sum(it >= int(s * self.iterations) for s in self.steps if s < 1)
        return warm * 0.1**drops


def scale_schedule(
    lr: float,
    iterations: int,
    warmup_iters: int,
    global_batch: int,
    reference_batch: int,
    kind: str = "cosine",
    steps: tuple[float, ...] = (0.75, 1.0),
) -> Schedule:
    """A schedule given at `reference_batch` images/iteration, moved to `global_batch`:
    lr x k, iteration counts / k, k = global_batch / reference_batch."""
    k = global_batch / reference_batch
    return Schedule(
        lr=lr * k,
        iterations=max(1, round(iterations / k)),
        warmup_iters=round(warmup_iters / k),
        kind=kind,
        steps=steps,
    )


def fused_available(device: torch.device | str) -> bool:
    """Whether `build_optimizer` fuses the update into one kernel on `device` (CUDA only: the
    per-parameter loop of SGD / AdamW costs hundreds of small launches per step on a GPU)."""
    return torch.device(device).type == "cuda"


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters; no weight decay on biases and norm scales
    (1-d parameters), as Detectron does for norms.

    fused: one fused kernel per step (`torch.optim`'s `fused=True`); None = when every trainable
    parameter is on a device where `fused_available` (build the optimiser after `model.to`)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    if fused is None:
        fused = bool(decay or no_decay) and all(fused_available(p.device) for p in decay + no_decay)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    extra = {"fused": True} if fused else {}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, **extra)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **extra)
    raise ValueError(f"unknown optimizer '{name}' (expected sgd or adamw)")


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule):
    """A LambdaLR following `schedule`; call `.step()` once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
