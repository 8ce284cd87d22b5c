"""Non-maximum suppression over a whole batch into fixed-size slots.

Proposal layer and detection layer both need "NMS within each (image, group), then the k best
per image". One `torchvision.ops.batched_nms` call over all candidates of all images does the
NMS; a stable sort by image and a rank computed from counts place the survivors into [B, k]
slots, so no Python loop runs over images.

This is the one primitive of the inference whose shapes depend on the data (how many boxes
survive). Both layers take it as an argument, `nms=`, with this signature; the exported graph
passes `mrcnn.export.graph.static_nms_top_k` (ONNX `NonMaxSuppression`, static [B, k] out) and
keeps everything around it.

Groups come in two layouts:
    groups int64 [N] or [B, N]   each candidate's group (the proposal layer: its level)
    groups None                  interleaved: candidate n is in group n % num_groups (the
                                 detection layer's (proposal, class) candidates, class-minor)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.ops import batched_nms

# Each image's k best survivors are decided by its best candidates alone: whether a candidate
# survives depends only on the higher-scoring ones of its group. So NMS runs first over each
# image's SHORTLIST_PER_SLOT * k best candidates; an image whose shortlist leaves k survivors
# is done, exactly, and otherwise the shortlist grows by this factor (the detection layer of a
# 91-class model has R * 90 candidates per image and keeps 100: NMS over 400 instead of 90,000).
SHORTLIST_PER_SLOT = 4

# The NMS primitive's type: (boxes, scores, groups, num_groups, candidates, iou_thresh, k) ->
# (index, valid), as `batched_nms_top_k` below.
NmsTopK = Callable[
    [Tensor, Tensor, "Tensor | None", int, Tensor, float, int], tuple[Tensor, Tensor]
]


def batched_nms_top_k(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor | None,
    num_groups: int,
    candidates: Tensor,
    iou_thresh: float,
    k: int,
) -> tuple[Tensor, Tensor]:
    """NMS within each (image, group), then each image's k best survivors.

    boxes [B, N, 4], scores [B, N], groups int64 [B, N] or [N] in [0, num_groups) (or None:
    candidate n in group n % num_groups), candidates bool [B, N] (only these take part).
    -> index int64 [B, k] into N, best first; valid bool [B, k] (False slots hold index 0).
    """
    n = scores.shape[1]
    m = SHORTLIST_PER_SLOT * k
    while m < n:  # NMS over each image's m best candidates first (see `SHORTLIST_PER_SLOT`)
        best = scores.masked_fill(~candidates, float("-inf")).topk(m, dim=1).indices
        shortlist = torch.zeros_like(candidates).scatter_(1, best, True) & candidates
        index, valid = _nms_top_k(boxes, scores, groups, num_groups, shortlist, iou_thresh, k)
        left_out = (candidates & ~shortlist).any(dim=1)
        if bool((valid.all(dim=1) | ~left_out).all()):
            return index, valid
        m *= SHORTLIST_PER_SLOT
    return _nms_top_k(boxes, scores, groups, num_groups, candidates, iou_thresh, k)


def _nms_top_k(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor | None,
    num_groups: int,
    candidates: Tensor,
    iou_thresh: float,
    k: int,
) -> tuple[Tensor, Tensor]:
    b, n = scores.shape
    device = scores.device
    if groups is None:
        groups = torch.arange(n, device=device) % num_groups
    groups = groups.expand(b, n)
    flat = candidates.reshape(-1).nonzero().squeeze(1)
    image = flat // n
    keys = image * num_groups + groups.reshape(-1)[flat]
    kept = flat[batched_nms(boxes.reshape(-1, 4)[flat], scores.reshape(-1)[flat], keys, iou_thresh)]
    # batched_nms returns survivors by descending score; a stable sort by image keeps that order.
    image, order = torch.sort(kept // n, stable=True)
    kept = kept[order]
    counts = torch.bincount(image, minlength=b)
    rank = torch.arange(kept.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[image]
    take = rank < k
    index = torch.zeros((b, k), dtype=torch.int64, device=device)
    valid = torch.zeros((b, k), dtype=torch.bool, device=device)
    index[image[take], rank[take]] = kept[take] % n
    valid[image[take], rank[take]] = True
    return index, valid


def gather_slots(values: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """values [B, N, ...] at index [B, k] -> [B, k, ...], zeros where not valid."""
    extra = values.shape[2:]
    idx = index.reshape(*index.shape, *([1] * len(extra))).expand(*index.shape, *extra)
    out = values.gather(1, idx)
    mask = valid.reshape(*valid.shape, *([1] * len(extra)))
    return torch.where(mask, out, torch.zeros_like(out))
