"""The GPU fast paths, exercised on the CPU first: `compile_static` (torch.compile of the static
parts with dynamic=False) for a training step and an inference, and bf16 autocast for both, so
no GPU minute is spent on a Python error in them (bench/gpu_check.sh runs the same paths)."""

import numpy as np
import pytest
import torch

from tests.mrcnn.scenes import make_batch, tiny_model


def _box_iou(a, b):
    lt = np.maximum(a[:2], b[:2])
    rb = np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])
    return inter / (area(a) + area(b) - inter)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager"])
def test_compile_static_train_step_and_inference(backend):
    """One compiled training step gives eager's losses and finite gradients everywhere; one
    compiled inference gives eager's detections.

    aot_eager runs Dynamo's capture and AOTAutograd's joint graph, where the Python-level
    failures (graph breaks on data-dependent shapes, unsupported ops) show up, without the C++
    compiler that inductor needs on a CPU (on the GPU inductor emits Triton instead; inductor on
    the CPU is covered by tests/mrcnn/modeling/test_model.py::test_compiled_static_parts_...)."""
    torch._dynamo.reset()
    batch = make_batch()[0]
    eager, compiled = tiny_model(), tiny_model()
    compiled.compile_static(backend=backend)  # dynamic=False, bucketed mask-head RoI counts
    assert compiled.roi_heads.bucket_rois
    # inference runs the mask head's label_probs: compiled too, not only forward
    assert "label_probs" in vars(compiled.roi_heads.mask_head)  # the compiled wrapper
    for model in (eager, compiled):
        model.train()
    torch.manual_seed(0)
    ref = eager(batch)
    torch.manual_seed(0)
    out = compiled(batch)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], atol=1e-4, rtol=1e-4)
    compiled.total_loss(out).backward()
    grads = [p.grad for p in compiled.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    eager.eval()
    compiled.eval()
    with torch.no_grad():
        ref_det, out_det = eager(batch), compiled(batch)
    torch.testing.assert_close(out_det.valid, ref_det.valid)
    torch.testing.assert_close(out_det.scores, ref_det.scores, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_det.mask_probs, ref_det.mask_probs, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_bf16_autocast_trains_and_detects_like_fp32():
    """A tiny model fitted to two scenes: under bf16 autocast its training losses are finite
    float32 scalars within 5% of fp32's, and its detections find the same objects (same label,
    box IoU > 0.9 with fp32's best detection of each object)."""
    batch, scenes = make_batch()
    model = tiny_model()
    model.train()
    steps = 40
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    for _ in range(steps):
        loss = model.total_loss(model(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    torch.manual_seed(0)
    ref = model(batch)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    total = model.total_loss(out)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    assert abs(total.item() - model.total_loss(ref).item()) < 0.05 * model.total_loss(ref).item()
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    with torch.no_grad():
        fp32 = model.postprocess(model(batch), batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model.postprocess(model(batch), batch)
    for a, b, (_, _, labels) in zip(fp32, bf16, scenes, strict=True):
        assert len(a) >= len(labels) and len(b) >= len(labels)
        for k in range(len(labels)):  # the k-th best fp32 detection has a bf16 twin
            j = max(range(len(b)), key=lambda i: _box_iou(a.boxes[k], b.boxes[i]))
            assert b.labels[j] == a.labels[k]
            assert _box_iou(a.boxes[k], b.boxes[j]) > 0.9
            assert abs(b.scores[j] - a.scores[k]) < 0.05
