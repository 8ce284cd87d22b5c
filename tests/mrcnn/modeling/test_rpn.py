import torch
from torchvision.models.detection.rpn import RegionProposalNetwork as TVRPN
from torchvision.models.detection.rpn import RPNHead as TVHead

from mrcnn.modeling.anchors import AnchorGenerator
from mrcnn.modeling.rpn import RPNHead, propose

S = 128


def _inputs(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    gen = AnchorGenerator((8, 16, 32, 64, 128), (0.5, 1.0, 2.0))
    anchors, counts = gen(S)
    objectness = torch.randn(b, anchors.shape[0], generator=g) * 3
    deltas = torch.randn(b, anchors.shape[0], 4, generator=g) * 0.3
    return anchors, counts, objectness, deltas


def test_head_flattens_in_anchor_order():
    torch.manual_seed(0)
    head = RPNHead(8, 3)
    feats = [torch.randn(2, 8, s, s) for s in (32, 16, 8, 4, 2)]
    logits, deltas = head(feats)
    assert logits.shape == (2, 3 * sum(s * s for s in (32, 16, 8, 4, 2)))
    assert deltas.shape == (*logits.shape, 4)
    # Anchor a of cell (row 1, col 2) on P2 is entry (1 * 32 + 2) * 3 + a.
    t = torch.relu(head.conv(feats[0]))
    raw_logit = head.cls_logits(t)[0, 1, 1, 2]
    raw_delta = head.bbox_pred(t)[0, 4:8, 1, 2]
    torch.testing.assert_close(logits[0, (1 * 32 + 2) * 3 + 1], raw_logit)
    torch.testing.assert_close(deltas[0, (1 * 32 + 2) * 3 + 1], raw_delta)


def test_proposals_match_torchvision_per_image_loop():
    anchors, counts, objectness, deltas = _inputs()
    b = objectness.shape[0]
    tv = TVRPN(
        None,
        TVHead(1, 3),
        0.7,
        0.3,
        256,
        0.5,
        pre_nms_top_n={"training": 300, "testing": 300},
        post_nms_top_n={"training": 100, "testing": 100},
        nms_thresh=0.7,
    )
    tv.eval()
    decoded = tv.box_coder.decode(deltas.reshape(-1, 4), [anchors] * b).view(b, -1, 4)
    ref_boxes, ref_scores = tv.filter_proposals(decoded, objectness, [(S, S)] * b, counts)
    windows = torch.tensor([[0.0, 0, S, S]] * b)
    boxes, scores, valid = propose(
        objectness,
        deltas,
        anchors,
        counts,
        windows,
        pre_nms_top_n=300,
        post_nms_top_n=100,
        nms_thresh=0.7,
    )
    for i in range(b):
        n = int(valid[i].sum())
        assert n == len(ref_boxes[i]) > 50
        torch.testing.assert_close(boxes[i, :n], ref_boxes[i])
        torch.testing.assert_close(scores[i, :n], ref_scores[i])
        assert (boxes[i, n:] == 0).all()


def test_proposals_clip_to_each_window():
    anchors, counts, objectness, deltas = _inputs(b=2, seed=1)
    windows = torch.tensor([[0.0, 0, S, S], [0.0, 0, 64, 96]])  # second image is 96 x 64
    boxes, _, valid = propose(
        objectness,
        deltas,
        anchors,
        counts,
        windows,
        pre_nms_top_n=200,
        post_nms_top_n=50,
        nms_thresh=0.7,
    )
    b1 = boxes[1][valid[1]]
    assert len(b1) > 0
    assert (b1[:, [0, 2]] <= 96).all() and (b1[:, [1, 3]] <= 64).all() and (b1 >= 0).all()


def test_no_surviving_proposals_gives_empty_valid():
    anchors, counts, objectness, deltas = _inputs(b=1)
    windows = torch.tensor([[0.0, 0, S, S]])
    _, _, valid = propose(
        objectness,
        deltas,
        anchors,
        counts,
        windows,
        pre_nms_top_n=100,
        post_nms_top_n=50,
        nms_thresh=0.7,
        score_thresh=1.1,
    )
    assert valid.shape == (1, 50) and not valid.any()
