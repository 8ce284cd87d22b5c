from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from mrcnn.poolers import assign_levels, multilevel_roi_align


def test_level_formula():
    # k = floor(4 + log2(sqrt(wh) / 224)), clamped to 2..5; returned as an index from P2.
    boxes = torch.tensor(
        [
            [0, 0, 224, 224],
            [0, 0, 223, 223],
            [0, 0, 448, 448],
            [0, 0, 112, 112],
            [0, 0, 10, 10],
            [0, 0, 2000, 2000],
        ],
        dtype=torch.float32,
    )
    assert assign_levels(boxes).tolist() == [2, 1, 3, 1, 0, 3]


@pytest.mark.parametrize("aligned", [False, True])
def test_matches_torchvision_multiscale_roi_align(aligned):
    torch.manual_seed(0)
    s = 256
    feats = [torch.randn(2, 4, s // st, s // st) for st in (4, 8, 16, 32, 64)]
    xy = torch.rand(2, 30, 2) * 200
    wh = torch.rand(2, 30, 2) * 250 + 4
    boxes = torch.cat([xy, xy + wh], dim=-1)
    ours = multilevel_roi_align(feats, boxes, s, 7, 2, aligned=aligned)
    if aligned:
        # torchvision's pooler has no aligned option; only check shape and finiteness here.
        assert ours.shape == (60, 4, 7, 7) and torch.isfinite(ours).all()
        return
    tv = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    named = OrderedDict((str(i), f) for i, f in enumerate(feats[:4]))
    ref = tv(named, [boxes[0], boxes[1]], [(s, s), (s, s)])
    torch.testing.assert_close(ours, ref)
