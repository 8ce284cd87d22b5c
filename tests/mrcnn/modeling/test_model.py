import doctest

import numpy as np
import pytest
import torch

from mrcnn import presets
from mrcnn.inference.grid_masks import GridMasks
from mrcnn.modeling.model import MaskRCNN, build_model
from mrcnn.structures import Batch, RawDetections
from tests.mrcnn.scenes import S, make_batch, tiny_model


def _mask_iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_overfits_two_images():
    """Loss falls by > 10x and the detections recover both objects of both images."""
    batch, scenes = make_batch()
    model = tiny_model()
    model.train()
    steps = 100
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    history = []
    for _ in range(steps):
        loss = model.total_loss(model(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.append(loss.item())
    assert np.mean(history[:3]) / np.mean(history[-3:]) > 10, history
    dets = model.detect([img for img, _, _ in scenes])
    for det, (_, masks, labels) in zip(dets, scenes, strict=True):
        for m, label in zip(masks, labels, strict=True):
            best = max(range(len(det)), key=lambda j: _mask_iou(det.masks[j], m))
            assert det.labels[best] == label
            assert det.scores[best] > 0.5
            assert _mask_iou(det.masks[best], m) > 0.8


def test_training_step_with_images_without_ground_truth(batch):
    batch.gt_valid[:] = False
    model = tiny_model()
    model.train()
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"] == 0 and losses["loss_mask"] == 0
    model.total_loss(losses).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)  # every parameter in the graph (DDP-safe)


def test_single_class_model_trains(batch):
    """K = 2 (background + one class): finite losses, and 5 AdamW steps cut the loss by > 20%
    with the classifier and mask terms each falling (seen: total 2.11 -> 1.32, classifier
    0.70 -> 0.09, mask 0.69 -> 0.58)."""
    batch.gt_labels[batch.gt_valid] = 1
    model = tiny_model(num_classes=2)
    assert model.roi_heads.box_head.cls_score.out_features == 2
    assert model.roi_heads.mask_head.logits.out_channels == 2
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(5):
        losses = model(batch)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        loss = model.total_loss(losses)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        history.append({k: v.item() for k, v in losses.items()} | {"total": loss.item()})
    first, last = history[0], history[-1]
    assert last["total"] < 0.8 * first["total"], history
    assert last["loss_classifier"] < first["loss_classifier"], history
    assert last["loss_mask"] < first["loss_mask"], history
    raw = model.predict(batch)
    assert set(raw.labels[raw.valid].tolist()) <= {1}


def test_tiny_and_huge_boxes(batch):
    batch.gt_boxes[0, 0] = torch.tensor([10.0, 10, 12, 11])  # 2 x 1 px
    batch.gt_boxes[0, 1] = torch.tensor([0.0, 0, S, S])  # the whole image
    model = tiny_model()
    model.train()
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())


def test_detect_maps_back_to_original_size_for_non_square_images():
    model = tiny_model(inference={"score_thresh": 0.0, "detections_per_img": 10})
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 255, (60, 200, 3), dtype=np.uint8),
        rng.integers(0, 255, (300, 90, 3), dtype=np.uint8),
    ]
    dets = model.detect(images)
    for det, im in zip(dets, images, strict=True):
        h, w = im.shape[:2]
        assert det.masks.shape[1:] == (h, w) and det.masks.dtype == bool
        assert len(det) > 0
        assert (det.boxes[:, [0, 2]] <= w).all() and (det.boxes[:, [1, 3]] <= h).all()
        assert (det.boxes >= 0).all() and (det.labels >= 1).all()
        assert det.boxes.dtype == np.float32 and det.labels.dtype == np.int64


