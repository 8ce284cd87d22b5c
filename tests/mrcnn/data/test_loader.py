"""Collate, horizontal flip, the training order (DDP split, resume, workers), eval batches."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mrcnn.data import (
    Sample,
    ShardDataset,
    TrainLoader,
    collate,
    eval_batches,
    expand_mini_masks,
    hflip_sample,
)
from mrcnn.data import loader as loader_mod
from mrcnn.data.coco import class_map, load_coco_split
from mrcnn.data.minimask import boxes_from_masks, make_mini_masks
from mrcnn.data.writer import ShardOptions, build_split
from tests.coco_helpers import make_coco

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def fake_sample(image_id: int, n: int, s: int = 32, m: int = 8) -> Sample:
    rng = np.random.default_rng(image_id)
    x1 = rng.uniform(0, s / 2, n)
    y1 = rng.uniform(0, s / 2, n)
    wh = rng.uniform(2, s / 2, (n, 2))
    boxes = np.stack([x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], 1).astype(np.float32)
    return Sample(
        image=rng.integers(0, 256, (s, s, 3), dtype=np.uint8),
        image_id=image_id,
        window=(0, 0, s, s - 4),
        scale=0.5,
        original_size=(2 * s, 2 * s - 8),
        boxes=boxes,
        labels=rng.integers(1, 4, n).astype(np.int64),
        mini_masks=rng.random((n, m, m)) < 0.5,
    )


class FakeDataset:
    """Counts decodes; sample i has image_id i."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.reads: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        self.reads.append(i)
        return fake_sample(i, n=1 + i % 3)


def test_collate_pads_to_max_gt():
    samples = [fake_sample(1, 3), fake_sample(2, 0), fake_sample(3, 5)]
    b = collate(samples, max_gt=6)
    assert b.images.shape == (3, 3, 32, 32) and b.images.dtype == torch.uint8
    np.testing.assert_array_equal(b.images[0].permute(1, 2, 0).numpy(), samples[0].image)
    assert b.gt_boxes.shape == (3, 6, 4) and b.gt_boxes.dtype == torch.float32
    assert b.gt_labels.dtype == torch.int64 and b.gt_mini_masks.dtype == torch.uint8
    assert b.gt_mini_masks.shape == (3, 6, 8, 8)
    assert b.gt_valid.tolist() == [[1, 1, 1, 0, 0, 0], [0] * 6, [1] * 5 + [0]]
    np.testing.assert_array_equal(b.gt_boxes[2, :5].numpy(), samples[2].boxes)
    np.testing.assert_array_equal(b.gt_mini_masks[0, :3].numpy(), samples[0].mini_masks)
    assert (b.gt_labels[~b.gt_valid] == 0).all() and (b.gt_boxes[~b.gt_valid] == 0).all()
    assert b.windows.dtype == torch.float32 and b.windows[0].tolist() == [0, 0, 32, 28]
    assert b.scales.tolist() == [0.5] * 3 and b.original_sizes.dtype == torch.int64
    assert b.image_ids.tolist() == [1, 2, 3]


def test_collate_keeps_the_largest_when_over_max_gt(caplog, monkeypatch):
    monkeypatch.setattr(loader_mod, "_warned_max_gt", False)
    s = fake_sample(7, 6)
    area = (s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1])
    largest = np.sort(np.argsort(-area)[:4])
    with caplog.at_level(logging.WARNING):
        b = collate([s, s], max_gt=4)
        collate([s], max_gt=4)
    np.testing.assert_array_equal(b.gt_boxes[0].numpy(), s.boxes[largest])
    np.testing.assert_array_equal(b.gt_labels[1].numpy(), s.labels[largest])
    assert b.gt_valid.all()
    assert sum("max_gt" in r.message for r in caplog.records) == 1  # once


def test_hflip_keeps_image_boxes_and_mini_masks_together():
    s = 48
    mask = np.zeros((1, s, s), bool)
    mask[0, 5:20, 3:9] = True  # an L shape, so a flip is visible
    mask[0, 15:20, 3:25] = True
    window = (0, 0, 40, 30)  # real image 40 x 30, padding right and below
    image = np.zeros((s, s, 3), np.uint8)
    image[:40, :30] = np.random.default_rng(0).integers(1, 256, (40, 30, 3))
    boxes = boxes_from_masks(mask)
    sample = Sample(
        image=image,
        image_id=1,
        window=window,
        scale=1.0,
        original_size=(40, 30),
        boxes=boxes,
        labels=np.array([1]),
        mini_masks=make_mini_masks(mask, boxes, 28).astype(bool),
    )
    f = hflip_sample(sample)
    np.testing.assert_array_equal(f.image[:40, :30], image[:40, :30][:, ::-1])
    assert not f.image[40:].any() and not f.image[:, 30:].any()  # padding untouched
    flipped_mask = np.zeros_like(mask)
    flipped_mask[:, :, :30] = mask[:, :, :30][:, :, ::-1]
    np.testing.assert_array_equal(f.boxes, boxes_from_masks(flipped_mask))
    back = expand_mini_masks(f.boxes, f.mini_masks, (s, s))
    np.testing.assert_array_equal(back, flipped_mask)
    np.testing.assert_array_equal(sample.image, image)  # not in place by default
    chw_backed = np.ascontiguousarray(image.transpose(2, 0, 1)).transpose(1, 2, 0)
    g = hflip_sample(Sample(**{**sample.__dict__, "image": chw_backed}), inplace=True)
    np.testing.assert_array_equal(g.image, f.image)  # the CHW fast path agrees
    twice = hflip_sample(f)
    np.testing.assert_array_equal(twice.image, image)
    np.testing.assert_array_equal(twice.boxes, boxes)
    np.testing.assert_array_equal(twice.mini_masks, sample.mini_masks)


