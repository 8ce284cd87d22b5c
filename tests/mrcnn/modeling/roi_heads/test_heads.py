"""RoIHeads: the losses it returns, which RoIs reach the mask head, and how `detect` fills its
[B, D] slots (valid first, zeros elsewhere), with and without padded RoI buckets, with the
keypoint and MaskIoU heads, and with the NMS function it is given (the export graph passes its
own)."""

from __future__ import annotations

import pytest
import torch

from mrcnn.inference.detection_layer import DetectionLayer
from mrcnn.layers.nms import batched_nms_top_k
from mrcnn.modeling.roi_heads.heads import RoIHeads
from mrcnn.modeling.roi_heads.keypoint_head import heatmaps_to_keypoints
from tests.mrcnn.scenes import S, make_batch, make_keypoint_batch, tiny_model

KP = {"count": 4, "head_channels": 8, "head_convs": 1}


def _features(model, batch):
    with torch.no_grad():
        return model.backbone(model.normalize(batch.images, batch.windows))


def _proposals(batch, r: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: proposal 0 is gt 0 moved by 1 px (IoU > 0.5: a positive), the other r - 1
    are 8 px boxes in the image's empty top-right corner (IoU 0 with both objects: negatives).
    -> proposals [B, r, 4], valid [B, r], the near box [B, 4]."""
    b = batch.gt_boxes.shape[0]
    near = batch.gt_boxes[:, 0] + torch.tensor([1.0, 1.0, 1.0, 1.0])
    k = torch.arange(r - 1, dtype=torch.float32)
    x1, y1 = 70 + (k % 6) * 8, (k // 6) * 8
    corner = torch.stack([x1, y1, x1 + 8, y1 + 8], 1)  # [r - 1, 4], all above y = 32
    proposals = torch.cat([near[:, None], corner.expand(b, -1, -1)], 1)
    return proposals, torch.ones(b, r, dtype=torch.bool), near


class _Recorder:
    """Stands in for a pooler or head: records each call's positional arguments, then calls
    the real one (other attributes, e.g. a pooler's `output_size`, are the real one's)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def __call__(self, *args, **kwargs):
        self.calls.append(args)
        return self.inner(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def _spy(monkeypatch, obj, name: str) -> list:
    """Record the positional arguments of every call of `obj.name` (still calling it)."""
    recorder = _Recorder(getattr(obj, name))
    monkeypatch.setattr(obj, name, recorder)
    return recorder.calls


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        ({}, {"loss_classifier", "loss_box", "loss_mask"}),
        ({"roi_heads": {"masks": False}}, {"loss_classifier", "loss_box"}),
        (
            {"mask_scoring": True, "keypoints": KP},
            {"loss_classifier", "loss_box", "loss_mask", "loss_mask_iou", "loss_keypoint"},
        ),
    ],
)
def test_losses_have_one_finite_scalar_per_head(overrides, keys):
    batch, _ = make_keypoint_batch()
    model = tiny_model(**overrides).train()
    proposals, valid, _ = _proposals(batch)
    torch.manual_seed(0)
    losses = model.roi_heads.losses(_features(model, batch), S, proposals, valid, batch)
    assert set(losses) == keys
    for k, v in losses.items():
        assert v.shape == () and torch.isfinite(v) and v > 0, k


def test_only_the_positive_rois_reach_the_mask_head(monkeypatch):
    """Positives per image: its two gt boxes (added to the proposals) and the 1 px shifted box;
    the 19 corner boxes are negatives and must not be pooled for, nor run through, the mask
    head (5 mask slots per image hold the 3 positives and 2 negatives)."""
    batch, _ = make_batch()
    model = tiny_model().train()
    heads = model.roi_heads
    proposals, valid, near = _proposals(batch)
    pooled_rois = _spy(monkeypatch, heads, "mask_pooler")
    head_inputs = _spy(monkeypatch, heads.mask_head, "forward")
    torch.manual_seed(0)
    heads.losses(_features(model, batch), S, proposals, valid, batch)

    [(_, rois, _)] = pooled_rois
    assert rois.shape == (6, 5)
    for i in range(2):
        got = sorted(map(tuple, rois[rois[:, 0] == i, 1:].tolist()))
        want = sorted(map(tuple, [*batch.gt_boxes[i, :2].tolist(), near[i].tolist()]))
        assert got == want, i
    [(x,)] = head_inputs
    assert x.shape[0] == 6


