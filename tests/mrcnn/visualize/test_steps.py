"""mrcnn.visualize.steps: three pictures per image from the model's own intermediates."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mrcnn.visualize import steps
from tests.mrcnn.scenes import make_batch, tiny_model


@pytest.mark.slow  # six matplotlib figures
def test_step_pictures_per_image() -> None:
    model = tiny_model(inference={"score_thresh": 0.0})
    batch, _ = make_batch(seeds=(0,))
    pictures = steps.step_pictures(model, batch, ("bg", "circle", "square"))
    assert len(pictures) == 1
    for pics in pictures:
        assert list(pics) == ["1_rpn", "2_detections", "3_masks"]
        for image in pics.values():
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert min(image.shape[:2]) > 300
            assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # drawn, not blank
    # with ground truth in the batch, a third row of mask targets makes the picture taller
    batch_gt, _ = make_batch(seeds=(0,))
    assert batch_gt.has_targets
    inputs = replace(batch_gt, gt_boxes=None, gt_labels=None, gt_mini_masks=None, gt_valid=None)
    [without] = steps.step_pictures(model, inputs)
    assert pictures[0]["3_masks"].shape[0] > without["3_masks"].shape[0]
    assert pictures[0]["1_rpn"].shape == without["1_rpn"].shape
    # with no detection at all the pictures still come (empty panels, counts of 0)
    model.roi_heads.detection_layer.score_thresh = 1.0
    [empty] = steps.step_pictures(model, batch)
    assert set(empty) == {"1_rpn", "2_detections", "3_masks"}


def test_mask_targets_are_the_training_targets_of_the_matched_ground_truth() -> None:
    """Each box gets the mask target of the ground truth it overlaps most, as training crops it:
    a box equal to a ground-truth box gets that instance's mini-mask resized to M x M."""
    batch, _ = make_batch(seeds=(0,), mini=28)
    valid = batch.gt_valid[0]
    gt = batch.gt_boxes[0][valid]
    far = torch.tensor([[0.0, 0.0, 2.0, 2.0]])  # overlaps nothing
    boxes = torch.cat([gt, far])
    targets, box_iou, matched = steps.mask_targets_for(batch, 0, boxes, 28)
    assert targets.shape == (len(boxes), 28, 28)
    assert matched.tolist() == [True] * len(gt) + [False]
    assert torch.allclose(box_iou[: len(gt)], torch.ones(len(gt)))
    minis = batch.gt_mini_masks[0][valid].float()
    agree = (targets[: len(gt)] == (minis >= 0.5).float()).float().mean(dim=(1, 2))
    assert (agree > 0.97).all(), agree  # the same mask, up to RoIAlign's sampling at the edges
    # a box over the left half of a ground truth gets the left half of its mask
    x1, y1, x2, y2 = gt[0].tolist()
    half = torch.tensor([[x1, y1, (x1 + x2) / 2, y2]])
    [left], _, _ = steps.mask_targets_for(batch, 0, half, 28)
    full = (minis[0] >= 0.5).float()
    left_half = torch.nn.functional.interpolate(full[None, None, :, :14], size=(28, 28))[0, 0]
    assert (left == left_half).float().mean() > 0.9


def test_titles_give_one_images_shapes_and_small_inputs_are_enlarged(monkeypatch) -> None:
    """Issue 22 item 10: a picture of one image of a batch of 2 says `boxes (20, 4)`, not the
    batch's `(2, 20, 4)`; a 128 px input is drawn on enlarged (captions sized for the panel)."""
    model = tiny_model(inference={"score_thresh": 0.0, "detections_per_img": 20})
    batch, _ = make_batch(seeds=(0, 1))
    titles, drawn = [], []
    panel, instances = steps._panel, steps._instances
    monkeypatch.setattr(
        steps, "_panel", lambda ax, im, t, *a: (titles.append(t), panel(ax, im, t, *a))
    )
    monkeypatch.setattr(
        steps, "_instances", lambda *a, **k: drawn.append(instances(*a, **k)) or drawn[-1]
    )
    with torch.no_grad():
        inference = model.inference_steps(batch)
    steps.draw_rpn_steps(batch, inference, 1)
    steps.draw_detection_steps(batch, inference, 1)
    steps.draw_mask_steps(batch, inference, 1)
    text = " ".join(titles)
    assert "(2, " not in text, text
    assert "boxes (20, 4)" in text and "proposals (100, 4)" in text
    assert "mask_probs (20, 28, 28)" in text
    assert drawn and all(d.shape[:2] == (512, 512) for d in drawn)  # 128 px x 4
