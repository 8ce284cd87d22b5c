"""Keypoint R-CNN (Mask R-CNN sec. 5): targets, loss, inference geometry, the head in the model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as tv_heatmaps

from mrcnn.modeling.keypoint_targets import keypoint_targets
from mrcnn.modeling.losses import keypoint_loss
from mrcnn.modeling.roi_heads.keypoint_head import KeypointHead, heatmaps_to_keypoints
from mrcnn.structures import RawDetections
from tests.mrcnn.scenes import make_keypoint_batch, tiny_model

M = 56


def test_keypoint_targets_one_hot_cell_is_where_the_keypoint_falls():
    rois = torch.tensor([[[0.0, 0, 56, 56], [10, 20, 38, 48]]])  # [1, 2, 4]; 1 and 2 px / cell
    gt = torch.tensor(
        [
            [
                [[10.3, 20.7, 2], [55.9, 0.0, 1], [3.0, 4.0, 0], [56.0, 56.0, 2]],
                [[17.0, 21.9, 2], [9.9, 30.0, 2], [38.0, 47.9, 1], [0.0, 0.0, 0]],
            ]
        ]
    )  # [1, G=2, K=4, 3]
    gt_index = torch.tensor([[0, 1]])
    targets, valid = keypoint_targets(rois, gt_index, gt, M)
    assert targets.shape == (1, 2, 4) and targets.dtype == torch.int64
    # RoI 0 (1 px per cell): (10.3, 20.7) -> cell (x 10, y 20); (55.9, 0) occluded but labelled;
    # (3, 4) unlabelled -> ignored; (56, 56) on the right/bottom edge -> the last cell.
    assert valid[0, 0].tolist() == [True, True, False, True]
    assert targets[0, 0].tolist() == [20 * M + 10, 0 * M + 55, 0, 55 * M + 55]
    # RoI 1 (x1 10, y1 20, 0.5 px per cell): (17, 21.9) -> (14, 3); x 9.9 is left of the RoI;
    # (38, 47.9) -> x on the edge -> 55, y (27.9 * 2) -> 55; unlabelled slot ignored.
    assert valid[0, 1].tolist() == [True, False, True, False]
    assert targets[0, 1].tolist() == [3 * M + 14, 0, 55 * M + 55, 0]


def test_keypoint_loss_hand_values_and_empty():
    logits = torch.zeros(2, 3, M, M, requires_grad=True)
    targets = torch.zeros(2, 3, dtype=torch.int64)
    valid = torch.tensor([[True, False, False], [False, False, True]])
    # Uniform logits: cross-entropy ln(m^2) for each valid keypoint, averaged over the valid ones.
    assert keypoint_loss(logits, targets, valid).item() == pytest.approx(math.log(M * M), 1e-6)
    peaked = logits.detach().clone()
    peaked[0, 0, 0, 0] = 100.0  # the target cell of keypoint (0, 0): loss ~0 there
    assert keypoint_loss(peaked, targets, valid).item() == pytest.approx(math.log(M * M) / 2, 1e-4)
    empty = keypoint_loss(logits, targets, torch.zeros_like(valid))
    assert empty.item() == 0
    empty.backward()  # still in the graph (DDP needs every parameter to get a gradient)
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0


def test_heatmaps_to_keypoints_hand_case():
    maps = torch.zeros(1, 2, M, M)
    maps[0, 0, 10, 20] = 5.0  # row 10, column 20
    maps[0, 1, 55, 0] = 3.0
    # A 56 x 56 box at (100, 200): one pixel per cell, the keypoint at the cell centre.
    kp = heatmaps_to_keypoints(maps, torch.tensor([[100.0, 200.0, 156.0, 256.0]]))
    assert kp.shape == (1, 2, 3)
    torch.testing.assert_close(kp[0, :, :2], torch.tensor([[120.5, 210.5], [100.5, 255.5]]))
    assert kp[0, 0, 2] == pytest.approx(5.0) and kp[0, 1, 2] == pytest.approx(3.0)


def test_heatmaps_to_keypoints_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    n = 30
    # Smooth maps, as the head makes them (bilinear 2x): no exact ties for the argmax.
    low = torch.randn(n, 5, 14, 14, generator=g) * 3
    maps = torch.nn.functional.interpolate(low, size=M, mode="bilinear")
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 150 + 0.3  # some boxes under 1 px (clamped to 1)
    boxes = torch.cat([xy, xy + wh], 1)
    ref_xy, ref_scores = tv_heatmaps(maps, boxes)
    kp = heatmaps_to_keypoints(maps, boxes)
    torch.testing.assert_close(kp[..., :2], ref_xy[..., :2], atol=1e-4, rtol=0)
    torch.testing.assert_close(kp[..., 2], ref_scores, atol=1e-4, rtol=1e-4)
    assert heatmaps_to_keypoints(maps[:0], boxes[:0]).shape == (0, 5, 3)


def test_keypoint_head_shapes():
    head = KeypointHead(in_channels=8, channels=16, num_convs=2, num_keypoints=17)
    assert head(torch.zeros(3, 8, 14, 14)).shape == (3, 17, 56, 56)


def test_postprocess_maps_keypoints_to_original_pixels():
    """Keypoints leave the padded frame as boxes do: minus the window offset, divided by scale."""
    model = tiny_model(keypoints={"count": 2, "head_channels": 8, "head_convs": 1})
    batch = model.prepare([np.zeros((32, 64, 3), np.uint8)])  # 64 x 128 in the 128 frame
    assert batch.scales.tolist() == [2.0]
    batch.windows[0] = torch.tensor([32.0, 0, 96, 128])  # as if padded above: y offset 32
    raw = RawDetections(
        boxes=torch.tensor([[[10.0, 40, 50, 80]]]),
        scores=torch.tensor([[0.9]]),
        labels=torch.tensor([[1]]),
        valid=torch.tensor([[True]]),
        mask_probs=torch.ones(1, 1, 28, 28),
        keypoints=torch.tensor([[[[20.0, 42.0, 7.0], [40.0, 70.0, -1.0]]]]),
    )
    [det] = model.postprocess(raw, batch)
    np.testing.assert_allclose(det.boxes, [[5.0, 4.0, 25.0, 24.0]])
    np.testing.assert_allclose(det.keypoints, [[[10.0, 5.0, 7.0], [20.0, 19.0, -1.0]]])


@pytest.fixture
def keypoint_model():
    return tiny_model(keypoints={"count": 4, "head_channels": 16, "head_convs": 2})


def test_keypoint_model_trains_and_detects(keypoint_model):
    batch, scenes = make_keypoint_batch()
    model = keypoint_model
    model.train()
    losses = model(batch)
    # Untrained, near-uniform heatmaps: cross-entropy ~ ln(56^2) = 8.05.
    assert 7.0 < losses["loss_keypoint"].item() < 9.5
    model.total_loss(losses).backward()
    head_grads = [p.grad for p in model.roi_heads.keypoint_head.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in head_grads)
    batch.gt_keypoints = None
    with pytest.raises(ValueError, match="gt_keypoints"):
        model(batch)
    [det] = model.detect([scenes[0][0]])
    assert det.keypoints is not None and det.keypoints.shape == (len(det), 4, 3)
    # Every keypoint lies inside (or on) its box.
    x, y = det.keypoints[..., 0], det.keypoints[..., 1]
    b = det.boxes[:, None]
    assert ((x >= b[..., 0] - 1e-3) & (x <= b[..., 2] + 1e-3)).all()
    assert ((y >= b[..., 1] - 1e-3) & (y <= b[..., 3] + 1e-3)).all()


def test_keypoint_head_under_bf16_autocast(keypoint_model):
    batch, _ = make_keypoint_batch()
    model = keypoint_model
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    assert losses["loss_keypoint"].dtype == torch.float32
    assert torch.isfinite(losses["loss_keypoint"])
    model.total_loss(losses).backward()
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = model.predict(batch)
    assert raw.keypoints.dtype == torch.float32 and torch.isfinite(raw.keypoints).all()


@pytest.mark.slow
def test_compiled_keypoint_head_gives_the_same_loss(keypoint_model):
    batch, _ = make_keypoint_batch()
    model = keypoint_model
    model.train()
    torch.manual_seed(0)
    ref = model(batch)
    model.roi_heads.bucket_rois = True
    model.roi_heads.keypoint_head.compile(dynamic=False)
    torch.manual_seed(0)
    out = model(batch)
    torch.testing.assert_close(out["loss_keypoint"], ref["loss_keypoint"], atol=1e-4, rtol=1e-4)
    model.total_loss(out).backward()
    model.eval()
    assert model.predict(batch).keypoints.shape[-2:] == (4, 3)


def test_targets_and_inference_round_trip():
    """A heatmap peaked at the target cell decodes to within half a cell of the keypoint."""
    g = torch.Generator().manual_seed(1)
    n, k = 6, 5
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 150 + 20
    rois = torch.cat([xy, xy + wh], 1)
    inside = xy[:, None] + torch.rand(n, k, 2, generator=g) * wh[:, None]
    kp = torch.cat([inside, torch.full((n, k, 1), 2.0)], -1)  # [n, k, 3], all visible
    targets, valid = keypoint_targets(rois[None], torch.arange(n)[None], kp[None], M)
    assert valid.all()
    logits = torch.zeros(n * k, M * M)
    logits[torch.arange(n * k), targets.reshape(-1)] = 10.0
    decoded = heatmaps_to_keypoints(logits.reshape(n, k, M, M), rois)
    cell = (wh / M)[:, None]  # [n, 1, 2] cell size in pixels
    err = (decoded[..., :2] - kp[..., :2]).abs()
    # Half a heatmap cell, plus half a pixel: the resized map's argmax is a whole pixel.
    assert (err <= cell / 2 + 0.5 + 1e-4).all(), (err - cell / 2).max()


def test_keypoint_model_without_mask_head_trains_and_detects():
    batch, scenes = make_keypoint_batch()
    model = tiny_model(
        keypoints={"count": 4, "head_channels": 8, "head_convs": 1, "pool_size": 7},
        roi_heads={"masks": False},
    )
    model.train()
    losses = model(batch)
    assert "loss_mask" not in losses and torch.isfinite(losses["loss_keypoint"])
    model.total_loss(losses).backward()
    [det] = model.detect([scenes[0][0]])
    assert det.masks.shape == (len(det), 0, 0) and det.keypoints.shape == (len(det), 4, 3)
