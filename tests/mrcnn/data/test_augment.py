"""Scale jitter and random crop: the image, boxes and mini-masks move together."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from mrcnn.data import Augmentation, Sample, TrainLoader, augment_sample, expand_mini_masks
from mrcnn.data.augment import transform_sample
from mrcnn.data.minimask import boxes_from_masks, make_mini_masks

S, M = 64, 28
WIN = (0, 0, 48, 64)  # a landscape image padded at the bottom


def scene() -> tuple[Sample, np.ndarray]:
    """Two instances drawn in the image (rectangle: colour 200, disc: colour 100) -> (sample,
    their full masks bool [2, S, S])."""
    yy, xx = np.mgrid[:S, :S]
    rect = (yy >= 8) & (yy < 20) & (xx >= 8) & (xx < 24)
    disc = (yy - 30) ** 2 + (xx - 44) ** 2 < 11**2
    masks = np.stack([rect, disc])
    image = np.zeros((S, S, 3), np.uint8)
    image[: WIN[2], : WIN[3]] = 30
    image[rect] = 200
    image[disc] = 100
    boxes = boxes_from_masks(masks)
    return (
        Sample(
            image=image,
            image_id=1,
            window=WIN,
            scale=0.5,
            original_size=(96, 128),
            boxes=boxes,
            labels=np.array([1, 2]),
            mini_masks=make_mini_masks(masks, boxes, M).astype(bool),
            crowd_boxes=np.array([[0, 40, 10, 47]], np.float32),
        ),
        masks,
    )


def moved_masks(masks: np.ndarray, region, f) -> np.ndarray:
    """The ground truth: full masks resampled through the same frame map, thresholded."""
    y1, x1, y2, x2 = region
    nh, nw = round((y2 - y1) * f), round((x2 - x1) * f)
    src = torch.from_numpy(masks.astype(np.float32))[:, None]
    roi = torch.tensor([[0.0, x1, y1, x2, y2]]).repeat(len(masks), 1)
    roi[:, 0] = torch.arange(len(masks))
    out = roi_align(src, roi, (nh, nw), 1.0, sampling_ratio=2, aligned=True)[:, 0] >= 0.5
    full = np.zeros((len(masks), S, S), bool)
    full[:, :nh, :nw] = out.numpy()
    return full


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_scale_moves_boxes_exactly_and_keeps_mini_masks():
    s, _ = scene()
    out = transform_sample(s, (0.0, 0.0, 48.0, 64.0), 0.5)
    assert out.window == (0, 0, 24, 32)
    np.testing.assert_allclose(out.boxes[0], [4, 4, 12, 10])
    np.testing.assert_allclose(out.boxes, s.boxes * 0.5)
    np.testing.assert_array_equal(out.mini_masks, s.mini_masks)  # box-relative: unchanged
    np.testing.assert_allclose(out.crowd_boxes, [[0, 20, 5, 23.5]])
    assert out.scale == pytest.approx(0.25)
    assert out.image[5:9, 5:11].min() == 200  # the rectangle's pixels, inside its new box
    assert out.image[24:].max() == 0 and out.image[:, 32:].max() == 0  # padding stays zero


def test_crop_cuts_boxes_and_their_mini_masks_consistently():
    s, masks = scene()
    region, f = (4.0, 16.0, 36.0, 56.0), 1.6  # cuts the rectangle's left half, keeps the disc
    out = transform_sample(s, region, f)
    assert out.window == (0, 0, 51, 64)
    np.testing.assert_allclose(out.boxes[0], [0, 6.375, 12.8, 25.5], atol=1e-4)  # fy = 51 / 32
    expected = moved_masks(masks, region, f)
    got = expand_mini_masks(out.boxes, out.mini_masks, (S, S))
    assert out.mini_masks[0].all()  # a cut rectangle still fills its (cut) box
    assert iou(got[0], expected[0]) > 0.95
    assert iou(got[1], expected[1]) > 0.9
    # The image moved the same way: the disc's colour under its moved mask.
    assert np.median(out.image[got[1]][:, 0]) == 100
    assert np.median(out.image[got[0]][:, 0]) == 200
    assert len(out.crowd_boxes) == 0  # the crowd box lies outside the crop


def test_an_instance_cropped_away_is_dropped():
    s, _ = scene()
    out = transform_sample(s, (24.0, 32.0, 48.0, 64.0), 2.0)  # bottom-right quarter
    assert out.labels.tolist() == [2]
    assert out.boxes.shape == (1, 4) and out.mini_masks.shape == (1, M, M)


def test_large_scale_jitter_keeps_the_frame_and_is_seeded():
    s, masks = scene()
    aug = Augmentation(scale_range=(1.5, 2.0))
    a = augment_sample(s, aug, np.random.default_rng(3))
    b = augment_sample(s, aug, np.random.default_rng(3))
    np.testing.assert_array_equal(a.image, b.image)
    assert a.image.shape == (S, S, 3)
    assert a.window == (0, 0, S, S)  # 48 * 1.5 > 64: cut to the frame
    assert (a.boxes >= 0).all() and (a.boxes <= S).all()
    assert len(a.boxes) == len(a.labels) == len(a.mini_masks)
    small = augment_sample(s, Augmentation(short_sides=(24,)), np.random.default_rng(0))
    assert small.window == (0, 0, 24, 32)
    np.testing.assert_allclose(small.boxes, s.boxes * 0.5)
    crop = augment_sample(s, Augmentation(crop=(0.5, 0.5)), np.random.default_rng(1))
    assert max(crop.window[2:]) == S  # a crop is scaled to fill the frame


def test_augmentation_arguments_are_checked():
    with pytest.raises(ValueError, match="scale_range"):
        Augmentation(scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="not both"):
        Augmentation(scale_range=(0.5, 1.0), short_sides=(100,))
    with pytest.raises(ValueError, match="crop"):
        Augmentation(crop=(0.5, 1.5))


class _Repeat:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return scene()[0]


def test_train_loader_batches_keep_their_shape_and_repeat_on_resume():
    aug = Augmentation(scale_range=(0.3, 2.0), crop=(0.6, 1.0))
    loader = TrainLoader(_Repeat(4), 2, seed=0, augment=aug, max_gt=3)
    a, again = loader.batch(5), TrainLoader(_Repeat(4), 2, seed=0, augment=aug, max_gt=3).batch(5)
    assert a.images.shape == (2, 3, S, S) and a.gt_mini_masks.shape == (2, 3, M, M)
    torch.testing.assert_close(a.images, again.images)
    torch.testing.assert_close(a.gt_boxes, again.gt_boxes)
    assert not torch.equal(a.images, loader.batch(6).images)
