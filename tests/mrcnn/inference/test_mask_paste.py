"""mrcnn.inference.mask_paste: the numpy paste gives torchvision's masks (its own
`paste_masks_in_image` is the reference) and a per-mask F.interpolate reference."""

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

from mrcnn.inference.mask_paste import crop_weights, grown_boxes, paste_masks_in_image


def _boxes(g: torch.Generator, n: int, h: int, w: int, off: float, size: float) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) - off  # some start off-image
    wh = torch.rand(n, 2, generator=g) * size + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def test_paste_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    n, h, w = 30, 120, 160
    masks = torch.rand(n, 28, 28, generator=g)
    boxes = _boxes(g, n, h, w, 10, 80)
    ref = (tv_paste(masks[:, None], boxes, (h, w))[:, 0] >= 0.5).numpy()
    ours = paste_masks_in_image(masks.numpy(), boxes.numpy(), (h, w), 0.5)
    assert ours.shape == (n, h, w) and ours.dtype == bool
    assert ref.sum() > 1000
    assert (ours != ref).sum() <= 0.001 * ref.sum()  # float rounding at the threshold only


def test_paste_empty():
    out = paste_masks_in_image(np.zeros((0, 28, 28)), np.zeros((0, 4)), (10, 12))
    assert out.shape == (0, 10, 12) and out.dtype == bool


def naive_paste(masks, boxes, image_shape, threshold):
    """torchvision's geometry written out per mask: pad by one pixel, grow the box by
    (M + 2) / M, truncate to whole pixels, bilinear resize, clip to the image."""
    h, w = image_shape
    m = masks.shape[-1]
    scale = (m + 2) / m
    out = torch.zeros((len(masks), h, w), dtype=torch.bool)
    for i, (mask, box) in enumerate(zip(masks, boxes, strict=True)):
        padded = F.pad(mask.float(), (1, 1, 1, 1))
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        hw, hh = (box[2] - box[0]) / 2 * scale, (box[3] - box[1]) / 2 * scale
        x0, x1 = int(cx - hw), int(cx + hw)
        y0, y1 = int(cy - hh), int(cy + hh)
        bw, bh = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        resized = F.interpolate(padded[None, None], size=(bh, bw), mode="bilinear")[0, 0]
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + bh, h), min(x0 + bw, w)
        if ye > ys and xe > xs:
            crop = resized[ys - y0 : ye - y0, xs - x0 : xe - x0]
            out[i, ys:ye, xs:xe] = crop >= threshold
    return out.numpy()


def test_paste_matches_a_naive_per_mask_reference():
    g = torch.Generator().manual_seed(1)
    n, h, w = 25, 50, 70
    masks = torch.rand(n, 28, 28, generator=g)
    boxes = _boxes(g, n, h, w, 8, 40)
    boxes[0] = torch.tensor([3.2, 4.7, 3.9, 5.1])  # under a pixel
    boxes[1] = torch.tensor([-20.0, -20, 200, 150])  # larger than the image
    boxes[2] = torch.tensor([140.0, 10, 170, 30])  # right of the image: no pixel
    ours = paste_masks_in_image(masks.numpy(), boxes.numpy(), (h, w), 0.5)
    ref = naive_paste(masks, boxes, (h, w), 0.5)
    assert ref.sum() > 2000 and not ours[2].any()
    assert (ours != ref).sum() <= 2  # float rounding at the threshold only


def test_full_mask_covers_the_grown_box_exactly():
    # M = 28, box 10 px wide centred on 15: grown to 10 * 30 / 28 -> pixels 9..20 (12 px); the
    # border samples hit 0.75 of a mask pixel, so at 0.5 all 12 are in, at 0.8 the outer ring
    # drops (pixels 10..19).
    masks = np.ones((1, 28, 28), np.float32)
    boxes = np.array([[10.0, 10, 20, 20]], np.float32)
    assert [int(v[0]) for v in grown_boxes(boxes, 28)] == [9, 9, 20, 20]
    at_half = paste_masks_in_image(masks, boxes, (32, 32), 0.5)[0]
    assert at_half.sum() == 144 and at_half[9:21, 9:21].all()
    at_high = paste_masks_in_image(masks, boxes, (32, 32), 0.8)[0]
    assert at_high.sum() == 100 and at_high[10:20, 10:20].all()


def test_left_half_mask_pastes_left_half_of_the_box():
    masks = np.zeros((1, 28, 28), np.float32)
    masks[:, :, :14] = 1
    out = paste_masks_in_image(masks, np.array([[10.0, 10, 20, 20]]), (32, 32), 0.5)[0]
    # source column of image column 9 + i is (i + 0.5) * 2.5 - 0.5; >= 0.5 up to i = 5.
    assert np.flatnonzero(out[9:21].any(0)).tolist() == [9, 10, 11, 12, 13, 14]
    assert out.sum() == 12 * 6


def test_crop_weights_rows_sum_to_one_and_clip_to_the_image():
    first, wts = crop_weights(-3, 6, 5, 4)  # 10 pixels from -3, the image has 0..4
    assert first == 0 and wts.shape == (5, 4)
    np.testing.assert_allclose(wts.sum(1), 1.0, rtol=1e-6)
    # pixel 0 is the 4th of 10: source coordinate (3 + 0.5) * 0.4 - 0.5 = 0.9
    np.testing.assert_allclose(wts[0], [0.1, 0.9, 0, 0], atol=1e-6)
    assert crop_weights(7, 9, 5, 4)[1].shape == (0, 4)  # right of the image: nothing
