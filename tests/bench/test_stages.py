"""bench/stages.py splits a step at the stage boundaries; the split step must be the model's own
step (same losses, same detections), or the GPU check's per-stage times describe another model."""

import numpy as np
import pytest
import torch

from bench.stages import (
    StageClock,
    median_stages,
    ours_infer_stages,
    ours_train_stages,
    tv_infer_stages,
    tv_train_stages,
)
from mrcnn.solver import build_optimizer, fused_available
from tests.mrcnn.scenes import make_batch, tiny_model

CPU = torch.device("cpu")


def test_split_training_step_gives_the_losses_of_forward():
    batch = make_batch()[0]
    model = tiny_model()
    model.train()
    torch.manual_seed(0)
    ref = model(batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    clock = StageClock(CPU)
    clock.start()
    torch.manual_seed(0)
    out = ours_train_stages(model, batch, opt, torch.autocast("cpu", enabled=False), clock)
    assert list(out) == list(ref)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=0)
    ms = clock.ms()
    assert list(ms) == ["backbone", "rpn", "roi_heads", "backward", "optimizer"]
    assert all(t >= 0 for t in ms.values())
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_split_inference_gives_the_detections_of_forward():
    batch = make_batch()[0]
    model = tiny_model()
    model.eval()
    ref = model.postprocess(model.predict(batch), batch)
    clock = StageClock(CPU)
    clock.start()
    out = ours_infer_stages(model, batch, torch.autocast("cpu", enabled=False), clock)
    assert len(out) == len(ref) == 2
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.masks, b.masks)
    assert list(clock.ms()) == ["backbone", "rpn", "roi_heads", "postprocess"]


def test_median_stages_sums_a_total():
    calls = []

    def step(clock):
        calls.append(1)
        clock.mark("a")
        clock.mark("b")

    out = median_stages(step, CPU, steps=3)
    assert len(calls) == 3
    assert list(out) == ["a", "b", "total"]
    assert abs(out["total"] - (out["a"] + out["b"])) < 2e-3


@pytest.mark.slow
def test_split_torchvision_steps_match_its_forward():
    from bench.synthetic import torchvision_model

    torch.manual_seed(0)
    model = torchvision_model(64, 0.0, "resnet18", light=True)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = [
        {
            "boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]),
            "labels": torch.tensor([1]),
            "masks": torch.zeros(1, 64, 64, dtype=torch.uint8).index_fill_(
                1, torch.arange(8, 30), 1
            ),
        }
        for _ in images
    ]
    off = torch.autocast("cpu", enabled=False)
    model.train()
    torch.manual_seed(1)
    ref = model(images, targets)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    clock = StageClock(CPU)
    clock.start()
    torch.manual_seed(1)
    out = tv_train_stages(model, images, targets, opt, off, clock)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=0)
    model.eval()
    with torch.no_grad():
        ref_det = model(images)
    clock.start()
    det = tv_infer_stages(model, images, off, clock)
    for a, b in zip(det, ref_det, strict=True):
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=0)
    assert list(clock.ms()) == ["transform", "backbone", "rpn", "roi_heads", "postprocess"]


def test_optimizer_is_fused_only_on_cuda():
    model = tiny_model()
    assert not fused_available("cpu") and fused_available("cuda")
    opt = build_optimizer(model, "adamw", 1e-3, 1e-4)
    assert not opt.defaults.get("fused")  # CPU parameters: the unfused loop, as before
    assert build_optimizer(model, "sgd", 1e-3, 1e-4, fused=False).defaults.get("fused") is not True
