import torch
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads

from mrcnn.inference.detection_layer import DetectionLayer


def test_detection_layer_matches_torchvision_postprocess():
    g = torch.Generator().manual_seed(0)
    b, r, k, s = 2, 60, 5, 128
    logits = torch.randn(b * r, k, generator=g) * 3
    deltas = torch.randn(b * r, k * 4, generator=g)
    xy = torch.rand(b, r, 2, generator=g) * 100
    proposals = torch.cat([xy, xy + 5 + torch.rand(b, r, 2, generator=g) * 40], dim=-1)
    tv = TVRoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 20)
    ref = tv.postprocess_detections(logits, deltas, list(proposals), [(s, s)] * b)
    boxes, scores, labels, valid = DetectionLayer(0.05, 0.5, 20)(
        logits.reshape(b, r, k),
        deltas.reshape(b, r, k * 4),
        proposals,
        torch.ones(b, r, dtype=torch.bool),
        torch.tensor([[0.0, 0, s, s]] * b),
        box_weights=(10.0, 10.0, 5.0, 5.0),
    )
    for i in range(b):
        n = int(valid[i].sum())
        assert n == len(ref[0][i]) == 20
        torch.testing.assert_close(boxes[i, :n], ref[0][i])
        torch.testing.assert_close(scores[i, :n], ref[1][i])
        assert labels[i, :n].tolist() == ref[2][i].tolist()


def test_detection_layer_respects_invalid_proposals_and_threshold():
    logits = torch.zeros(1, 3, 3)
    logits[0, :, 1] = 10.0  # class 1 wins everywhere
    deltas = torch.zeros(1, 3, 12)
    props = torch.tensor([[[0.0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]]])
    valid_props = torch.tensor([[True, False, True]])
    boxes, scores, labels, valid = DetectionLayer(0.5, 0.5, 5)(
        logits,
        deltas,
        props,
        valid_props,
        torch.tensor([[0.0, 0, 64, 64]]),
        box_weights=(10.0, 10.0, 5.0, 5.0),
    )
    assert valid.sum() == 2 and (labels[valid] == 1).all()
    assert not any(torch.equal(bx, props[0, 1]) for bx in boxes[0][valid[0]])
