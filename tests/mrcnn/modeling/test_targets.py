import numpy as np
import torch
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.roi_heads import project_masks_on_boxes
from torchvision.ops import box_iou

from mrcnn.data.minimask import boxes_from_masks, make_mini_masks
from mrcnn.layers.matcher import Sampler
from mrcnn.modeling.anchors import AnchorGenerator
from mrcnn.modeling.targets import detection_targets, mask_targets_from_mini_masks, rpn_targets


def _realistic_masks(n, size, seed=0):
    """Ellipses, rotated rectangles and triangles: curved and slanted edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    masks = []
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        a, b = rng.uniform(0.08, 0.25, 2) * size
        t = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        kind = i % 3
        if kind == 0:
            m = (u / a) ** 2 + (v / b) ** 2 < 1
        elif kind == 1:
            m = (np.abs(u) < a) & (np.abs(v) < b)
        else:
            m = (v > -b) & (v < b - 2 * b * np.abs(u) / a)
        masks.append(m)
    return np.stack(masks)


def test_mini_mask_targets_agree_with_full_mask_targets():
    size, m, n = 256, 56, 24
    masks = _realistic_masks(n, size)
    boxes = torch.from_numpy(boxes_from_masks(masks))
    mini = torch.from_numpy(make_mini_masks(masks, boxes.numpy(), m))
    # RoIs: the gt boxes jittered so IoU stays around 0.5..1, as positives are.
    g = torch.Generator().manual_seed(0)
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    rois = boxes + (torch.rand(n, 4, generator=g) - 0.5) * 0.3 * wh
    assert (box_iou(rois, boxes).diag() > 0.4).all()
    ours = mask_targets_from_mini_masks(
        rois[None], torch.arange(n)[None], boxes[None], mini[None], 28
    )[0].bool()
    ref = project_masks_on_boxes(torch.from_numpy(masks), rois, torch.arange(n), 28) >= 0.5
    inter = (ours & ref).sum(dim=(1, 2)).float()
    union = (ours | ref).sum(dim=(1, 2)).float()
    iou = inter / union
    assert iou.mean() > 0.9, iou
    assert ref.float().mean() > 0.2  # the targets are real shapes, not empty


def test_rpn_targets_follow_faster_rcnn_labels():
    torch.manual_seed(0)
    anchors, _ = AnchorGenerator((8, 16, 32, 64, 128), (0.5, 1.0, 2.0))(128)
    gt = torch.tensor([[[10.0, 10, 50, 40], [60, 70, 120, 110], [0, 0, 0, 0]]])
    gt_valid = torch.tensor([[True, True, False]])
    t = rpn_targets(anchors, gt, gt_valid, Sampler(0.7, 0.3, 256, 0.5))
    ref = Matcher(0.7, 0.3, allow_low_quality_matches=True)(box_iou(gt[0, :2], anchors))
    idx = t.idx[0][t.valid[0]]
    pos = t.is_positive[0][t.valid[0]]
    assert (ref[idx[pos]] >= 0).all() and pos.sum() == (ref >= 0).sum()  # few positives: all
    assert (ref[idx[~pos]] == Matcher.BELOW_LOW_THRESHOLD).all()
    assert t.valid.sum() == 256
    expected = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(gt[0, ref[idx[pos]]], anchors[idx[pos]])
    torch.testing.assert_close(t.box_targets[0][t.valid[0]][pos], expected)


def _detection_targets(proposals, proposal_valid, gt, labels, gt_valid, minis):
    return detection_targets(
        proposals,
        proposal_valid,
        gt,
        labels,
        gt_valid,
        minis,
        Sampler(0.5, 0.5, 32, 0.25),
        box_weights=(10.0, 10.0, 5.0, 5.0),
        mask_size=28,
    )


def test_detection_targets_without_ground_truth_are_all_background():
    torch.manual_seed(0)
    props = torch.tensor([[[0.0, 0, 20, 20], [10, 10, 60, 60], [5, 5, 100, 90]]])
    t = _detection_targets(
        props,
        torch.ones(1, 3, dtype=torch.bool),
        torch.zeros(1, 2, 4),
        torch.zeros(1, 2, dtype=torch.long),
        torch.zeros(1, 2, dtype=torch.bool),
        torch.zeros(1, 2, 14, 14, dtype=torch.uint8),
    )
    assert t.valid.sum() == 3 and (t.labels == 0).all()
    assert not t.mask_valid.any() and (t.box_targets == 0).all()


def test_detection_targets_include_gt_boxes_and_mask_slots():
    torch.manual_seed(0)
    gt = torch.tensor([[[10.0, 10, 50, 40], [0, 0, 0, 0]]])
    minis = torch.ones(1, 2, 14, 14, dtype=torch.uint8)
    # No valid proposals at all: the gt box itself is the only positive.
    t = _detection_targets(
        torch.zeros(1, 5, 4),
        torch.zeros(1, 5, dtype=torch.bool),
        gt,
        torch.tensor([[3, 0]]),
        torch.tensor([[True, False]]),
        minis,
    )
    assert t.valid.sum() == 1 and t.labels[0, 0] == 3
    torch.testing.assert_close(t.rois[0, 0], gt[0, 0])
    torch.testing.assert_close(t.box_targets[0, 0], torch.zeros(4))
    # 7 candidates (5 proposals + 2 gt slots) -> 7 RoI slots, the first int(7 * 0.25) for masks.
    assert t.rois.shape == (1, 7, 4) and t.mask_targets.shape == (1, 1, 28, 28)
    assert t.mask_valid[0, 0]
    assert t.mask_targets[0, 0].all()  # an all-ones mini-mask gives an all-ones target
