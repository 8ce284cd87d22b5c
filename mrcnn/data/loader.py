"""Batches for training and evaluation: sample order, horizontal flips, collate.

Training order. One global, infinite stream of sample indices is the concatenation of
permutations `perm(seed, epoch)` of `range(N)`. Global iteration `t` takes stream positions
`[t * B * W, (t + 1) * B * W)` (B = per-rank batch, W = world size) and rank `r` takes its
contiguous `B` of them. So within any epoch's stretch of the stream every sample is used exactly
once across all ranks, and everything is a function of `(seed, position)`: resuming at iteration
`t` jumps straight to its positions without reading what it skips, and the flip decisions (also
drawn per position) repeat exactly.

Shards are only the storage unit: `ShardDataset` reads any sample through its index, so ranks
and workers never need a shard of their own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mrcnn.data.augment import Augmentation, augment_sample
from mrcnn.data.shards import Sample, ShardDataset
from mrcnn.structures import Batch

logger = logging.getLogger(__name__)
_warned_max_gt = False


def collate(samples: list[Sample], max_gt: int, num_keypoints: int | None = None) -> Batch:
    """Samples -> a fixed-shape `Batch` with `max_gt` ground-truth slots per image.

    A sample with more than `max_gt` instances keeps the `max_gt` largest by box area (in their
    original order); that is logged once per process. Keypoints become `gt_keypoints`
    [B, max_gt, K, 3] when `num_keypoints` (K) is given or any sample has keypoints (a sample
    without them gets unlabelled ones, visibility 0).
    """
    global _warned_max_gt
    if not samples:
        raise ValueError("collate needs at least one sample")
    b = len(samples)
    m = samples[0].mini_masks.shape[-1]
    # Samples from ShardDataset hold CHW buffers viewed as HWC, so this stack is a plain copy.
    images = torch.from_numpy(np.stack([s.image.transpose(2, 0, 1) for s in samples]))
    gt_boxes = np.zeros((b, max_gt, 4), dtype=np.float32)
    gt_labels = np.zeros((b, max_gt), dtype=np.int64)
    gt_masks = np.zeros((b, max_gt, m, m), dtype=np.uint8)
    gt_valid = np.zeros((b, max_gt), dtype=bool)
    if num_keypoints is None:
        num_keypoints = next((s.keypoints.shape[1] for s in samples if s.keypoints is not None), 0)
    gt_kps = np.zeros((b, max_gt, num_keypoints, 3), np.float32) if num_keypoints else None
    for i, s in enumerate(samples):  # per-image copy of ragged ground truth into fixed slots
        keep = np.arange(len(s.labels))
        if len(keep) > max_gt:
            area = (s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1])
            keep = np.sort(np.argsort(-area, kind="stable")[:max_gt])
            if not _warned_max_gt:
                logger.warning(
                    "image %d has %d instances > max_gt=%d; keeping the largest (logged once)",
                    s.image_id,
                    len(s.labels),
                    max_gt,
                )
                _warned_max_gt = True
        n = len(keep)
        gt_boxes[i, :n] = s.boxes[keep]
        gt_labels[i, :n] = s.labels[keep]
        gt_masks[i, :n] = s.mini_masks[keep]
        gt_valid[i, :n] = True
        if gt_kps is not None and s.keypoints is not None:
            if s.keypoints.shape[1] != num_keypoints:
                raise ValueError(
                    f"image {s.image_id} has {s.keypoints.shape[1]} keypoints per instance, "
                    f"expected {num_keypoints} (model.keypoints.count must match the data)"
                )
            gt_kps[i, :n] = s.keypoints[keep]
    # numpy for the copies, then zero-copy tensors: tiny torch ops go multi-threaded (OpenMP)
    # and stall when the training step keeps the other cores busy.
    return Batch(
        images=images,
        windows=torch.from_numpy(np.array([s.window for s in samples], dtype=np.float32)),
        scales=torch.from_numpy(np.array([s.scale for s in samples], dtype=np.float32)),
        original_sizes=torch.from_numpy(
            np.array([s.original_size for s in samples], dtype=np.int64)
        ),
        image_ids=torch.from_numpy(np.array([s.image_id for s in samples], dtype=np.int64)),
        gt_boxes=torch.from_numpy(gt_boxes),
        gt_labels=torch.from_numpy(gt_labels),
        gt_mini_masks=torch.from_numpy(gt_masks),
        gt_valid=torch.from_numpy(gt_valid),
        gt_keypoints=None if gt_kps is None else torch.from_numpy(gt_kps),
    )


def hflip_sample(
    sample: Sample, inplace: bool = False, flip_map: tuple[int, ...] | None = None
) -> Sample:
    """Mirror image, boxes, crowd boxes, mini-masks and keypoints left-right inside the window.

    A column x of the window [wx1, wx2) goes to wx1 + wx2 - 1 - x, so a box [x1, x2) goes to
    [wx1 + wx2 - x2, wx1 + wx2 - x1) and its mini-mask is mirrored too (it still covers the box
    exactly). A keypoint at continuous x goes to wx1 + wx2 - x, and keypoint k becomes keypoint
    `flip_map[k]` (a left eye is a right eye in the mirror; None or empty = no swaps).
    Unlabelled keypoints (visibility 0) are left as they are. Padding stays where it is.
    """
    y1, x1, y2, x2 = sample.window
    image = sample.image if inplace else sample.image.copy(order="K")  # keeps the layout
    chw = image.transpose(2, 0, 1)
    if chw.flags.c_contiguous:  # ShardDataset's CHW buffer: reversing rows is ~5x faster
        region = chw[:, y1:y2, x1:x2]
        region[:] = region[:, :, ::-1].copy()
    else:
        region = image[y1:y2, x1:x2]
        region[:] = region[:, ::-1].copy()
    return replace(
        sample,
        image=image,
        boxes=_flip_boxes(sample.boxes, x1 + x2),
        crowd_boxes=_flip_boxes(sample.crowd_boxes, x1 + x2),
        mini_masks=np.ascontiguousarray(sample.mini_masks[:, :, ::-1]),
        keypoints=_flip_keypoints(sample.keypoints, x1 + x2, flip_map),
    )


def _flip_keypoints(
    keypoints: np.ndarray | None, width_sum: float, flip_map: tuple[int, ...] | None
) -> np.ndarray | None:
    if keypoints is None:
        return None
    out = keypoints.copy()
    labelled = out[..., 2] > 0
    out[..., 0] = np.where(labelled, width_sum - keypoints[..., 0], keypoints[..., 0])
    if flip_map:
        # out[:, k] is the mirrored point of type k, which becomes type flip_map[k]:
        # new[:, flip_map[k]] = out[:, k], a gather with the inverse permutation.
        out = out[:, np.argsort(flip_map)]
    return out


def _flip_boxes(boxes: np.ndarray, width_sum: float) -> np.ndarray:
    out = boxes.copy()
    out[:, 0] = width_sum - boxes[:, 2]
    out[:, 2] = width_sum - boxes[:, 0]
    return out


class SampleOrder:
    """The global training order: stream position -> (dataset index, flip?).

    Epoch e's permutation comes from `default_rng([seed, e])`, its flip coins from
    `default_rng([seed, e, 1])`, indexed by the position inside the epoch. Both are cached for
    the last two epochs touched.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        if num_samples <= 0:
            raise ValueError("the dataset is empty")
        self.n = num_samples
        self.seed = seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        if e not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            perm = np.random.default_rng([self.seed, e]).permutation(self.n)
            flips = np.random.default_rng([self.seed, e, 1]).random(self.n) < 0.5
            self._cache[e] = (perm, flips)
        return self._cache[e]

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """int [k] stream positions -> (dataset indices [k], flip flags [k])."""
        idx = np.empty(len(positions), dtype=np.int64)
        flip = np.empty(len(positions), dtype=bool)
        epochs, offsets = np.divmod(np.asarray(positions, dtype=np.int64), self.n)
        for e in np.unique(epochs):
            sel = epochs == e
            perm, flips = self.epoch(int(e))
            idx[sel] = perm[offsets[sel]]
            flip[sel] = flips[offsets[sel]]
        return idx, flip


