import torch
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

from mrcnn.inference import detection_layer, paste_masks_in_image


def test_paste_matches_torchvision_geometry():
    g = torch.Generator().manual_seed(0)
    n, h, w = 30, 120, 160
    masks = torch.rand(n, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) - 10  # some start off-image
    wh = torch.rand(n, 2, generator=g) * 80 + 0.5
    boxes = torch.cat([xy, xy + wh], dim=1)
    ref = tv_paste(masks[:, None], boxes, (h, w))[:, 0] >= 0.5
    ours = paste_masks_in_image(masks, boxes, (h, w), 0.5)
    assert ours.shape == (n, h, w) and ours.dtype == torch.bool
    disagree = (ours != ref).sum().item()
    assert disagree <= 0.001 * ref.sum().item()  # float rounding at the threshold only
    assert ref.sum() > 1000


def test_paste_empty():
    out = paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (10, 12))
    assert out.shape == (0, 10, 12)


def test_detection_layer_matches_torchvision_postprocess():
    g = torch.Generator().manual_seed(0)
    b, r, k, s = 2, 60, 5, 128
    logits = torch.randn(b * r, k, generator=g) * 3
    deltas = torch.randn(b * r, k * 4, generator=g)
    xy = torch.rand(b, r, 2, generator=g) * 100
    proposals = torch.cat([xy, xy + 5 + torch.rand(b, r, 2, generator=g) * 40], dim=-1)
    tv = TVRoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 20)
    ref = tv.postprocess_detections(logits, deltas, list(proposals), [(s, s)] * b)
    boxes, scores, labels, valid = detection_layer(
        logits.reshape(b, r, k),
        deltas.reshape(b, r, k * 4),
        proposals,
        torch.ones(b, r, dtype=torch.bool),
        torch.tensor([[0.0, 0, s, s]] * b),
        box_weights=(10.0, 10.0, 5.0, 5.0),
        score_thresh=0.05,
        nms_thresh=0.5,
        detections_per_img=20,
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
    boxes, scores, labels, valid = detection_layer(
        logits,
        deltas,
        props,
        valid_props,
        torch.tensor([[0.0, 0, 64, 64]]),
        box_weights=(10.0, 10.0, 5.0, 5.0),
        score_thresh=0.5,
        nms_thresh=0.5,
        detections_per_img=5,
    )
    assert valid.sum() == 2 and (labels[valid] == 1).all()
    assert not any(torch.equal(bx, props[0, 1]) for bx in boxes[0][valid[0]])
