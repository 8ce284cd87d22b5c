"""`ModelEma`: the average a hand computation gives, integer buffers copied, and a resume from
its state that continues the same average bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.training.ema import ModelEma


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()


def _step(model: nn.Module, k: int) -> None:
    """A stand-in optimizer step: a different, known change of every weight each time."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.1 * (k + 1) * (i + 1))
        model[1].running_mean.add_(0.5)
        model[1].num_batches_tracked.add_(1)


def test_the_average_is_the_hand_computed_one():
    model = _model()
    ema = ModelEma(model, decay=0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for t in range(5):
        _step(model, t)
        ema.update(model)
        d = min(0.9, (1 + t) / (10 + t))  # the ramp (0.1, 0.18, ...) until 0.9 caps it
        for k, w in model.state_dict().items():
            if w.is_floating_point():
                expected[k] = d * expected[k] + (1 - d) * w
            else:
                expected[k] = w.clone()
    assert [ema.decay_at(t) for t in (0, 1, 100)] == [0.1, pytest.approx(2 / 11), 0.9]
    got = ema.module.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=1e-12, atol=1e-12, msg=k)
    assert int(got["1.num_batches_tracked"]) == 5  # copied, not averaged
    assert ema.updates == 5
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training


def test_a_resumed_average_continues_bit_for_bit():
    """Three updates, state saved (as a checkpoint holds it), two more: a fresh `ModelEma`
    loaded from that state and given the same two updates ends with the same tensors."""
    model = _model()
    ema = ModelEma(model, decay=0.99)
    for t in range(3):
        _step(model, t)
        ema.update(model)
    saved = {
        "weights": {k: v.clone() for k, v in ema.state_dict()["weights"].items()},
        "updates": ema.state_dict()["updates"],
    }
    weights_at_3 = {k: v.clone() for k, v in model.state_dict().items()}
    for t in range(3, 5):
        _step(model, t)
        ema.update(model)

    resumed_model = _model()
    resumed_model.load_state_dict(weights_at_3)
    resumed = ModelEma(resumed_model, decay=0.99)
    resumed.load_state_dict(saved)
    for t in range(3, 5):
        _step(resumed_model, t)
        resumed.update(resumed_model)
    assert resumed.updates == ema.updates == 5
    ours, theirs = resumed.module.state_dict(), ema.module.state_dict()
    for k, v in theirs.items():
        assert torch.equal(ours[k], v), k


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match="EMA decay"):
        ModelEma(_model(), decay)
