"""One optimizer step of a worker (`TrainStep`) and the losses it leaves on the device
(`LossWindow`), with no host sync between log steps.

Naming: an *iteration* is one optimizer step (what `train.iterations`, the lr schedule,
checkpoints and logs count); a *micro-batch* is one forward / backward of `train.batch_size`
images on one worker; `train.accumulate` micro-batches make an iteration, so the global batch is
workers x batch_size x accumulate, the batch the linear scaling rule counts
(`TrainParams.global_batch`).

Host syncs are what keep a GPU from running ahead of Python: `.item()`, `.tolist()`, `bool()`
of a device tensor. The step has none of its own (the model's data-dependent ops, such as NMS,
have theirs: docs/gpu.md). The loss terms are summed on the device and the first non-finite
iteration is recorded there too (`torch.where`, no branch on a device value); the loop reads
both with one `.tolist()` on log steps and before every checkpoint (`LossWindow.read`) and lets
the ranks agree with one small all-reduce (`agree`). The weights stepped after a non-finite loss
are never checkpointed: the run stops at that read, keeping the last good checkpoint.

Plain PyTorch (no Ray, no MLflow), so `bench/train_gpu.py` runs this very step on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pipeline.training.ema import ModelEma

NONE = math.inf  # "no non-finite iteration yet", on the device


class TrainStep:
    """`step(micro_batches) -> (terms, total)`: zero the gradients, forward and backward every
    micro-batch (loss / accumulate, so the gradient is the mean over them, as one larger batch
    would give for a mean loss), clip, step the optimizer and the lr schedule, update the EMA.

    Args:
        forward: what runs the micro-batches: the DDP wrapper on several workers (its
            `no_sync()` skips the gradient all-reduce on all but the last micro-batch), else
            the model itself.
        model: the model (not the wrapper): `total_loss`, the parameters to clip, the EMA's
            source.
        optimizer, scheduler: stepped once per iteration.
        accumulate: micro-batches per iteration (`train.accumulate`).
        grad_clip: max gradient norm; 0 = off.
        autocast: a context factory for the forward (bf16 autocast on GPU), default none.
        ema: the `ModelEma` to update after the step, or None.

    Returns (detached, on the device): the loss terms {name: scalar} and the weighted total,
    each averaged over the micro-batches.
    """

    def __init__(
        self,
        forward: nn.Module,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        *,
        accumulate: int = 1,
        grad_clip: float = 0.0,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        ema: ModelEma | None = None,
    ) -> None:
        if accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {accumulate}")
        self.forward, self.model = forward, model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.accumulate, self.grad_clip = accumulate, grad_clip
        self.autocast, self.ema = autocast, ema
        self.no_sync = getattr(forward, "no_sync", None)  # DDP only

    def __call__(
        self, micro_batches: Iterable[Any], poison: bool = False
    ) -> tuple[dict[str, Tensor], Tensor]:
        """`poison`: make the total loss NaN (the tests' fault injection)."""
        self.optimizer.zero_grad(set_to_none=True)
        terms: dict[str, Tensor] = {}
        total = None
        n = 0
        for batch in micro_batches:
            last = n == self.accumulate - 1
            sync = nullcontext() if last or self.no_sync is None else self.no_sync()
            with sync:
                with self.autocast():
                    losses = self.forward(batch)
                loss = self.model.total_loss(losses)
                if poison:
                    loss = loss * float("nan")
                (loss / self.accumulate).backward()
            for k, v in losses.items():
                terms[k] = terms[k] + v.detach() if k in terms else v.detach()
            total = loss.detach() if total is None else total + loss.detach()
            n += 1
        if n != self.accumulate:
            raise ValueError(f"got {n} micro-batches for an iteration of {self.accumulate}")
        if self.grad_clip > 0:  # error_if_nonfinite stays off: it would sync
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        k = self.accumulate
        return {name: v / k for name, v in terms.items()}, total / k


class LossWindow:
    """The loss terms of the iterations since the last log step, summed on the device, and the
    first iteration whose total loss was not finite, with its terms.

        window.add(it, terms, total)        # every iteration: device ops only
        first_bad, bad_terms, means = window.read(reset=True)   # log steps: one host sync

    A checkpoint between two log steps keeps the window (`state_dict`), so a run resumed from
    it logs the same means at the next log step as a run never interrupted.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.names: list[str] = []
        self.sums: Tensor | None = None
        self.count = 0
        self.first_bad = torch.full((), NONE, dtype=torch.float64, device=self.device)
        self.bad_values: Tensor | None = None

    def add(self, iteration: int, terms: dict[str, Tensor], total: Tensor) -> None:
        values = torch.stack([*(v.float() for v in terms.values()), total.float()])
        if self.sums is None:
            self.names = [*terms, "loss"]
            self.sums = torch.zeros_like(values)
            self.bad_values = torch.zeros_like(values)
        self.sums += values
        self.count += 1
        new = ~torch.isfinite(values[-1]) & (self.first_bad == NONE)
        self.first_bad = torch.where(new, float(iteration), self.first_bad)
        self.bad_values = torch.where(new, values, self.bad_values)

    def read(self, reset: bool) -> tuple[int | None, dict[str, float], dict[str, float]]:
        """-> (first non-finite iteration or None, its loss terms, the mean of every term over
        the window); one host sync. `reset` starts a new window (log steps)."""
        if self.sums is None:
            return None, {}, {}
        packed = torch.cat([self.first_bad.reshape(1).float(), self.bad_values, self.sums])
        first, *rest = packed.tolist()
        t = len(self.names)
        bad = dict(zip(self.names[:-1], rest[: t - 1], strict=True))
        means = {k: v / self.count for k, v in zip(self.names, rest[t:], strict=True)}
        if reset:
            self.sums.zero_()
            self.count = 0
        return (None if math.isinf(first) else int(first)), bad, means

    def state_dict(self) -> dict[str, Any]:
        """The sums and count of the window (taken at a checkpoint, where the loop has just
        read the window and found no non-finite loss)."""
        sums = None if self.sums is None else self.sums.detach().cpu().clone()
        return {"names": list(self.names), "sums": sums, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.names, self.count = list(state["names"]), int(state["count"])
        sums = state["sums"]
        self.sums = None if sums is None else sums.to(self.device)
        self.bad_values = None if sums is None else torch.zeros_like(self.sums)


def agree(first_bad: int | None, stop: bool, world: int, device: torch.device) -> tuple:
    """Every rank's (first non-finite iteration, wants to stop) -> the same on every rank: the
    earliest non-finite iteration of any rank, and whether any rank wants to stop. One
    all-reduce (MAX) of two numbers; nothing to do with one worker."""
    if world == 1:
        return first_bad, stop
    # MAX of -first_bad is the earliest; -inf stands for "none"
    v = torch.tensor([-NONE if first_bad is None else -first_bad, float(stop)], dtype=torch.float64)
    v = v if dist.get_backend() == "gloo" else v.to(device)
    dist.all_reduce(v, op=dist.ReduceOp.MAX)
    earliest, any_stop = v.tolist()
    return (None if math.isinf(earliest) else int(-earliest)), any_stop > 0