def test_losses_with_no_positives_keep_the_mask_head_in_the_graph():
    """An image set without ground truth: the mask head still runs on one (dummy) RoI, so its
    parameters get a gradient (DDP), and the mask loss is exactly 0."""
    batch, _ = make_batch()
    batch.gt_valid[:] = False
    model = tiny_model().train()
    proposals, valid, _ = _proposals(batch)
    features = model.backbone(model.normalize(batch.images, batch.windows))
    torch.manual_seed(0)
    losses = model.roi_heads.losses(features, S, proposals, valid, batch)
    assert losses["loss_mask"].item() == 0 and losses["loss_box"].item() == 0
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.roi_heads.mask_head.parameters())


def test_losses_need_ground_truth():
    batch, _ = make_batch()
    proposals, valid, _ = _proposals(batch)
    batch.gt_boxes = None
    model = tiny_model().train()
    with pytest.raises(ValueError, match="ground truth"):
        model.roi_heads.losses(_features(model, batch), S, proposals, valid, batch)


# ---- detect -------------------------------------------------------------------------------

# Image 0: three proposals, p1 large enough to pool from P3 (the others from P2), so the heads'
# level order differs from slot order; image 1: R = 4, the last invalid.
PROPOSALS = torch.tensor(
    [
        [[10.0, 10, 40, 40], [4, 4, 124, 124], [20, 80, 50, 120], [70, 5, 120, 50]],
        [[30.0, 30, 70, 70], [0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 0, 0]],
    ]
)
PROPOSAL_VALID = torch.tensor([[True, True, True, True], [True, True, True, False]])
WINDOWS = torch.tensor([[0.0, 0, S, S]] * 2)


def _scripted_model(image1_detects: bool = False, **overrides):
    """A tiny model whose box head is replaced by hand-set outputs: zero deltas (each candidate
    box is its proposal) and class logits per proposal:
        image 0: p0 class 1 (logit 4), p1 class 2 (logit 3), p2 class 1 (logit 2), p3 background
        image 1: everything background -> no detection at all (`image1_detects`: p0 class 2)."""
    model = tiny_model(**overrides).eval()
    heads = model.roi_heads
    heads.detection_layer = DetectionLayer(score_thresh=0.3, nms_thresh=0.5, detections_per_img=5)
    logits = torch.zeros(2, 4, 3)
    logits[0, 0, 1], logits[0, 1, 2], logits[0, 2, 1], logits[0, 3, 0] = 4.0, 3.0, 2.0, 4.0
    logits[1, :, 0] = 4.0
    if image1_detects:
        logits[1, 0] = torch.tensor([0.0, 0.0, 4.0])

    def box_predictions(features, image_size, proposals):
        return logits.reshape(-1, 3), torch.zeros(8, 12)

    heads.box_predictions = box_predictions
    return model, logits


def _expected_scores(logits):
    p = logits.softmax(-1)
    return [p[0, 0, 1].item(), p[0, 1, 2].item(), p[0, 2, 1].item()]


def test_detect_fills_valid_slots_first_and_zeros_the_rest():
    batch, _ = make_batch()
    model, logits = _scripted_model()
    heads = model.roi_heads
    features = _features(model, batch)
    raw = heads.detect(features, S, PROPOSALS, PROPOSAL_VALID, WINDOWS)

    assert raw.boxes.shape == (2, 5, 4) and raw.mask_probs.shape == (2, 5, 28, 28)
    assert raw.valid.tolist() == [[True, True, True, False, False], [False] * 5]
    torch.testing.assert_close(raw.boxes[0, :3], PROPOSALS[0, :3])
    assert raw.labels.tolist() == [[1, 2, 1, 0, 0], [0] * 5]
    torch.testing.assert_close(raw.scores[0, :3], torch.tensor(_expected_scores(logits)))
    # Empty slots, and the image without detections, are all zeros.
    for field in (raw.boxes, raw.scores, raw.mask_probs):
        assert not field[~raw.valid].any()
    assert raw.keypoints is None and raw.mask_scores is None
    # Each valid slot's mask is the mask head on that box alone, for its label.
    for j in range(3):
        roi = torch.cat([torch.zeros(1), PROPOSALS[0, j]])[None]
        pooled, _ = heads.mask_pooler(features, roi, S)
        ref = heads.mask_head.label_probs(pooled, raw.labels[0, j : j + 1])[0]
        torch.testing.assert_close(raw.mask_probs[0, j], ref, atol=1e-5, rtol=1e-5)
        assert ref.std() > 0  # not a constant a wrong slot could also hold


