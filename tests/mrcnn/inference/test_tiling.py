"""Tiled inference finds small objects in a large image that the downscaled pass misses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from mrcnn.data.resize import resize_and_pad
from mrcnn.inference.detections import Detections
from mrcnn.inference.tiling import detect_tiled, tile_grid


class BlobDetector:
    """A stand-in detector with a real model's resolution limit: like `MaskRCNN.detect` it sees
    each image resized into its `image_size` frame, and finds bright blobs of >= 4 input pixels
    (label 1 when smaller than 100 input pixels, else 2), masks pasted back at the image's
    resolution (nearest)."""

    image_size = 128

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, images, batch_size=4):
        self.calls += 1
        out = []
        for im in images:
            r = resize_and_pad(im, self.image_size)
            y1, x1, y2, x2 = r.window
            lab, n = ndimage.label(r.image[y1:y2, x1:x2, 0] > 127)
            boxes, masks, labels = [], [], []
            for k in range(1, n + 1):
                small = torch.from_numpy((lab == k).astype(np.float32))[None, None]
                if small.sum() < 4:
                    continue
                m = F.interpolate(small, size=im.shape[:2], mode="nearest")[0, 0].numpy() > 0
                ys, xs = np.nonzero(m)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                masks.append(m)
                labels.append(1 if small.sum() < 100 else 2)
            out.append(
                Detections(
                    np.array(boxes, np.float32).reshape(-1, 4),
                    np.full(len(boxes), 0.9, np.float32),
                    np.array(labels, np.int64),
                    np.array(masks, bool).reshape(-1, *im.shape[:2]),
                )
            )
        return out


def _scene():
    """4000 x 3000 with 23 squares of 12 px and one 700 px disc."""
    h, w = 3000, 4000
    img = np.zeros((h, w, 3), np.uint8)
    rng = np.random.default_rng(0)
    small = []
    for gy in range(4):
        for gx in range(6):
            y = int(gy * 700 + 100 + rng.integers(0, 300))
            x = int(gx * 650 + 100 + rng.integers(0, 300))
            if (y - 1500) ** 2 + (x - 2000) ** 2 < 400**2:
                continue  # under the disc
            img[y : y + 12, x : x + 12] = 255
            small.append([x, y, x + 12, y + 12])
    yy, xx = np.ogrid[:h, :w]
    disc = (yy - 1500) ** 2 + (xx - 2000) ** 2 < 350**2
    img[disc] = 255
    return img, np.array(small, np.float32), disc


def test_tiling_finds_small_objects_the_downscaled_pass_misses():
    img, small, disc = _scene()
    model = BlobDetector()
    plain = model.detect([img])[0]
    assert len(plain) == 1 and plain.labels.tolist() == [2]  # only the disc survives shrinking
    det = detect_tiled(model, img, tile=256, overlap=0.2, batch_size=8)
    assert det.image_shape == (3000, 4000)
    squares = det.boxes[det.labels == 1]
    assert len(small) == len(squares) == 23  # every small square, once (NMS merged overlaps)
    # Within 2 px: the detector sees the squares at half resolution (odd edges blur).
    np.testing.assert_allclose(np.sort(squares, 0), np.sort(small, 0), atol=2)
    big = np.flatnonzero(det.labels == 2)
    assert len(big) == 1  # the disc, whole, from the whole-image pass; its tile pieces dropped
    mask = det.mask(int(big[0]))
    assert (mask & disc).sum() / (mask | disc).sum() > 0.95  # seen at ~22 model px
    for i in np.flatnonzero(det.labels == 1):
        assert 100 <= det.mask(int(i)).sum() <= 196  # full-resolution masks of 12 x 12 squares
    assert det.masks([0, 1]).shape == (2, 3000, 4000)
    assert model.calls == 1 + 38 + 1  # plain, ceil(300 tiles / 8) batches, whole image


def test_tile_grid_covers_the_image_flush_with_its_edges():
    grid = tile_grid(1000, 700, 256, 0.25)
    assert grid[0] == (0, 0, 256, 256) and grid[-1] == (744, 444, 1000, 700)
    cover = np.zeros((1000, 700), bool)
    for y1, x1, y2, x2 in grid:
        cover[y1:y2, x1:x2] = True
        assert y2 - y1 == 256 and x2 - x1 == 256
    assert cover.all()
    assert tile_grid(100, 80, 256, 0.2) == [(0, 0, 100, 80)]
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(10, 10, 256, 1.0)
