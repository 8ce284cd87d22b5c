import torch
from torchvision.ops import box_iou

from mrcnn.layers.matcher import BELOW_LOW, BETWEEN, batched_iou, match, sample_balanced


def test_batched_iou_matches_torchvision():
    a = torch.tensor([[[0.0, 0, 10, 10], [5, 5, 15, 15]]])
    b = torch.tensor([[[0.0, 0, 10, 10], [10, 10, 20, 20], [0, 0, 5, 5]]])
    torch.testing.assert_close(batched_iou(a, b)[0], box_iou(a[0], b[0]))


def test_match_thresholds_low_quality_and_padding():
    # 2 gt slots (second is padding) x 4 predictions.
    iou = torch.tensor([[[0.8, 0.5, 0.2, 0.6], [0.9, 0.9, 0.9, 0.9]]])
    valid = torch.tensor([[True, False]])
    m = match(iou, valid, fg_thresh=0.7, bg_thresh=0.3, allow_low_quality=False)
    assert m.tolist() == [[0, BETWEEN, BELOW_LOW, BETWEEN]]
    iou = torch.tensor([[[0.4, 0.5, 0.2, 0.5]]])
    m = match(iou, torch.tensor([[True]]), 0.7, 0.3, allow_low_quality=True)
    # The gt's best predictions (a tie at 0.5) become positives although below 0.7.
    assert m.tolist() == [[BETWEEN, 0, BELOW_LOW, 0]]


def test_match_no_ground_truth_is_all_negative():
    iou = torch.zeros(1, 3, 5)
    m = match(iou, torch.zeros(1, 3, dtype=torch.bool), 0.7, 0.3, allow_low_quality=True)
    assert (m == BELOW_LOW).all()


def test_gt_overlapping_nothing_is_not_forced_on_predictions():
    iou = torch.zeros(1, 1, 4)
    m = match(iou, torch.ones(1, 1, dtype=torch.bool), 0.7, 0.3, allow_low_quality=True)
    assert (m == BELOW_LOW).all()


def test_sample_balanced_counts_and_order():
    torch.manual_seed(0)
    pos = torch.zeros(2, 1000, dtype=torch.bool)
    neg = torch.zeros(2, 1000, dtype=torch.bool)
    pos[0, :300] = True  # many positives: capped at 25% of 64 = 16
    neg[0, 300:] = True
    pos[1, :5] = True  # few positives: negatives fill up to 64
    neg[1, 5:] = True
    idx, is_pos, valid = sample_balanced(pos, neg, 64, 0.25)
    assert idx.shape == (2, 64)
    assert is_pos[0].sum() == 16 and valid[0].all()
    assert is_pos[1].sum() == 5 and valid[1].all()
    assert is_pos[0, :16].all() and not is_pos[0, 16:].any()  # positives first
    assert (idx[0, :16] < 300).all() and (idx[0, 16:] >= 300).all()
    assert len(set(idx[1].tolist())) == 64  # no repeats


def test_sample_balanced_too_few_candidates_marks_slots_invalid():
    pos = torch.tensor([[True, False, False, False, False]])
    neg = torch.tensor([[False, True, False, False, False]])
    idx, is_pos, valid = sample_balanced(pos, neg, 4, 0.5)
    assert valid.tolist() == [[True, True, False, False]]
    assert idx[0, :2].tolist() == [0, 1] and is_pos[0].tolist() == [True, False, False, False]