def test_detect_without_any_detection():
    batch, _ = make_batch()
    model, _ = _scripted_model(mask_scoring=True, keypoints=KP)
    valid = torch.zeros_like(PROPOSAL_VALID)  # no proposal at all
    raw = model.roi_heads.detect(_features(model, batch), S, PROPOSALS, valid, WINDOWS)
    assert not raw.valid.any()
    for field in (raw.boxes, raw.scores, raw.labels, raw.mask_probs, raw.keypoints):
        assert not field.any()
    assert raw.mask_scores.shape == (2, 5) and not raw.mask_scores.any()


def test_detect_without_mask_head_returns_boxes_only():
    batch, _ = make_batch()
    model, _ = _scripted_model(roi_heads={"masks": False})
    raw = model.roi_heads.detect(_features(model, batch), S, PROPOSALS, PROPOSAL_VALID, WINDOWS)
    assert raw.valid.sum() == 3 and raw.mask_probs is None


@pytest.mark.parametrize("overrides", [{}, {"mask_scoring": True, "keypoints": KP}])
def test_bucketed_rois_give_the_same_detections(overrides):
    """4 detections + the dummy RoI = 5 heads' rows, padded to 8 with `bucket_rois`: the
    padding goes to the dummy slot and changes nothing."""
    batch, _ = make_batch()
    model, _ = _scripted_model(image1_detects=True, **overrides)
    heads = model.roi_heads
    features = _features(model, batch)
    ref = heads.detect(features, S, PROPOSALS, PROPOSAL_VALID, WINDOWS)
    heads.bucket_rois = True
    out = heads.detect(features, S, PROPOSALS, PROPOSAL_VALID, WINDOWS)
    for name in ("boxes", "scores", "labels", "valid", "mask_probs", "keypoints", "mask_scores"):
        a, b = getattr(ref, name), getattr(out, name)
        if a is None:
            assert b is None, name
        else:
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=name)


def test_bucketed_rois_pad_the_mask_head_batch_to_a_power_of_two(monkeypatch):
    batch, _ = make_batch()
    model, _ = _scripted_model(image1_detects=True)
    heads = model.roi_heads
    pooled_rois = _spy(monkeypatch, heads, "mask_pooler")
    raw = heads.detect(_features(model, batch), S, PROPOSALS, PROPOSAL_VALID, WINDOWS)
    assert raw.valid.sum() == 4
    heads.bucket_rois = True
    heads.detect(_features(model, batch), S, PROPOSALS, PROPOSAL_VALID, WINDOWS)
    [(_, plain, _), (_, bucketed, _)] = pooled_rois
    dummy = [0.0, 0.0, 0.0, 1.0, 1.0]  # image 0, a 1 px box
    assert plain.shape == (5, 5) and plain[4].tolist() == dummy
    assert bucketed.shape == (8, 5) and bucketed[4:].tolist() == [dummy] * 4
    torch.testing.assert_close(bucketed[:4], plain[:4])


def test_bucketed_losses_equal_unbucketed(monkeypatch):
    batch, _ = make_keypoint_batch()
    model = tiny_model(mask_scoring=True, keypoints=KP).train()
    proposals, valid, _ = _proposals(batch)
    features = _features(model, batch)
    rows = _spy(monkeypatch, model.roi_heads.mask_head, "forward")
    torch.manual_seed(0)
    ref = model.roi_heads.losses(features, S, proposals, valid, batch)
    model.roi_heads.bucket_rois = True  # 6 positives -> 8 rows, 2 of them masked out
    torch.manual_seed(0)
    out = model.roi_heads.losses(features, S, proposals, valid, batch)
    assert [x.shape[0] for (x,) in rows] == [6, 8]
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], atol=1e-5, rtol=1e-5, msg=k)


