"""mrcnn.visualize: right shapes, pixels change where the instances are (and not elsewhere)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mrcnn import visualize as vis


def _scene():
    image = np.full((64, 80, 3), 100, np.uint8)
    masks = np.zeros((2, 64, 80), bool)
    masks[0, 10:30, 10:30] = True
    masks[1, 35:60, 40:75] = True
    boxes = np.array([[10, 10, 30, 30], [40, 35, 75, 60]], np.float32)
    return image, masks, boxes


def test_draw_instances_changes_pixels_only_at_instances():
    image, masks, boxes = _scene()
    out = vis.draw_instances(
        image,
        boxes,
        masks,
        labels=[1, 2],
        class_names=["bg", "a", "b"],
        scores=[0.9, 0.5],
        show_text=False,
    )
    assert out.shape == image.shape and out.dtype == np.uint8
    changed = (out != image).any(axis=2)
    assert changed[masks[0]].all() and changed[masks[1]].all()
    assert not changed[~masks.any(0)].any()  # boxes hug the masks here: nothing outside
    assert (image == 100).all()  # input untouched


def test_draw_instances_boxes_only_and_text():
    image, _, boxes = _scene()
    out = vis.draw_instances(image, boxes, None, labels=[1, 2], class_names=["bg", "a", "b"])
    changed = (out != image).any(axis=2)
    assert changed[10, 10:30].all() and changed[35, 40:75].all()  # top edges of the boxes
    assert not changed[20:28, 20:28].any()  # box interior (below the caption) untouched
    assert not changed[0:5, 0:5].any()
    masks_only = vis.draw_instances(image, None, _scene()[1])
    assert (masks_only != image).any(axis=2)[_scene()[1][0]].all()


def test_mini_mask_round_trip_picture():
    image, masks, boxes = _scene()
    mini = np.ones((28, 28), bool)
    out = vis.draw_mini_mask_round_trip(image, boxes[0], mini, masks[0], title="x")
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
    assert out.shape[1] > 3 * out.shape[0]  # four panels side by side


def test_draw_anchors_colours_by_label():
    image = np.zeros((128, 128, 3), np.uint8)  # the legend sits in the top-left corner
    anchors = np.array([[40, 60, 60, 80], [70, 70, 120, 120], [10, 90, 30, 120]], np.float32)
    out = vis.draw_anchors(image, anchors, np.array([1, 0, -1]))
    assert tuple(out[70, 40]) == (40, 230, 80)  # positive: green, left edge
    assert tuple(out[95, 70]) == (230, 60, 60)  # negative: red, left edge
    assert tuple(out[100, 10]) == (70, 150, 255)  # neutral: blue, left edge
    assert not out[85:88, 85:88].any()  # inside the negative anchor: untouched
    per_level = vis.draw_anchors_per_level(image, anchors, [2, 1], per_level=1)
    assert per_level.shape == image.shape and per_level.any()


def test_class_distribution_plot():
    fig = vis.new_figure(4, 3)
    vis.plot_class_distribution(
        fig.add_subplot(1, 1, 1), {"train": {"a": 5, "b": 2}, "val": {"a": 1, "b": 0}}
    )
    out = vis.figure_to_array(fig)
    assert out.shape == (300, 400, 3) and out.dtype == np.uint8
    assert (out != 255).any()


def test_image_grid():
    tiles = [np.full((4, 5, 3), k, np.uint8) for k in range(5)]
    grid = vis.image_grid(tiles, cols=3, gap=1)
    assert grid.shape == (9, 17, 3)
    assert (grid[5:9, 6:11] == 4).all() and (grid[5:9, 12:] == 255).all()


def test_draw_keypoints_only_where_labelled():
    image, _, boxes = _scene()
    kps = np.zeros((2, 2, 3), np.float32)
    kps[0] = [[20, 20, 2], [15, 25, 0]]  # second unlabelled: not drawn
    kps[1] = [[60, 50, 1], [0, 0, 0]]
    no_masks = np.zeros((2, 0, 0), bool)  # a model without a mask head
    out = vis.draw_instances(image, boxes, no_masks, keypoints=kps, show_text=False)
    changed = (out != image).any(axis=2)
    assert changed[20, 20] and changed[50, 60]  # the dots
    assert not changed[25, 15] and not changed[22:28, 22:28].any()
    # Detections: the third value is a score, drawn above keypoint_thresh only.
    out = vis.draw_instances(image, boxes, keypoints=kps, keypoint_thresh=1.5, show_text=False)
    changed = (out != image).any(axis=2)
    assert changed[20, 20] and not changed[50, 60]


def test_boxes_and_captions_grow_with_the_image():
    """Issue 22 item 10: a 1 px box on a 4000 x 3000 photo vanishes when the photo is shown
    scaled down; lines and captions keep their share of the picture instead."""
    image = np.full((3000, 4000, 3), 100, np.uint8)
    box = np.array([[1000, 800, 2500, 2200]], np.float32)
    out = vis.draw_instances(image, box, labels=[1], class_names=["bg", "person"])
    column = np.any(out[:, 1800] != 100, axis=1)  # the box's top edge crosses x = 1800 at y 800
    rows = np.flatnonzero(column[700:900]) + 700
    assert rows.min() == 800 and len(rows) >= 5  # several px thick (1 px before)
    shown = np.asarray(Image.fromarray(out).resize((400, 300), Image.BILINEAR)).astype(int)
    assert np.abs(shown[80, 180] - 100).max() > 30  # still visible at a tenth of the size
    small = vis.draw_instances(np.full((128, 128, 3), 100, np.uint8), box / 25, labels=[1])
    assert np.any(small[32:34, 60] != 100, axis=1).sum() == 1  # thumbnails keep 1 px lines
    assert vis.drawing_sizes(128, 128) == (1, 10) and vis.drawing_sizes(3000, 4000) == (6, 75)


def test_draw_anchors_legend_names_the_ground_truth():
    """The white ground-truth boxes have their legend line, as the anchor kinds do."""
    image = np.zeros((256, 256, 3), np.uint8)
    anchors = np.array([[100, 100, 140, 140]], np.float32)
    labels = np.array([vis.POSITIVE])
    gt = np.array([[150, 150, 200, 200]], np.float32)
    with_gt = vis.draw_anchors(image, anchors, labels, gt_boxes=gt)
    without = vis.draw_anchors(image, anchors, labels)
    legend = (slice(0, 90), slice(0, 120))  # the top-left corner, away from every box
    white = np.all(with_gt[legend] >= 200, axis=-1)  # the legend's white text (antialiased)
    assert white.sum() > 20 and not np.all(without[legend] >= 200, axis=-1).any()
