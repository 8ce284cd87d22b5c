"""Tiled inference for images much larger than the model's input.

A 4000 x 3000 photo shrunk to a 1024 (or 128) px model input loses every object smaller than a
few model pixels. Tiling runs the model on overlapping windows of the original pixels instead,
and adds one pass over the whole (downscaled) image for objects larger than a tile:

    tiles      `tile x tile` windows of the original image, stride `tile * (1 - overlap)`, the
               last row / column flush with the image edge; run through `model.detect` in
               batches of `batch_size`, so memory is bounded by the tile, not the image
    edges      a tile's detection touching one of its edges that lies inside the image is cut
               by the tile; it is dropped (its neighbour, or the whole-image pass, sees it whole)
    merge      boxes shifted to original coordinates; class-wise NMS across all tiles and the
               whole-image pass (`nms_thresh`), best `max_detections` by score
    masks      kept as crops around each box (`TiledDetections`), pasted at full resolution one
               at a time when asked (`mask(i)`), so N masks never need N x H x W memory

`model` is anything with `detect(images, batch_size) -> list[Detections]` and `image_size`
(`MaskRCNN`, `mrcnn.export.OnnxModel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

from mrcnn.inference.detections import Detections

_EDGE_PX = 2.0  # a box this close to an inner tile edge counts as cut by it


@dataclass
class TiledDetections:
    """Detections of one large image, masks stored as crops.

    boxes:   float32 [N, 4] xyxy in original-image pixels, sorted by score (descending)
    scores:  float32 [N]
    labels:  int64   [N]
    crops:   N bool arrays [h_i, w_i], mask pixels inside each crop window
    origins: int64   [N, 2] (y, x) of each crop's top-left pixel in the image
    image_shape: (H, W)
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    crops: list[np.ndarray]
    origins: np.ndarray
    image_shape: tuple[int, int]

    def __len__(self) -> int:
        return len(self.scores)

    def mask(self, i: int) -> np.ndarray:
        """Instance i's mask at full resolution: bool [H, W]."""
        out = np.zeros(self.image_shape, dtype=bool)
        (y, x), c = self.origins[i], self.crops[i]
        out[y : y + c.shape[0], x : x + c.shape[1]] = c
        return out

    def masks(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Full-resolution masks bool [len(indices), H, W] (all when None): N x H x W bytes."""
        idx = range(len(self)) if indices is None else indices
        if not len(idx):
            return np.zeros((0, *self.image_shape), dtype=bool)
        return np.stack([self.mask(i) for i in idx])

    def to_detections(self) -> Detections:
        """The ordinary `Detections` (full masks: N x H x W bytes)."""
        return Detections(self.boxes, self.scores, self.labels, self.masks())


def tile_grid(
    height: int, width: int, tile: int, overlap: float
) -> list[tuple[int, int, int, int]]:
    """Tile windows (y1, x1, y2, x2) covering the image, row-major; at least one."""
    if tile < 1 or not 0 <= overlap < 1:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < 1, got {tile=}, {overlap=}")
    stride = max(1, int(round(tile * (1 - overlap))))

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        s = list(range(0, n - tile, stride))
        return s + [n - tile]

    return [
        (y, x, min(y + tile, height), min(x + tile, width))
        for y in starts(height)
        for x in starts(width)
    ]


@torch.no_grad()
def detect_tiled(
    model: Any,
    image: np.ndarray,
    *,
    tile: int = 1024,
    overlap: float = 0.2,
    batch_size: int = 4,
    nms_thresh: float = 0.5,
    max_detections: int = 1000,
    whole_image: bool = True,
) -> TiledDetections:
    """Detect objects in one large uint8 `[H, W, 3]` image tile by tile (see the module doc).

    tile:        tile side in original pixels (each tile is then resized to the model input)
    overlap:     fraction of a tile shared with its neighbour (0.2: objects up to 20% of a tile
                 are whole in some tile)
    batch_size:  tiles per `model.detect` call
    nms_thresh:  IoU above which overlapping same-class detections from different tiles merge
    whole_image: also run the model on the whole image (downscaled), for objects larger than the
                 overlap
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 H x W x 3 image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    windows = tile_grid(h, w, tile, overlap)
    boxes, scores, labels, crops, origins = [], [], [], [], []

    def collect(det: Detections, y0: int, x0: int, keep: np.ndarray, fy: float, fx: float) -> None:
        # Per detection: each has its own crop size (a ragged result, hence the loop).
        for i in np.flatnonzero(keep):
            b = det.boxes[i].astype(np.float64) * [fx, fy, fx, fy] + [x0, y0, x0, y0]
            crop, origin = _crop_mask(det.masks[i], det.boxes[i], (fy, fx), (h, w), (y0, x0))
            boxes.append(b)
            scores.append(float(det.scores[i]))
            labels.append(int(det.labels[i]))
            crops.append(crop)
            origins.append(origin)

    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        tiles = [np.ascontiguousarray(image[y1:y2, x1:x2]) for y1, x1, y2, x2 in chunk]
        for (y1, x1, y2, x2), det in zip(
            chunk, model.detect(tiles, batch_size=len(tiles)), strict=True
        ):
            keep = ~_touches_inner_edge(det.boxes, (y1, x1, y2, x2), (h, w))
            collect(det, y1, x1, keep, 1.0, 1.0)
    if whole_image and len(windows) > 1:
        # Downscale once here (to twice the model input, enough for its own resize), so the
        # whole-image pass never holds full-resolution masks for all of its detections.
        side = 2 * int(model.image_size)
        factor = max(1.0, max(h, w) / side)
        small = _resize(image, int(round(h / factor)), int(round(w / factor)))
        fy, fx = h / small.shape[0], w / small.shape[1]
        det = model.detect([small], batch_size=1)[0]
        collect(det, 0, 0, np.ones(len(det), bool), fy, fx)
    if not boxes:
        return TiledDetections(
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
            [],
            np.zeros((0, 2), np.int64),
            (h, w),
        )
    b = torch.tensor(np.array(boxes), dtype=torch.float32)
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    s = torch.tensor(scores)
    keep = batched_nms(b, s, torch.tensor(labels), nms_thresh)[:max_detections].numpy()
    return TiledDetections(
        boxes=b.numpy()[keep],
        scores=s.numpy()[keep].astype(np.float32),
        labels=np.array(labels, np.int64)[keep],
        crops=[crops[i] for i in keep],
        origins=np.array(origins, np.int64).reshape(-1, 2)[keep],
        image_shape=(h, w),
    )


def _touches_inner_edge(
    boxes: np.ndarray, window: tuple[int, ...], shape: tuple[int, int]
) -> np.ndarray:
    """bool [N]: the box (tile pixels) lies within `_EDGE_PX` of a tile edge inside the image."""
    y1, x1, y2, x2 = window
    h, w = shape
    th, tw = y2 - y1, x2 - x1
    cut = np.zeros(len(boxes), bool)
    if x1 > 0:
        cut |= boxes[:, 0] <= _EDGE_PX
    if y1 > 0:
        cut |= boxes[:, 1] <= _EDGE_PX
    if x2 < w:
        cut |= boxes[:, 2] >= tw - _EDGE_PX
    if y2 < h:
        cut |= boxes[:, 3] >= th - _EDGE_PX
    return cut


def _crop_mask(
    mask: np.ndarray,
    box: np.ndarray,
    factor: tuple[float, float],
    shape: tuple[int, int],
    offset: tuple[int, int],
) -> tuple[np.ndarray, tuple[int, int]]:
    """The part of a tile's mask [th, tw] around its box (one pixel margin), scaled by `factor`
    (fy, fx) (bilinear, for the whole-image pass) -> (bool crop in image pixels, its (y, x)
    origin)."""
    th, tw = mask.shape
    x1 = max(0, int(np.floor(box[0])) - 1)
    y1 = max(0, int(np.floor(box[1])) - 1)
    x2 = min(tw, int(np.ceil(box[2])) + 1)
    y2 = min(th, int(np.ceil(box[3])) + 1)
    crop = mask[y1:y2, x1:x2]
    oy, ox = offset
    fy, fx = factor
    if fy == 1.0 and fx == 1.0:
        return crop.copy(), (oy + y1, ox + x1)
    h, w = shape
    ny1, nx1 = int(round(y1 * fy)), int(round(x1 * fx))
    ny2, nx2 = min(h, int(round(y2 * fy))), min(w, int(round(x2 * fx)))
    t = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.uint8))[None, None].float()
    big = F.interpolate(t, size=(max(1, ny2 - ny1), max(1, nx2 - nx1)), mode="bilinear")
    return (big[0, 0] >= 0.5).numpy(), (oy + ny1, ox + nx1)


def _resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    from mrcnn.data.resize import resize_image

    return resize_image(image, max(1, h), max(1, w))