def test_keypoint_and_mask_iou_heads_fill_their_fields():
    batch, _ = make_batch()
    model, _ = _scripted_model(mask_scoring=True, keypoints=KP)
    heads = model.roi_heads
    with torch.no_grad():  # a MaskIoU head predicting IoU 0.5 for class 1, 0.8 for class 2
        heads.mask_iou_head.iou.weight.zero_()
        heads.mask_iou_head.iou.bias.copy_(torch.tensor([0.0, 0.5, 0.8]))
    features = _features(model, batch)
    raw = heads.detect(features, S, PROPOSALS, PROPOSAL_VALID, WINDOWS)
    assert raw.keypoints.shape == (2, 5, 4, 3) and raw.mask_scores.shape == (2, 5)
    factor = torch.tensor([0.5, 0.8, 0.5])
    torch.testing.assert_close(raw.mask_scores[0, :3], raw.scores[0, :3] * factor)
    assert not raw.mask_scores[~raw.valid].any() and not raw.keypoints[~raw.valid].any()
    for j in range(3):
        box = PROPOSALS[0, j]
        pooled, _ = heads.keypoint_pooler(features, torch.cat([torch.zeros(1), box])[None], S)
        ref = heatmaps_to_keypoints(heads.keypoint_head(pooled), box[None])[0]
        torch.testing.assert_close(raw.keypoints[0, j], ref, atol=1e-4, rtol=1e-5)
    # extra_heads=False (what the exported graph asks for): boxes and masks only.
    plain = heads.detect(features, S, PROPOSALS, PROPOSAL_VALID, WINDOWS, extra_heads=False)
    assert plain.keypoints is None and plain.mask_scores is None
    torch.testing.assert_close(plain.mask_probs, raw.mask_probs)


def test_detect_uses_the_nms_it_is_given():
    """The exported graph passes its static NMS: whatever it keeps is what `detect` returns.
    Here an NMS that keeps one candidate per image, the lowest-scored one that passed."""
    batch, _ = make_batch()
    model, logits = _scripted_model()
    seen = []

    def worst_only(boxes, scores, groups, num_groups, candidates, iou_thresh, k):
        seen.append((groups, num_groups, iou_thresh, k))
        masked = torch.where(candidates, scores, torch.full_like(scores, 2.0))
        index = torch.zeros(scores.shape[0], k, dtype=torch.int64)
        valid = torch.zeros(scores.shape[0], k, dtype=torch.bool)
        index[:, 0] = masked.argmin(1)
        valid[:, 0] = candidates.any(1)
        return index, valid

    raw = model.roi_heads.detect(
        _features(model, batch), S, PROPOSALS, PROPOSAL_VALID, WINDOWS, nms=worst_only
    )
    assert seen == [(None, 2, 0.5, 5)]  # interleaved (proposal, class) groups, K - 1 = 2
    assert raw.valid.tolist() == [[True, False, False, False, False], [False] * 5]
    torch.testing.assert_close(raw.boxes[0, 0], PROPOSALS[0, 2])  # p2: class 1, logit 2
    assert raw.labels[0, 0] == 1
    assert raw.scores[0, 0].item() == pytest.approx(_expected_scores(logits)[2])
    # ... and the default is the eager batched NMS.
    default = model.roi_heads.detect(
        _features(model, batch), S, PROPOSALS, PROPOSAL_VALID, WINDOWS, nms=batched_nms_top_k
    )
    assert default.valid.sum() == 3


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ({"mask_head": None, "mask_pooler": None}, "MaskIoU head needs a mask head"),
        ({"mask_pooler": None}, "mask head and its pooler"),
        ({"keypoint_pooler": None}, "keypoint head and its pooler"),
    ],
)
def test_heads_without_their_parts_are_refused(drop, message):
    h = tiny_model(mask_scoring=True, keypoints=KP).roi_heads
    parts = {
        "box_head": h.box_head,
        "box_pooler": h.box_pooler,
        "box_weights": h.box_weights,
        "sampler": h.sampler,
        "detection_layer": h.detection_layer,
        "mask_head": h.mask_head,
        "mask_pooler": h.mask_pooler,
        "keypoint_head": h.keypoint_head,
        "keypoint_pooler": h.keypoint_pooler,
        "mask_iou_head": h.mask_iou_head,
    }
    with pytest.raises(ValueError, match=message):
        RoIHeads(**{**parts, **drop})
