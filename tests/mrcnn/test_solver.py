import math

import pytest
import torch
from torch import nn

from mrcnn.solver import Schedule, build_optimizer, lr_scheduler, scale_schedule


def test_cosine_without_warmup_pins_values():
    s = Schedule(lr=1.0, iterations=10, warmup_iters=0, kind="cosine")
    assert s.factor(0) == 1.0
    assert s.factor(5) == pytest.approx(0.5)
    assert s.factor(10) == pytest.approx(0.0, abs=1e-12)
    assert s.factor(25) == s.factor(10)  # past the end it stays at the floor
    assert s.factor(2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))


def test_linear_warmup_from_warmup_factor():
    s = Schedule(lr=1.0, iterations=100, warmup_iters=4, kind="step", warmup_factor=0.001)
    assert s.factor(0) == pytest.approx(0.001)
    assert s.factor(2) == pytest.approx(0.001 * 0.5 + 0.5)
    assert s.factor(3) == pytest.approx(0.001 * 0.25 + 0.75)
    assert s.factor(4) == 1.0  # warmup over


def test_warmup_multiplies_cosine():
    s = Schedule(lr=1.0, iterations=10, warmup_iters=5, kind="cosine", warmup_factor=0.0)
    assert s.factor(0) == 0.0
    assert s.factor(1) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 0.1)))


def test_step_drops_at_fractions_and_ignores_the_final_one():
    s = Schedule(lr=1.0, iterations=100, warmup_iters=0, kind="step", steps=(0.75, 1.0))
    assert [s.factor(i) for i in (0, 74)] == [1.0, 1.0]
    assert s.factor(75) == pytest.approx(0.1)
    assert s.factor(100) == pytest.approx(0.1)  # step 1.0 is the end, not a drop
    two = Schedule(lr=1.0, iterations=100, warmup_iters=0, kind="step", steps=(0.5, 0.75))
    assert [two.factor(i) for i in (49, 50, 74, 75)] == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_scale_schedule_linear_scaling_rule():
    # The paper's recipe at 16 images / iteration, moved to 8 and to 32.
    half = scale_schedule(0.02, 160_000, 1000, global_batch=8, reference_batch=16, kind="step")
    assert (half.lr, half.iterations, half.warmup_iters) == (0.01, 320_000, 2000)
    assert half.kind == "step" and half.steps == (0.75, 1.0)
    double = scale_schedule(0.02, 160_000, 1000, global_batch=32, reference_batch=16)
    assert (double.lr, double.iterations, double.warmup_iters) == (0.04, 80_000, 500)
    assert double.kind == "cosine"


def test_scale_schedule_keeps_at_least_one_iteration():
    s = scale_schedule(0.1, 1, 0, global_batch=64, reference_batch=1)
    assert s.iterations == 1 and s.lr == pytest.approx(6.4)


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    m[2].weight.requires_grad_(False)  # frozen: not optimised at all
    return m


def test_build_optimizer_splits_decay_and_skips_frozen():
    m = _model()
    opt = build_optimizer(m, "sgd", lr=0.1, weight_decay=1e-4, momentum=0.9)
    assert isinstance(opt, torch.optim.SGD)
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [m[0].weight.shape]
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    # conv bias, BN weight + bias, last conv's bias (its weight is frozen)
    assert len(no_decay["params"]) == 4
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert decay["momentum"] == 0.9 and decay["lr"] == 0.1


def test_build_optimizer_adamw_and_unknown_name():
    assert isinstance(build_optimizer(_model(), "adamw", 1e-3, 0.05), torch.optim.AdamW)
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        build_optimizer(_model(), "adam", 1e-3, 0.0)


def test_lr_scheduler_follows_the_schedule():
    opt = build_optimizer(_model(), "sgd", lr=0.5, weight_decay=0.0)
    s = Schedule(lr=0.5, iterations=10, warmup_iters=2, kind="step", steps=(0.5,))
    sched = lr_scheduler(opt, s)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5 * s.factor(i) for i in range(6)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(0.0005) and seen[5] == pytest.approx(0.05)