@pytest.mark.parametrize("n, b, w", [(24, 2, 3), (10, 2, 3), (7, 3, 1)])
def test_ddp_split_uses_every_sample_once_per_epoch(n, b, w):
    loaders = [TrainLoader(FakeDataset(n), b, seed=5, rank=r, world_size=w) for r in range(w)]
    assert loaders[0].iterations_per_epoch == -(-n // (b * w))
    stream = []  # the global stream, rebuilt from what each rank reads
    for t in range(3 * loaders[0].iterations_per_epoch + 1):
        for r in range(w):
            stream.extend(loaders[r].sample_indices(t).tolist())
    for epoch in range(3):
        assert sorted(stream[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert stream[:n] != stream[n : 2 * n]  # reshuffled per epoch
    if n % (b * w) == 0:  # epochs align with iterations: check the batches themselves
        ids = []
        for loader in loaders:
            it = iter(loader)
            ids += [next(it).image_ids.tolist() for _ in range(loader.iterations_per_epoch)]
        flat = [i for batch in ids for i in batch]
        assert sorted(flat) == list(range(n))


def test_order_depends_on_seed_only():
    a = TrainLoader(FakeDataset(50), 4, seed=1)
    b = TrainLoader(FakeDataset(50), 4, seed=1)
    c = TrainLoader(FakeDataset(50), 4, seed=2)
    assert a.sample_indices(3).tolist() == b.sample_indices(3).tolist()
    assert a.sample_indices(3).tolist() != c.sample_indices(3).tolist()


def _same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        for name in ("images", "gt_boxes", "gt_labels", "gt_mini_masks", "gt_valid", "image_ids"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name


def test_resume_yields_the_same_batches_without_reading_the_skipped():
    full = TrainLoader(FakeDataset(9), 2, seed=3, rank=1, world_size=2)
    it = iter(full)
    first = [next(it) for _ in range(7)]  # crosses epoch boundaries (4 samples per iteration)
    data = FakeDataset(9)
    resumed = TrainLoader(data, 2, seed=3, rank=1, world_size=2, start_iteration=4)
    it = iter(resumed)
    again = [next(it) for _ in range(3)]
    _same_batches(first[4:], again)
    assert len(data.reads) == 3 * 2  # only what it produced was decoded
    flips = [resumed.order(resumed.positions(t))[1] for t in range(4, 7)]
    assert any(f.any() for f in flips)  # the comparison covered flipped samples


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    make_coco(raw, "train", [(100, 140), (90, 90), (140, 70)] * 4, seed=3)
    parsed = load_coco_split(raw / "annotations" / "instances_train.json")
    out = tmp_path_factory.mktemp("shards") / "train"
    build_split(
        parsed.records,
        raw / "train",
        out,
        class_map([parsed.categories]),
        ShardOptions(image_size=64, mini_mask_shape=14, samples_per_shard=5),
        num_workers=1,
    )
    return out


def test_workers_give_the_same_batches_in_order(shards):
    ds = ShardDataset(shards)
    one = TrainLoader(ds, 3, seed=0, start_iteration=2)
    two = TrainLoader(ds, 3, seed=0, start_iteration=2, num_workers=2, max_gt=100)
    it1, it2 = iter(one), iter(two)
    _same_batches([next(it1) for _ in range(6)], [next(it2) for _ in range(6)])
    del it2


def test_workers_leave_the_global_torch_rng_alone(shards):
    """The training step samples anchors and RoIs from torch's global RNG, and a resumed run
    restores it: starting the worker processes must not draw from it (by default a DataLoader
    takes its workers' base seed there)."""
    loader = TrainLoader(ShardDataset(shards), 3, seed=0, num_workers=1)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    it = iter(loader)
    next(it)
    assert torch.equal(torch.get_rng_state(), before)
    del it


def test_training_batches_flip_real_samples_consistently(shards):
    ds = ShardDataset(shards)
    loader = TrainLoader(ds, 4, seed=1, max_gt=8)
    indices, flips = loader.order(loader.positions(0))
    batch = next(iter(loader))
    for k, (i, flip) in enumerate(zip(indices, flips, strict=True)):
        s = ds[int(i)]
        expected = hflip_sample(s) if flip else s
        n = len(s.labels)
        np.testing.assert_array_equal(batch.images[k].permute(1, 2, 0).numpy(), expected.image)
        np.testing.assert_allclose(batch.gt_boxes[k, :n].numpy(), expected.boxes)
        np.testing.assert_array_equal(batch.gt_mini_masks[k, :n].numpy(), expected.mini_masks)


def test_eval_batches_cover_everything_in_order(shards):
    ds = ShardDataset(shards)
    for workers in (0, 2):
        batches = list(eval_batches(ds, 5, num_workers=workers))
        assert [len(b) for b in batches] == [5, 5, 2]
        ids = [i for b in batches for i in b.image_ids.tolist()]
        assert ids == [int(ds.index[i, 1]) for i in range(len(ds))]
        np.testing.assert_array_equal(batches[2].images[1].permute(1, 2, 0).numpy(), ds[11].image)


def test_dataset_contract(shards):
    ds = ShardDataset(shards)
    s = ds[-1]
    assert isinstance(s, Sample) and s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
    assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64
    assert s.mini_masks.dtype == bool and s.mini_masks.shape[1:] == (14, 14)
    assert len(s.window) == 4 and len(s.original_size) == 2
    with pytest.raises(IndexError):
        ds[len(ds)]
    import pickle

    clone = pickle.loads(pickle.dumps(ds))  # what spawned DataLoader workers receive
    np.testing.assert_array_equal(clone[3].image, ds[3].image)
