"""Per-stage times of one training or inference step, ours and torchvision's.

Each `*_stages` function runs one step the way the model's own `forward` does, split at the
stage boundaries (backbone, RPN, RoI heads, backward, optimizer step, postprocess), and marks a
`StageClock` between them. On CUDA the clock records events (no host sync between stages, so the
step runs as it would unmeasured; times are GPU time between the marks); on CPU it reads
`time.perf_counter`. `tests/bench/test_stages.py` checks that the split steps give the same
losses as `model(batch)`, so this file follows the model when its forward changes.

    clock = StageClock(device)
    ours_train_stages(model, batch, optimizer, amp, clock)
    clock.ms()  # {"backbone": ..., "rpn": ..., "roi_heads": ..., "backward": ..., ...}
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch


class StageClock:
    """Named marks in one step -> ms per stage (the time between a mark and the one before)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.names: list[str] = []
        self.marks: list = []

    def start(self) -> None:
        self.names, self.marks = [], [self._now()]

    def mark(self, name: str) -> None:
        self.names.append(name)
        self.marks.append(self._now())

    def _now(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def ms(self) -> dict[str, float]:
        """Stage -> ms of the last step (synchronises on CUDA)."""
        if self.cuda:
            torch.cuda.synchronize()
            pairs = zip(self.marks, self.marks[1:], strict=False)
            times = [a.elapsed_time(b) for a, b in pairs]
        else:
            times = [(b - a) * 1000 for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return dict(zip(self.names, times, strict=True))


def median_stages(step: Callable[[StageClock], None], device: torch.device, steps: int = 3):
    """Median ms per stage over `steps` calls of `step(clock)`, plus their sum as "total"."""
    clock = StageClock(device)
    runs = []
    for _ in range(steps):
        clock.start()
        step(clock)
        runs.append(clock.ms())
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["total"] = sum(out.values())
    return {k: round(v, 3) for k, v in out.items()}


def ours_train_stages(model, batch, optimizer, amp: AbstractContextManager, clock) -> dict:
    """One training step of our `MaskRCNN` (as `MaskRCNN.forward` in training mode) -> losses."""
    s = batch.images.shape[-1]
    with amp:
        features = model.backbone(model.normalize(batch.images, batch.windows))
        clock.mark("backbone")
        proposals, valid, rpn_losses = model.rpn(
            features, batch.windows, s, batch.gt_boxes, batch.gt_valid
        )
        clock.mark("rpn")
        roi_losses = model.roi_heads.losses(features, s, proposals, valid, batch)
        clock.mark("roi_heads")
        losses = {**rpn_losses, **roi_losses}
        loss = model.total_loss(losses)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clock.mark("backward")
    optimizer.step()
    clock.mark("optimizer")
    return losses


@torch.no_grad()
def ours_infer_stages(model, batch, amp: AbstractContextManager, clock) -> list:
    """One inference step of our `MaskRCNN` (forward in eval mode + `postprocess`)."""
    s = batch.images.shape[-1]
    with amp:
        features = model.backbone(model.normalize(batch.images, batch.windows))
        clock.mark("backbone")
        proposals, valid, _ = model.rpn(features, batch.windows, s)
        clock.mark("rpn")
        raw = model.roi_heads.detect(features, s, proposals, valid, batch.windows)
        clock.mark("roi_heads")
        out = model.postprocess(raw, batch)
    clock.mark("postprocess")
    return out


def tv_train_stages(model, images, targets, optimizer, amp: AbstractContextManager, clock):
    """One training step of torchvision's `MaskRCNN` (as `GeneralizedRCNN.forward`) -> losses."""
    with amp:
        image_list, targets = model.transform(images, targets)
        clock.mark("transform")
        features = model.backbone(image_list.tensors)
        clock.mark("backbone")
        proposals, rpn_losses = model.rpn(image_list, features, targets)
        clock.mark("rpn")
        _, roi_losses = model.roi_heads(features, proposals, image_list.image_sizes, targets)
        clock.mark("roi_heads")
        losses = {**rpn_losses, **roi_losses}
        loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clock.mark("backward")
    optimizer.step()
    clock.mark("optimizer")
    return losses


@torch.no_grad()
def tv_infer_stages(model, images, amp: AbstractContextManager, clock) -> list:
    """One inference step of torchvision's `MaskRCNN` (masks pasted at full size)."""
    original_sizes = [tuple(im.shape[-2:]) for im in images]
    with amp:
        image_list, _ = model.transform(images)
        clock.mark("transform")
        features = model.backbone(image_list.tensors)
        clock.mark("backbone")
        proposals, _ = model.rpn(image_list, features)
        clock.mark("rpn")
        detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
        clock.mark("roi_heads")
        out = model.transform.postprocess(detections, image_list.image_sizes, original_sizes)
    clock.mark("postprocess")
    return out
