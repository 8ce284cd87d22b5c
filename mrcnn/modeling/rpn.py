"""Region Proposal Network: head and proposal layer (Faster R-CNN sec. 3.1; FPN sec. 4.1).

Shape shorthand: B images, L = 5 levels (P2..P6), a anchors per cell (one per ratio),
A anchors over all levels, k_l pre-NMS candidates of level l, R proposals per image.

The head is shared over levels. Its outputs are flattened level -> cell (row-major) -> anchor, the
order of `mrcnn.modeling.anchors.AnchorGenerator`. The proposal layer keeps each level's top-k by
objectness, decodes and clips them, runs NMS per (image, level) in one `batched_nms` call and keeps
the R best per image, returned as fixed-shape [B, R] tensors with a validity mask.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from mrcnn.layers import box_coder
from mrcnn.layers.matcher import Sampler
from mrcnn.layers.nms import NmsTopK, batched_nms_top_k, gather_slots
from mrcnn.modeling.anchors import AnchorGenerator
from mrcnn.modeling.losses import rpn_losses
from mrcnn.modeling.targets import rpn_targets


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs to `a` objectness logits and `4a` deltas per cell.

    Args:
        in_channels: C, the FPN's channels (the conv keeps them).
        num_anchors: a, anchors per cell (one per aspect ratio).
        anchor_stride: run the 1x1 convs on every `anchor_stride`-th cell only, matching an
            `AnchorGenerator` with the same stride (matterport's RPN_ANCHOR_STRIDE; 1 = all).
    """

    def __init__(self, in_channels: int, num_anchors: int, anchor_stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        self.anchor_stride = anchor_stride
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """P2..P6 [B, C, H_l, W_l] -> objectness [B, A], deltas [B, A, 4] in anchor order."""
        logits, deltas = [], []
        s = self.anchor_stride
        for x in features:
            t = torch.relu_(self.conv(x))
            if s > 1:  # anchors sit on every s-th cell (matterport's RPN_ANCHOR_STRIDE)
                t = t[:, :, ::s, ::s]
            b, _, h, w = t.shape
            # [B, a, H, W] -> [B, H, W, a] -> [B, H*W*a]
            logits.append(self.cls_logits(t).permute(0, 2, 3, 1).reshape(b, -1))
            # [B, a*4, H, W] -> [B, a, 4, H, W] -> [B, H, W, a, 4] -> [B, H*W*a, 4]
            d = self.bbox_pred(t).reshape(b, -1, 4, h, w).permute(0, 3, 4, 1, 2)
            deltas.append(d.reshape(b, -1, 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


@torch.no_grad()
def propose(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    num_anchors_per_level: list[int],
    windows: Tensor,
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float,
    min_size: float = 1e-3,
    score_thresh: float = 0.0,
    nms: NmsTopK = batched_nms_top_k,
) -> tuple[Tensor, Tensor, Tensor]:
    """The proposal layer.

    objectness [B, A] logits, deltas [B, A, 4], anchors [A, 4], windows [B, 4] (y1, x1, y2, x2)
    -> boxes [B, R, 4] (padded frame), scores [B, R] (sigmoid), valid bool [B, R],
       R = post_nms_top_n, each row sorted by score; invalid slots hold zeros.

    Args:
        num_anchors_per_level: A split by level (from `AnchorGenerator`), for the per-level
            top-k.
        pre_nms_top_n: candidates kept per level and image by objectness before NMS.
        post_nms_top_n: R, proposals kept per image after NMS.
        nms_thresh: IoU threshold of the NMS within each (image, level).
        min_size: boxes narrower or shorter than this (pixels, after clipping) are dropped.
        score_thresh: boxes with sigmoid objectness below this are dropped.
        nms: the NMS primitive (`mrcnn.layers.nms`; the exported graph passes its static one).
    """
    device = objectness.device
    objectness = objectness.detach().float()
    deltas = deltas.detach().float()

    # 1. Top-k per level (FPN: each level competes separately before NMS).
    top_idx, levels, offset = [], [], 0
    for level, n in enumerate(num_anchors_per_level):
        k = min(pre_nms_top_n, n)
        idx = objectness[:, offset : offset + n].topk(k, dim=1).indices + offset
        top_idx.append(idx)
        levels.append(torch.full((k,), level, device=device))
        offset += n
    idx = torch.cat(top_idx, dim=1)  # [B, K]
    level = torch.cat(levels)  # [K]
    logits = objectness.gather(1, idx)
    boxes = box_coder.decode(
        deltas.gather(1, idx[..., None].expand(-1, -1, 4)), anchors[idx], box_coder.RPN_BOX_WEIGHTS
    )
    boxes = box_coder.clip_to_windows(boxes, windows)
    scores = torch.sigmoid(logits)
    keep_mask = box_coder.box_sizes_at_least(boxes, min_size) & (scores >= score_thresh)

    # 2. NMS per (image, level) in one call; the R best survivors of each image.
    index, valid = nms(
        boxes, scores, level, len(num_anchors_per_level), keep_mask, nms_thresh, post_nms_top_n
    )
    return gather_slots(boxes, index, valid), gather_slots(scores, index, valid), valid


class RegionProposalNetwork(nn.Module):
    """Head + anchors + proposal layer, and in training the RPN targets and losses.

    forward(features, windows, image_size[, gt_boxes, gt_valid]) ->
        proposals float [B, R, 4] xyxy in the padded frame, sorted by objectness,
        proposal_valid bool [B, R] (R = post_nms_top_n of the mode; invalid slots are zeros),
        losses {"loss_rpn_objectness", "loss_rpn_box"} scalars in training, {} in eval mode.
    features are P2..P6 [B, C, H_l, W_l], windows float [B, 4] (y1, x1, y2, x2) the real image
    inside the padded input of side `image_size`; gt_boxes [B, G, 4] and gt_valid bool [B, G]
    are needed in training only.

    Args:
        head: `RPNHead`, shared over levels: P_l -> objectness logits and deltas per anchor.
        anchor_generator: `AnchorGenerator`, the anchors [A, 4] in the head's output order.
        pre_nms_top_n: (train, test) anchors kept per level by objectness before NMS
            (FPN paper: 2000 / 1000).
        post_nms_top_n: (train, test) proposals kept per image after NMS: R (2000 / 1000).
        nms_thresh: IoU threshold of the NMS within each (image, level) (0.7).
        min_size: proposals narrower or shorter than this (pixels) are dropped.
        score_thresh: proposals with sigmoid objectness below this are dropped (0.0).
        sampler: training: the anchors' labels and minibatch (`Sampler`: IoU >= 0.7 positive,
            < 0.3 negative, 256 per image, half positive; each gt's best anchors are positive
            too, Faster R-CNN sec. 3.1.2).
    """

    def __init__(
        self,
        *,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        pre_nms_top_n: tuple[int, int],
        post_nms_top_n: tuple[int, int],
        nms_thresh: float,
        min_size: float,
        score_thresh: float,
        sampler: Sampler,
    ) -> None:
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.pre_nms_top_n = pre_nms_top_n  # (train, test)
        self.post_nms_top_n = post_nms_top_n  # (train, test)
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.score_thresh = score_thresh
        self.sampler = sampler

    def proposal_layer(
        self,
        objectness: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        counts: list[int],
        windows: Tensor,
        nms: NmsTopK = batched_nms_top_k,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`propose` with this RPN's settings for the current mode (train / eval):
        objectness [B, A], deltas [B, A, 4], anchors [A, 4] (A split by level in `counts`),
        windows [B, 4] -> proposals [B, R, 4], scores [B, R], valid bool [B, R]."""
        mode = 0 if self.training else 1
        with record_function("mrcnn.proposals"):
            return propose(
                objectness,
                deltas,
                anchors,
                counts,
                windows,
                pre_nms_top_n=self.pre_nms_top_n[mode],
                post_nms_top_n=self.post_nms_top_n[mode],
                nms_thresh=self.nms_thresh,
                min_size=self.min_size,
                score_thresh=self.score_thresh,
                nms=nms,
            )

    def forward(
        self,
        features: list[Tensor],
        windows: Tensor,
        image_size: int,
        gt_boxes: Tensor | None = None,
        gt_valid: Tensor | None = None,
        *,
        nms: NmsTopK = batched_nms_top_k,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        with record_function("mrcnn.rpn_head"):
            objectness, deltas = self.head(features)
        anchors, counts = self.anchor_generator(image_size, objectness.device)
        proposals, _, valid = self.proposal_layer(
            objectness, deltas, anchors, counts, windows, nms=nms
        )
        if not self.training:
            return proposals, valid, {}
        if gt_boxes is None or gt_valid is None:
            raise ValueError("training the RPN needs gt_boxes and gt_valid in the batch")
        with record_function("mrcnn.rpn_targets"):
            t = rpn_targets(anchors, gt_boxes, gt_valid, self.sampler)
        with record_function("mrcnn.modeling.losses"):
            losses = rpn_losses(
                objectness.gather(1, t.idx),
                deltas.gather(1, t.idx[..., None].expand(-1, -1, 4)),
                t.is_positive,
                t.valid,
                t.box_targets,
            )
        return proposals, valid, losses
