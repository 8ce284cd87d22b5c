import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

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
