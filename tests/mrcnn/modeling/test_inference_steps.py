"""MaskRCNN.inference_steps: each stage's own output, consistent with `predict`."""

from __future__ import annotations

import torch

from mrcnn.layers import box_coder
from tests.mrcnn.scenes import make_batch, tiny_model


def test_steps_agree_with_predict() -> None:
    torch.manual_seed(0)
    model = tiny_model(inference={"score_thresh": 0.0})
    batch, _ = make_batch(seeds=(0, 1))
    batch = batch.to("cpu")
    steps = model.inference_steps(batch)
    raw = model.predict(batch)
    for name in ("boxes", "scores", "labels", "valid", "mask_probs"):
        assert torch.equal(getattr(steps.detections, name), getattr(raw, name)), name
    b = len(batch)
    a = sum(steps.anchors_per_level)
    assert steps.anchors.shape == (a, 4) and steps.objectness.shape == (b, a)
    assert steps.rpn_deltas.shape == (b, a, 4)
    assert model.training  # the mode is restored

    # proposals: the best-scored anchors, refined; sorted by score, inside the image window
    valid = steps.proposal_valid
    assert valid.any(dim=1).all()
    scores = steps.proposal_scores
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    best = steps.objectness.argmax(dim=1)
    refined = box_coder.decode(
        steps.rpn_deltas[torch.arange(b), best], steps.anchors[best], box_coder.RPN_BOX_WEIGHTS
    )
    refined = box_coder.clip_to_windows(refined[:, None], batch.windows)[:, 0]
    torch.testing.assert_close(steps.proposals[:, 0], refined)  # the top anchor survives NMS
    torch.testing.assert_close(scores[:, 0], steps.objectness.max(dim=1).values.sigmoid())

    # detections: each one is a candidate of the detection layer (same box, score, label)
    r, k1 = steps.proposals.shape[1], model.num_classes - 1
    assert steps.candidate_boxes.shape == (b, r * k1, 4)
    for i in range(b):
        ok = steps.candidate_ok[i]
        assert int(ok.sum()) >= int(raw.valid[i].sum()) > 0
        keep = raw.valid[i]
        for box, score, label in zip(
            raw.boxes[i][keep], raw.scores[i][keep], raw.labels[i][keep], strict=True
        ):
            same = (steps.candidate_boxes[i] == box).all(dim=1) & ok
            same &= (steps.candidate_scores[i] == score) & (steps.candidate_labels == label)
            assert same.any()
