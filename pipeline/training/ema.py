"""An exponential moving average of the weights (`train.ema_decay`): the copy that is validated,
kept in `models/final` and exported when it is on.

    ema = ModelEma(model, decay=0.999)    # after model.to(device), before DDP and compile
    ...                                   # every iteration, after optimizer.step():
    ema.update(model)
    evaluate(ema.module); state["ema"] = ema.state_dict()

Every floating-point entry of the model's state (parameters and BatchNorm statistics) is
averaged at the t-th update (t = 0, 1, ...):

    ema <- d_t * ema + (1 - d_t) * w,      d_t = min(decay, (1 + t) / (10 + t))

The ramp is TensorFlow's `ExponentialMovingAverage(num_updates=t)`: without it the random
initialisation would linger (0.999^800 = 45% of it after 800 plain updates). Integer entries
(BatchNorm's batch count) are copied. Each worker updates its own copy after the same optimizer
step; DDP keeps the parameters equal on every rank, so their averages are equal too (the
BatchNorm statistics are each rank's own, as the model's are). The state, with `t`, is saved in
every checkpoint, so a resumed run continues the same average bit for bit.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEma:
    """EMA of `model`'s state in `module` (a copy in eval mode, without gradients).

    Args:
        model: the model being trained, on its device (not its DDP wrapper).
        decay: the longest-horizon decay, in (0, 1); `decay_at` ramps up to it.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def decay_at(self, t: int) -> float:
        """The decay of update `t` (0-based)."""
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards `model`'s current state (no host sync: the decay
        is a Python number, the update one fused `lerp` over every floating tensor)."""
        ours, theirs = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in ours.items() if v.is_floating_point()]
        weight = 1.0 - self.decay_at(self.updates)
        torch._foreach_lerp_([ours[k] for k in floats], [theirs[k] for k in floats], weight)
        for k, v in ours.items():
            if not v.is_floating_point():
                v.copy_(theirs[k])
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds: the averaged weights and the update count."""
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