def test_postprocess_maps_boxes_and_masks_to_original_pixels():
    """Padded frame -> original image: subtract the window's corner, divide by the scale, clip;
    invalid slots dropped; masks pasted at the original resolution."""
    model = tiny_model()
    batch = Batch(
        images=torch.zeros(1, 3, S, S, dtype=torch.uint8),
        windows=torch.tensor([[10.0, 20, 74, 84]]),  # (y1, x1, y2, x2)
        scales=torch.tensor([2.0]),
        original_sizes=torch.tensor([[32, 32]]),
        image_ids=torch.tensor([7]),
    )
    raw = RawDetections(
        boxes=torch.tensor([[[24.0, 16, 60, 60], [0, 0, 1, 1], [30, 40, 120, 120]]]),
        scores=torch.tensor([[0.9, 0.5, 0.4]]),
        labels=torch.tensor([[2, 1, 1]]),
        valid=torch.tensor([[True, False, True]]),
        mask_probs=torch.ones(1, 3, 28, 28),
    )
    [det] = model.postprocess(raw, batch)
    np.testing.assert_allclose(det.boxes, [[2.0, 3, 20, 25], [5, 15, 32, 32]])  # 2nd clipped
    np.testing.assert_allclose(det.scores, [0.9, 0.4])
    assert det.labels.tolist() == [2, 1]
    assert det.masks.shape == (2, 32, 32) and det.masks.dtype == bool
    # the box (2, 3, 20, 25) grows by 30/28 when pasted (columns 1..20, rows 2..25), whose
    # outermost pixels sample mostly the zero border (0.25 and 0.125 < 0.5): 2..19 and 3..24.
    cols, rows = det.masks[0].any(0).nonzero()[0], det.masks[0].any(1).nonzero()[0]
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (2, 19, 3, 24)
    assert det.masks[0].sum() == 18 * 22
    # grid_masks=True: the same masks kept as the grid and boxes (what COCO evaluation encodes)
    [grid] = model.postprocess(raw, batch, grid_masks=True)
    assert isinstance(grid.masks, GridMasks) and grid.masks.shape == (2, 32, 32)
    np.testing.assert_array_equal(grid.masks.full(), det.masks)
    np.testing.assert_array_equal(grid.boxes, det.boxes)
    np.testing.assert_array_equal(grid.masks.boxes, det.boxes)


def test_class_docstring_example_runs():
    finder = doctest.DocTestFinder(recurse=False)
    [test] = finder.find(MaskRCNN, "MaskRCNN", globs={})
    assert test.examples
    result = doctest.DocTestRunner().run(test)
    assert result.failed == 0 and result.attempted == len(test.examples)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([], "no images"),
        (np.zeros((10, 10, 3), np.uint8), "list of images"),
        ([np.zeros((10, 10, 3), np.float32)], "dtype float32"),
        ([np.zeros((10, 10), np.uint8)], "expected H x W x 3"),
        ([np.zeros((10, 10, 4), np.uint8)], "4 channels"),
        ([np.zeros((0, 10, 3), np.uint8)], "empty"),
        (["image.png"], "numpy uint8"),
    ],
)
def test_detect_rejects_bad_input(images, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model.detect(images)


def test_wrong_batch_size_raises(batch):
    model = tiny_model(input={"image_size": 256})
    with pytest.raises(ValueError, match="expects 256"):
        model(batch)


def test_bf16_autocast_and_channels_last_on_cpu(batch):
    model = tiny_model()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    model.total_loss(losses).backward()
    model.eval()
    ref = model.predict(batch)
    model.use_channels_last()
    out = model.predict(batch)
    torch.testing.assert_close(out.scores, ref.scores, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compiled_static_parts_give_the_same_losses(batch):
    model = tiny_model()
    model.train()
    torch.manual_seed(0)
    ref = model(batch)
    model.compile_static()
    torch.manual_seed(0)
    out = model(batch)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], atol=1e-4, rtol=1e-4)
    model.total_loss(out).backward()


def test_build_every_backbone_arch():
    for arch in ["resnet18", "resnet34", "resnet50", "resnext50_32x4d"]:
        cfg = presets.shapes_small(backbone={"arch": arch, "width_multiplier": 0.25})
        model = build_model(cfg)
        feats = model.backbone(torch.zeros(1, 3, S, S))
        assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