class _TrainStream(IterableDataset):
    """Batches t = start + w, start + w + nw, ... for DataLoader worker w of nw (in-process:
    w = 0, nw = 1). The DataLoader takes one batch from each worker in turn, so the batches come
    out in iteration order."""

    def __init__(self, loader: TrainLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        w, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        t = self.loader.start_iteration + w
        while True:
            yield self.loader.batch(t)
            t += nw


class TrainLoader:
    """Infinite iterable of per-rank training `Batch`es (see the module doc for the order).

    dataset:     a `ShardDataset` (anything with `len` and `[i] -> Sample`)
    batch_size:  images per rank per iteration (B)
    seed:        fixes the order and the flips
    rank, world_size: this process's place among the data-parallel ranks
    start_iteration: the first global iteration to produce (resume); nothing before it is read
    hflip:       mirror half of the samples (decided per stream position)
    augment:     scale jitter / random crop (`mrcnn.data.Augmentation`, its `hflip` unused
                 here), drawn per stream position
    max_gt:      ground-truth slots per image (`collate`)
    num_workers: DataLoader worker processes (0 = in this process); each builds whole batches
    pin_memory:  page-locked batches for fast host -> GPU copies
    keypoint_flip_map: keypoint k becomes `keypoint_flip_map[k]` when a sample is flipped
                 (`model.keypoints.flip_map`); None or empty = no swaps
    num_keypoints: K for `Batch.gt_keypoints` (`collate`); None = from the samples

    Attribute `iterations_per_epoch` = ceil(N / (B * W)).
    """

    def __init__(
        self,
        dataset: ShardDataset,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_iteration: int = 0,
        hflip: bool = True,
        augment: Augmentation | None = None,
        max_gt: int = 100,
        num_workers: int = 0,
        pin_memory: bool = False,
        keypoint_flip_map: tuple[int, ...] | None = None,
        num_keypoints: int | None = None,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < world_size, got "
                f"{batch_size=}, {rank=}, {world_size=}"
            )
        if start_iteration < 0 or num_workers < 0 or max_gt < 1:
            raise ValueError("start_iteration and num_workers must be >= 0, max_gt >= 1")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_iteration = start_iteration
        self.hflip = hflip
        self.augment = augment
        self.max_gt = max_gt
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.keypoint_flip_map = tuple(keypoint_flip_map or ())
        self.num_keypoints = num_keypoints
        self.order = SampleOrder(len(dataset), seed)
        self.iterations_per_epoch = math.ceil(len(dataset) / (batch_size * world_size))

    def positions(self, iteration: int) -> np.ndarray:
        """This rank's stream positions at global `iteration`: int64 [B]."""
        first = (iteration * self.world_size + self.rank) * self.batch_size
        return np.arange(first, first + self.batch_size, dtype=np.int64)

    def sample_indices(self, iteration: int) -> np.ndarray:
        """This rank's dataset indices at global `iteration`: int64 [B]."""
        return self.order(self.positions(iteration))[0]

    def batch(self, iteration: int) -> Batch:
        """Read, augment and collate this rank's batch of global `iteration`."""
        positions = self.positions(iteration)
        indices, flips = self.order(positions)
        samples = []
        for pos, i, flip in zip(positions.tolist(), indices.tolist(), flips.tolist(), strict=True):
            s = self.dataset[i]
            if self.hflip and flip:
                s = hflip_sample(s, inplace=True, flip_map=self.keypoint_flip_map)
            if self.augment is not None and self.augment.geometric:
                s = augment_sample(s, self.augment, np.random.default_rng([self.seed, 2, pos]))
            samples.append(s)
        return collate(samples, self.max_gt, self.num_keypoints)

    def __iter__(self) -> Iterator[Batch]:
        stream = _TrainStream(self)
        if self.num_workers == 0:
            pin = self.pin_memory and torch.cuda.is_available()
            for batch in stream:
                yield batch.pin_memory() if pin else batch
            return
        # The DataLoader draws its workers' base seed from `generator`, by default from torch's
        # global RNG: that draw would shift the RoI / anchor sampling of a run with loader
        # workers against one without, and a resumed run (whose RNG state is restored before
        # this iterator starts) against the uninterrupted one. The batches themselves depend on
        # (seed, position) only.
        yield from DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            prefetch_factor=2,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(self.seed),
        )


def eval_batches(
    dataset: ShardDataset, batch_size: int, *, max_gt: int = 100, num_workers: int = 0
) -> Iterator[Batch]:
    """Every sample once, in dataset order, unaugmented; the last batch may be smaller."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers == 0:
        for start in range(0, len(dataset), batch_size):
            stop = min(len(dataset), start + batch_size)
            yield collate([dataset[i] for i in range(start, stop)], max_gt)
        return
    yield from DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_Collate(max_gt),
    )


class _Collate:
    """Picklable `collate` with a fixed `max_gt` (DataLoader workers may be spawned)."""

    def __init__(self, max_gt: int) -> None:
        self.max_gt = max_gt

    def __call__(self, samples: list[Sample]) -> Batch:
        return collate(samples, self.max_gt)
