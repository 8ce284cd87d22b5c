"""mrcnn.layers.resample: separable bilinear weights and resampling into whole frames."""

import torch
import torch.nn.functional as F

from mrcnn.layers import resample
from mrcnn.layers.resample import bilinear_matrix, paste_separable


def test_bilinear_matrix_weights():
    coords = torch.tensor([[0.0, 0.5, 2.0, 3.5, 1.25]])
    valid = torch.tensor([[True, True, True, True, False]])
    wts = bilinear_matrix(coords, valid, 3)
    expected = [[1, 0, 0], [0.5, 0.5, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0]]
    torch.testing.assert_close(wts[0], torch.tensor(expected, dtype=torch.float32))


def _frame_coords(n: int, size: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each mask resized to the whole frame (align_corners=False)."""
    pix = torch.arange(size, dtype=torch.float32)
    coords = ((pix + 0.5) * (m / size) - 0.5).expand(n, size)
    return coords, torch.ones(n, size, dtype=torch.bool)


def test_paste_separable_is_bilinear_interpolation():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 8, 8, generator=g)
    ys, yv = _frame_coords(3, 20, 8)
    xs, xv = _frame_coords(3, 20, 8)
    ours = paste_separable(masks, ys, yv, xs, xv, 0.5)
    ref = F.interpolate(masks[:, None], size=(20, 20), mode="bilinear")[:, 0] >= 0.5
    assert ref.sum() > 100 and (ours != ref).sum() <= 2


def test_chunks_give_the_same_result(monkeypatch):
    g = torch.Generator().manual_seed(2)
    masks = torch.rand(7, 8, 8, generator=g)
    ys, yv = _frame_coords(7, 30, 8)
    whole = paste_separable(masks, ys, yv, ys, yv, 0.5)
    monkeypatch.setattr(resample, "_CHUNK_PIXELS", 2 * 30 * 30)  # 2 masks per chunk
    assert torch.equal(paste_separable(masks, ys, yv, ys, yv, 0.5), whole)
