import pytest
import torch

from mrcnn.layers.nms import batched_nms_top_k, gather_slots

# Image 0: A and B overlap (IoU 0.81), C is B's box in another group, D is far away.
BOXES = torch.tensor(
    [[0.0, 0, 10, 10], [1, 1, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]]
)  # A B C D
SCORES = torch.tensor([0.9, 0.8, 0.7, 0.95])
GROUPS = torch.tensor([0, 0, 1, 0])


def _run(candidates, k, boxes=BOXES, scores=SCORES, groups=GROUPS, thresh=0.5):
    b = candidates.shape[0]
    return batched_nms_top_k(
        boxes.expand(b, -1, -1), scores.expand(b, -1), groups, 2, candidates, thresh, k
    )


def test_suppression_within_group_only_and_best_first():
    index, valid = _run(torch.ones(1, 4, dtype=torch.bool), k=4)
    # D (0.95), A (0.9), C (0.7, other group than A); B suppressed by A.
    assert index.tolist() == [[3, 0, 2, 0]]
    assert valid.tolist() == [[True, True, True, False]]


def test_fixed_k_slots_truncate_to_the_best():
    index, valid = _run(torch.ones(1, 4, dtype=torch.bool), k=2)
    assert index.tolist() == [[3, 0]] and valid.all()


def test_images_are_independent_and_candidates_respected():
    cand = torch.tensor([[True, True, True, True], [False, True, True, False]])
    index, valid = _run(cand, k=3)
    assert index.tolist() == [[3, 0, 2], [1, 2, 0]]  # image 1: A absent, so B survives
    assert valid.tolist() == [[True, True, True], [True, True, False]]


def test_per_image_groups_tensor():
    groups = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 0]])  # image 1: B in group 1 with C
    index, valid = _run(torch.ones(2, 4, dtype=torch.bool), k=4, groups=groups)
    assert index[0, :3].tolist() == [3, 0, 2]
    assert index[1, :3].tolist() == [3, 0, 1]  # B keeps its slot (group 1), C (=B) suppressed
    assert valid.sum(1).tolist() == [3, 3]


def test_all_invalid_gives_no_slots():
    index, valid = _run(torch.zeros(2, 4, dtype=torch.bool), k=3)
    assert not valid.any() and index.tolist() == [[0, 0, 0], [0, 0, 0]]


def test_empty_input():
    index, valid = batched_nms_top_k(
        torch.zeros(2, 0, 4),
        torch.zeros(2, 0),
        torch.zeros(0, dtype=torch.int64),
        3,
        torch.zeros(2, 0, dtype=torch.bool),
        0.5,
        4,
    )
    assert index.shape == (2, 4) and index.dtype == torch.int64
    assert valid.shape == (2, 4) and not valid.any()


def test_tied_identical_boxes_keep_exactly_one():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.5, 0.5, 0.5])
    index, valid = batched_nms_top_k(
        boxes[None],
        scores[None],
        torch.zeros(3, dtype=torch.int64),
        1,
        torch.ones(1, 3, dtype=torch.bool),
        0.5,
        3,
    )
    assert valid.tolist() == [[True, True, False]]
    kept = set(index[0, :2].tolist())
    assert 2 in kept and len(kept & {0, 1}) == 1


def test_iou_threshold_is_strict():
    # IoU(A, B) = 0.81: suppressed at 0.8, kept at 0.82 (IoU above the threshold suppresses).
    cand = torch.tensor([[True, True, False, False]])
    assert _run(cand, k=2, thresh=0.8)[1].sum() == 1
    assert _run(cand, k=2, thresh=0.82)[1].sum() == 2


def test_gather_slots_zeroes_invalid_slots():
    values = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    index = torch.tensor([[2, 0], [1, 0]])
    valid = torch.tensor([[True, True], [True, False]])
    out = gather_slots(values, index, valid)
    assert out.tolist() == [[[4.0, 5.0], [0.0, 1.0]], [[8.0, 9.0], [0.0, 0.0]]]
    flat = gather_slots(values[..., 0], index, valid)
    assert flat.tolist() == [[4.0, 0.0], [8.0, 0.0]]


@pytest.mark.parametrize("spread", [300.0, 40.0])  # boxes apart (shortlist enough) / piled up
def test_shortlist_gives_the_full_nms_result(spread, monkeypatch):
    """NMS over each image's best candidates first is exact: the same k survivors, in the same
    order, as torchvision's `batched_nms` over every candidate; piled-up boxes (most suppressed)
    make the shortlist grow until k survive."""
    from torchvision.ops import batched_nms

    from mrcnn.layers import nms

    g = torch.Generator().manual_seed(0)
    b, n, groups, k = 2, 3000, 3, 40
    xy = torch.rand(b, n, 2, generator=g) * spread
    boxes = torch.cat([xy, xy + 30 + torch.rand(b, n, 2, generator=g) * 10], dim=-1)
    scores = torch.rand(b, n, generator=g)
    candidates = torch.rand(b, n, generator=g) > 0.2
    rounds = []
    real = nms._nms_top_k
    monkeypatch.setattr(nms, "_nms_top_k", lambda *a: rounds.append(a[4].sum()) or real(*a))
    index, valid = batched_nms_top_k(boxes, scores, None, groups, candidates, 0.5, k)
    for i in range(b):
        cand = candidates[i].nonzero().squeeze(1)
        keys = cand % groups
        kept = cand[batched_nms(boxes[i, cand], scores[i, cand], keys, 0.5)][:k]
        assert index[i][valid[i]].tolist() == kept.tolist()
    assert valid.all()  # k survivors in each image
    if spread > 100:
        assert len(rounds) == 1 and rounds[0] <= b * nms.SHORTLIST_PER_SLOT * k
    else:
        assert len(rounds) > 1  # the first shortlist was not enough
