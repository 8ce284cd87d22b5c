import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

from mrcnn import mask_paste
from mrcnn.mask_paste import paste_masks_in_image


def test_paste_matches_torchvision_geometry():
    g = torch.Generator().manual_seed(0)
    n, h, w = 30, 120, 160
    masks = torch.rand(n, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) - 10  # some start off-image
    wh = torch.rand(n, 2, generator=g) * 80 + 0.5
    boxes = torch.cat([xy, xy + wh], dim=1)
    ref = tv_paste(masks[:, None], boxes, (h, w))[:, 0] >= 0.5
    ours = paste_masks_in_image(masks, boxes, (h, w), 0.5)
    assert ours.shape == (n, h, w) and ours.dtype == torch.bool
    disagree = (ours != ref).sum().item()
    assert disagree <= 0.001 * ref.sum().item()  # float rounding at the threshold only
    assert ref.sum() > 1000


def test_paste_empty():
    out = paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (10, 12))
    assert out.shape == (0, 10, 12)


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
    return out


def test_full_mask_covers_the_grown_box_exactly():
    # M = 28, box 10 px wide centred on 15: grown to 10 * 30 / 28 -> pixels 9..20 (12 px); the
    # border samples hit 0.75 of a mask pixel, so at 0.5 all 12 are in, at 0.8 the outer ring
    # drops (pixels 10..19).
    masks = torch.ones(1, 28, 28)
    boxes = torch.tensor([[10.0, 10, 20, 20]])
    at_half = paste_masks_in_image(masks, boxes, (32, 32), 0.5)[0]
    assert at_half.sum() == 144
    assert at_half[9:21, 9:21].all()
    at_high = paste_masks_in_image(masks, boxes, (32, 32), 0.8)[0]
    assert at_high.sum() == 100 and at_high[10:20, 10:20].all()


def test_left_half_mask_pastes_left_half_of_the_box():
    masks = torch.zeros(1, 28, 28)
    masks[:, :, :14] = 1
    out = paste_masks_in_image(masks, torch.tensor([[10.0, 10, 20, 20]]), (32, 32), 0.5)[0]
    # source column of image column 9 + i is (i + 0.5) * 2.5 - 0.5; >= 0.5 up to i = 5.
    assert out[9:21].any(0).nonzero().squeeze(1).tolist() == [9, 10, 11, 12, 13, 14]
    assert out.sum() == 12 * 6


def test_paste_matches_a_naive_per_mask_reference():
    g = torch.Generator().manual_seed(1)
    n, h, w = 25, 50, 70
    masks = torch.rand(n, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) - 8  # some off the image
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 40 + 0.2], dim=1)
    ours = paste_masks_in_image(masks, boxes, (h, w), 0.5)
    ref = naive_paste(masks, boxes, (h, w), 0.5)
    assert ref.sum() > 2000
    assert (ours != ref).sum() <= 2  # float rounding at the threshold only


def test_chunks_give_the_same_result(monkeypatch):
    g = torch.Generator().manual_seed(2)
    masks = torch.rand(7, 28, 28, generator=g)
    boxes = torch.tensor([[2.0, 3, 20, 25]]).repeat(7, 1) + torch.arange(7.0)[:, None]
    whole = paste_masks_in_image(masks, boxes, (40, 40), 0.5)
    monkeypatch.setattr(mask_paste, "_CHUNK_PIXELS", 2 * 40 * 40)  # 2 masks per chunk
    assert torch.equal(paste_masks_in_image(masks, boxes, (40, 40), 0.5), whole)


def test_bilinear_matrix_weights():
    coords = torch.tensor([[0.0, 0.5, 2.0, 3.5, 1.25]])
    valid = torch.tensor([[True, True, True, True, False]])
    wts = mask_paste.bilinear_matrix(coords, valid, 3)
    expected = [[1, 0, 0], [0.5, 0.5, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0]]
    torch.testing.assert_close(wts[0], torch.tensor(expected, dtype=torch.float32))
