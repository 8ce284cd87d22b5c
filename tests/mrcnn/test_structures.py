import numpy as np
import pytest
import torch

from mrcnn.data import TrainLoader
from mrcnn.data.shards import Sample
from mrcnn.inference.detections import Detections
from mrcnn.structures import Batch, RawDetections


def _batch(targets: bool = True, b: int = 2, g: int = 3) -> Batch:
    gt = {}
    if targets:
        gt = dict(
            gt_boxes=torch.arange(b * g * 4, dtype=torch.float32).reshape(b, g, 4),
            gt_labels=torch.ones(b, g, dtype=torch.int64),
            gt_mini_masks=torch.zeros(b, g, 4, 4, dtype=torch.uint8),
            gt_valid=torch.tensor([[True, True, False]] * b),
        )
    return Batch(
        images=torch.zeros(b, 3, 8, 8, dtype=torch.uint8),
        windows=torch.tensor([[0.0, 0, 8, 8]] * b),
        scales=torch.ones(b),
        original_sizes=torch.tensor([[8, 8]] * b),
        image_ids=torch.arange(b) + 10,
        **gt,
    )


def test_len_and_has_targets():
    assert len(_batch(b=3)) == 3
    assert _batch().has_targets
    assert not _batch(targets=False).has_targets


def test_to_moves_every_tensor_and_keeps_none():
    moved = _batch(targets=False).to("meta")
    assert isinstance(moved, Batch)
    assert moved.images.device.type == "meta" and moved.image_ids.device.type == "meta"
    assert moved.gt_boxes is None and moved.gt_valid is None
    full = _batch().to("meta")
    assert full.gt_mini_masks.device.type == "meta" and full.gt_mini_masks.shape == (2, 3, 4, 4)


def test_to_same_device_keeps_values():
    b = _batch()
    same = b.to("cpu")
    assert torch.equal(same.gt_boxes, b.gt_boxes) and torch.equal(same.image_ids, b.image_ids)


def test_pin_memory_pins_every_tensor(monkeypatch):
    pinned = []

    def fake_pin(self):  # CPU-only CI: record the call instead of needing a GPU
        pinned.append(self.shape)
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    out = _batch(targets=False).pin_memory()
    assert isinstance(out, Batch) and out.gt_boxes is None
    assert len(pinned) == 5  # images, windows, scales, original_sizes, image_ids
    assert torch.equal(out.image_ids, torch.tensor([10, 11]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_pin_memory_on_cuda_host():
    out = _batch().pin_memory()
    assert out.images.is_pinned() and out.gt_valid.is_pinned()


def _samples(n: int) -> list[Sample]:
    return [
        Sample(
            image=np.zeros((8, 8, 3), np.uint8),
            image_id=i,
            window=(0, 0, 8, 8),
            scale=1.0,
            original_size=(8, 8),
            boxes=np.array([[1.0, 1, 5, 5]], np.float32),
            labels=np.array([1]),
            mini_masks=np.ones((1, 4, 4), bool),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("cuda", [False, True])
def test_train_loader_pins_only_when_cuda_is_there(monkeypatch, cuda):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(Batch, "pin_memory", lambda self: calls.append(1) or self)
    loader = TrainLoader(_samples(4), 2, seed=0, hflip=False, max_gt=2, pin_memory=True)
    batch = next(iter(loader))
    assert len(batch) == 2
    assert calls == ([1] if cuda else [])


def test_raw_detections_to_numpy_and_detections_len():
    raw = RawDetections(
        boxes=torch.ones(1, 2, 4, dtype=torch.float64),
        scores=torch.ones(1, 2, dtype=torch.bfloat16),
        labels=torch.tensor([[1, 2]]),
        valid=torch.tensor([[True, False]]),
        mask_probs=None,
    )
    host = raw.numpy()
    assert host["boxes"].dtype == np.float32 and host["scores"].dtype == np.float32
    assert host["labels"].tolist() == [[1, 2]] and host["valid"].tolist() == [[True, False]]
    assert host["mask_probs"] is None and host["keypoints"] is None
    d = Detections(
        boxes=np.zeros((3, 4), np.float32),
        scores=np.zeros(3, np.float32),
        labels=np.ones(3, np.int64),
        masks=np.zeros((3, 5, 5), bool),
    )
    assert len(d) == 3
