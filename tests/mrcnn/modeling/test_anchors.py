import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from mrcnn.modeling.anchors import AnchorGenerator, feature_grid_sizes


def test_order_is_level_then_row_major_cell_then_ratio():
    gen = AnchorGenerator((32, 64, 128, 256, 512), (0.5, 1.0, 2.0))
    anchors, counts = gen(128)
    assert counts == [32 * 32 * 3, 16 * 16 * 3, 8 * 8 * 3, 4 * 4 * 3, 2 * 2 * 3]
    assert anchors.shape == (sum(counts), 4)
    # First three: cell (0, 0) of P2, ratios 0.5, 1, 2 (height / width), centred on (0, 0).
    torch.testing.assert_close(
        anchors[:3],
        torch.tensor([[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11, -23, 11, 23]]),
    )
    # Next cell is one stride (4 px) to the right, same row.
    torch.testing.assert_close(anchors[3:6], anchors[:3] + torch.tensor([4.0, 0, 4, 0]))
    # Cell 32 starts the second row.
    torch.testing.assert_close(
        anchors[32 * 3 : 32 * 3 + 3], anchors[:3] + torch.tensor([0, 4.0, 0, 4])
    )
    # P3 starts with its own size (64) at stride 8.
    p3 = anchors[counts[0] : counts[0] + 3]
    torch.testing.assert_close(p3[1], torch.tensor([-32.0, -32, 32, 32]))


def test_same_anchors_as_torchvision():
    sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
    ours, _ = AnchorGenerator(sizes, ratios)(256)
    tv = TVAnchorGenerator(tuple((s,) for s in sizes), (ratios,) * 5)
    feats = [torch.zeros(1, 1, h, w) for h, w in feature_grid_sizes(256)]
    ref = tv(ImageList(torch.zeros(1, 3, 256, 256), [(256, 256)]), feats)[0]
    torch.testing.assert_close(ours, ref)


def test_anchor_stride_subsamples_cells_and_cache():
    gen = AnchorGenerator((8, 16, 32, 64, 128), (1.0,), anchor_stride=2)
    anchors, counts = gen(128)
    assert counts == [16 * 16, 8 * 8, 4 * 4, 2 * 2, 1]
    torch.testing.assert_close(anchors[1] - anchors[0], torch.tensor([8.0, 0, 8, 0]))
    assert gen(128)[0] is anchors  # cached per size
    assert feature_grid_sizes(96)[-1] == (2, 2)  # P6 = ceil(P5 / 2)
