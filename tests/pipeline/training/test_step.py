"""`TrainStep` and `LossWindow` on a tiny float64 model: accumulating k micro-batches is the
update of one k-times-larger batch, and the window finds the first non-finite iteration
without a per-iteration host sync."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from pipeline.training.ema import ModelEma
from pipeline.training.step import LossWindow, TrainStep
from tests.pipeline.training.host_reads import HostReads


class _Regression(nn.Module):
    """A linear model with the `MaskRCNN` training interface: `forward(batch) -> losses`
    (means over the batch) and `total_loss(losses)`."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 2).double()

    def forward(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        x, y = batch
        err = self.linear(x) - y
        return {"loss_l2": (err**2).mean(), "loss_l1": err.abs().mean()}

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        return losses["loss_l2"] + 0.5 * losses["loss_l1"]


def _data(n: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randn(
        n, 2, generator=g, dtype=torch.float64
    )


def _step(
    accumulate: int, optimizer: str, clip: float = 0.0, ema: bool = False
) -> tuple[TrainStep, _Regression]:
    model = _Regression()
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i))
    average = ModelEma(model, 0.5) if ema else None
    step = TrainStep(model, model, opt, sched, accumulate=accumulate, grad_clip=clip, ema=average)
    return step, model


@pytest.mark.parametrize(("optimizer", "clip"), [("sgd", 0.0), ("adamw", 0.5)])
def test_accumulating_k_micro_batches_equals_one_k_times_larger_batch(optimizer, clip):
    """3 iterations of 3 micro-batches of 2 samples vs 3 iterations of one batch of 6 (the same
    samples): same weights, losses and EMA to float64 rounding. Plain SGD is what sees a wrong
    gradient scale (AdamW and clipping would hide it); with clipping on, the accumulated
    gradient is clipped, as the large batch's is."""
    k, b = 3, 2
    accumulated, small = _step(k, optimizer, clip, ema=True)
    whole, large = _step(1, optimizer, clip, ema=True)
    for it in range(3):
        x, y = _data(k * b * (it + 1))
        x, y = x[-k * b :], y[-k * b :]
        micro = ((x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]) for i in range(k))
        terms_k, total_k = accumulated(micro)
        terms_1, total_1 = whole([(x, y)])
        torch.testing.assert_close(total_k, total_1, rtol=1e-12, atol=1e-12)
        for name in terms_1:
            torch.testing.assert_close(terms_k[name], terms_1[name], rtol=1e-12, atol=1e-12)
    for (name, p), q in zip(small.named_parameters(), large.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12, msg=name)
    moved = _Regression().linear.weight
    assert not torch.allclose(small.linear.weight, moved)  # it trained
    for name, v in accumulated.ema.module.state_dict().items():
        torch.testing.assert_close(v, whole.ema.module.state_dict()[name], rtol=1e-12, atol=0)
    assert accumulated.scheduler.last_epoch == 3  # one lr step per iteration, not per micro


def test_the_micro_batch_count_must_match():
    step, _ = _step(2, "sgd")
    x, y = _data(2)
    with pytest.raises(ValueError, match="got 1 micro-batches for an iteration of 2"):
        step([(x, y)])
    with pytest.raises(ValueError, match="accumulate must be >= 1"):
        TrainStep(_Regression(), _Regression(), None, None, accumulate=0)


def test_a_poisoned_step_returns_a_non_finite_total():
    step, _ = _step(1, "sgd")
    _, total = step([_data(2)], poison=True)
    assert math.isnan(total.item())


def test_the_window_keeps_the_first_non_finite_iteration_and_the_means():
    window = LossWindow("cpu")
    terms = {"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(2.0)}
    window.add(0, terms, torch.tensor(3.0))
    window.add(1, {"loss_a": torch.tensor(3.0), "loss_b": torch.tensor(4.0)}, torch.tensor(7.0))
    first, bad, means = window.read(reset=True)
    assert (first, bad) == (None, {"loss_a": 0.0, "loss_b": 0.0})
    assert means == {"loss_a": 2.0, "loss_b": 3.0, "loss": 5.0}

    window.add(2, terms, torch.tensor(3.0))
    window.add(
        3, {"loss_a": torch.tensor(5.0), "loss_b": torch.tensor(6.0)}, torch.tensor(math.inf)
    )
    window.add(4, terms, torch.tensor(math.nan))  # a later one does not replace the first
    first, bad, _ = window.read(reset=False)
    assert (first, bad) == (3, {"loss_a": 5.0, "loss_b": 6.0})
    first, _, means = window.read(reset=True)  # the window went on: 3 iterations in it
    assert first == 3 and math.isnan(means["loss"]) and means["loss_a"] == pytest.approx(7 / 3)
    assert LossWindow("cpu").read(reset=True) == (None, {}, {})


def test_the_step_and_the_window_read_the_host_only_at_the_read():
    """A CPU stand-in for `torch.cuda.set_sync_debug_mode` (bench/train_gpu.py counts the real
    syncs on a GPU): every conversion of a tensor to a Python value during 5 iterations of
    step + window (accumulation, clipping, EMA on) is recorded. There is none until the log
    step's `read`, and that is one `.tolist()`."""
    step, _ = _step(2, "adamw", clip=0.5, ema=True)
    window = LossWindow("cpu")
    x, y = _data(4)
    with HostReads() as reads:
        for it in range(5):
            terms, total = step([(x[:2], y[:2]), (x[2:], y[2:])])
            window.add(it, terms, total)
        assert reads.sites == []
        first, _, means = window.read(reset=True)
    assert [s.split(":")[0] for s in reads.sites] == ["step.py"]
    assert first is None and set(means) == {"loss_l2", "loss_l1", "loss"}
