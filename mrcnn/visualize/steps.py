"""A trained model, step by step (after matterport's `inspect_model` notebook).

Each picture draws the model's own intermediate outputs (`MaskRCNN.inference_steps`) on the
padded input image of one batch slot, with the counts and shapes of what it shows in its titles
(the shapes of that image's slice: `boxes (20, 4)` is D = 20 slots of 4 coordinates, whatever the
batch size). Small inputs (the 128 px of the shapes model) are enlarged before anything is drawn
on them, so captions keep their size relative to the panel:

1. `draw_rpn_steps`: the anchors the RPN scores highest (dotted) and the same anchors refined
   by their predicted deltas (solid; the proposal layer's own `box_coder.decode`), then the
   proposals that survive the proposal layer's NMS.
2. `draw_detection_steps`: the detection layer's (proposal, class) candidates above the score
   threshold, before the per-class NMS, and the detections after it.
3. `draw_mask_steps`: each final detection's 28 x 28 mask probabilities, thresholded, and, when
   the batch carries ground truth, its mask target: what the mask head is trained towards for
   that box (the ground truth it overlaps most, IoU >= the RoI heads' foreground threshold,
   cropped to the box by `mrcnn.modeling.targets.mask_targets_from_mini_masks`, as in
   training), beside the masks pasted into the image (`mrcnn.inference.mask_paste`) at the
   model's threshold.

Functions return uint8 [H, W, 3] images; nothing touches pyplot's global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle
from torch import Tensor

from mrcnn.inference.mask_paste import paste_masks_in_image
from mrcnn.layers import box_coder
from mrcnn.layers.matcher import batched_iou
from mrcnn.modeling.targets import mask_targets_from_mini_masks
from mrcnn.structures import Batch, InferenceSteps
from mrcnn.visualize.figures import colors, figure_to_array, new_figure, zoom
from mrcnn.visualize.instances import draw_instances

SHOWN = 40  # boxes drawn at most per panel (the titles give the full counts)
DRAWN_SIZE = 512  # px: smaller inputs are enlarged (an integer factor) before drawing on them


def _image(batch: Batch, i: int) -> np.ndarray:
    return batch.images[i].permute(1, 2, 0).cpu().numpy()


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _instances(image: np.ndarray, boxes: np.ndarray, masks: np.ndarray | None = None, **kw):
    """`draw_instances` on `image` enlarged to about `DRAWN_SIZE` (boxes and masks with it),
    so that its captions are sized for the panel -> the enlarged picture (`_panel` shows it in
    the input's pixel frame)."""
    f = max(1, DRAWN_SIZE // max(image.shape[:2]))
    if masks is not None and f > 1:
        masks = masks.repeat(f, axis=1).repeat(f, axis=2)
    return draw_instances(zoom(image, f), boxes * f, masks, **kw)


def _boxes(ax: Axes, boxes: np.ndarray, palette: np.ndarray, style: str = "-") -> None:
    for (x1, y1, x2, y2), c in zip(boxes, palette, strict=True):
        rect = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1, ls=style, ec=c / 255)
        ax.add_patch(rect)


def _panel(ax: Axes, image: np.ndarray, title: str, size: tuple[int, int] | None = None) -> None:
    """`image` (drawn on at `size` (h, w) enlarged, when given) in the input's pixel frame, so
    that boxes added with `_boxes` land where they belong."""
    h, w = size or image.shape[:2]
    ax.imshow(image, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def draw_rpn_steps(batch: Batch, steps: InferenceSteps, i: int = 0, top: int = 20) -> np.ndarray:
    """Slot i: top anchors by objectness (dotted) and refined (solid) | proposals after NMS."""
    image = _image(batch, i)
    a = steps.anchors.shape[0]
    k = min(top, a)
    best = steps.objectness[i].topk(k).indices
    anchors = steps.anchors[best]
    refined = box_coder.decode(steps.rpn_deltas[i][best], anchors, box_coder.RPN_BOX_WEIGHTS)
    refined = box_coder.clip_to_windows(refined[None], batch.windows[i : i + 1])[0]
    valid = steps.proposal_valid[i]
    proposals = steps.proposals[i][valid][:SHOWN].cpu().numpy()
    fig = new_figure(10, 5.4)
    ax1, ax2 = fig.subplots(1, 2)
    _panel(
        ax1,
        image,
        f"top {k} of {a} anchors by RPN objectness (dotted)\n"
        f"refined by their deltas (solid); anchors {_shape(steps.anchors)}, "
        f"objectness {_shape(steps.objectness[i])}",
    )
    palette = colors(k)
    _boxes(ax1, anchors.cpu().numpy(), palette, ":")
    _boxes(ax1, refined.cpu().numpy(), palette, "-")
    r = steps.proposals.shape[1]
    _panel(
        ax2,
        image,
        f"proposals after NMS: {int(valid.sum())} valid of R = {r} slots\n"
        f"(best {len(proposals)} drawn); proposals {_shape(steps.proposals[i])}",
    )
    _boxes(ax2, proposals, colors(len(proposals)))
    return figure_to_array(fig)


def draw_detection_steps(
    batch: Batch,
    steps: InferenceSteps,
    i: int = 0,
    class_names: Sequence[str] | None = None,
    score_thresh: float | None = None,
) -> np.ndarray:
    """Slot i: detection-layer candidates above the score threshold | after per-class NMS."""
    image = _image(batch, i)
    ok = steps.candidate_ok[i]
    order = steps.candidate_scores[i].masked_fill(~ok, -1).argsort(descending=True)
    shown = order[: min(SHOWN, int(ok.sum()))]
    labels = steps.candidate_labels[shown].cpu().numpy()
    det = steps.detections
    keep = det.valid[i]
    thresh = "" if score_thresh is None else f" > {score_thresh:g}"
    fig = new_figure(10, 5.4)
    ax1, ax2 = fig.subplots(1, 2)
    n_cand = steps.candidate_boxes.shape[1]
    before = _instances(
        image,
        steps.candidate_boxes[i][shown].cpu().numpy(),
        labels=labels,
        class_names=class_names,
        scores=steps.candidate_scores[i][shown].cpu().numpy(),
        show_text=False,
    )
    _panel(
        ax1,
        before,
        f"before NMS: {int(ok.sum())} (proposal, class) candidates with score{thresh}\n"
        f"of {n_cand} = R x (K-1) (best {len(shown)} drawn)",
        image.shape[:2],
    )
    after = _instances(
        image,
        det.boxes[i][keep].cpu().numpy(),
        labels=det.labels[i][keep].cpu().numpy(),
        class_names=class_names,
        scores=det.scores[i][keep].cpu().numpy(),
    )
    _panel(
        ax2,
        after,
        f"after per-class NMS and top D: {int(keep.sum())} detections\n"
        f"boxes {_shape(det.boxes[i])}, D = {det.boxes.shape[1]} slots",
        image.shape[:2],
    )
    return figure_to_array(fig)


def mask_targets_for(
    batch: Batch, i: int, boxes: Tensor, mask_size: int, fg_iou_thresh: float = 0.5
) -> tuple[Tensor, Tensor, Tensor]:
    """The mask targets of slot i's boxes [n, 4] (padded frame), as training makes them: each
    box's ground truth of highest IoU, cropped to the box and resized to M x M.

    -> targets float {0, 1} [n, M, M], box IoU with that ground truth [n], matched bool [n]
    (IoU >= `fg_iou_thresh`: a training RoI there would be a positive and get this target).
    """
    n = boxes.shape[0]
    if not batch.has_targets or n == 0 or batch.gt_boxes.shape[1] == 0:
        none = boxes.new_zeros(n)
        return boxes.new_zeros((n, mask_size, mask_size)), none, none > 0
    gt_boxes = batch.gt_boxes[i : i + 1].to(boxes)
    iou = batched_iou(gt_boxes, boxes[None])[0]  # [G, n]
    iou = iou.masked_fill(~batch.gt_valid[i].to(iou.device)[:, None], -1.0)
    best_iou, gt_idx = iou.max(dim=0)  # [n]
    minis = batch.gt_mini_masks[i : i + 1].to(boxes.device)
    targets = mask_targets_from_mini_masks(boxes[None], gt_idx[None], gt_boxes, minis, mask_size)[0]
    return targets, best_iou.clamp(min=0), best_iou >= fg_iou_thresh


def draw_mask_steps(
    batch: Batch,
    steps: InferenceSteps,
    i: int = 0,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
    most: int = 6,
    fg_iou_thresh: float = 0.5,
) -> np.ndarray:
    """Slot i: each detection's M x M mask probabilities, thresholded, and (when `batch` has
    ground truth) its mask target with their mask IoU | the masks pasted into the image."""
    image = _image(batch, i)
    det = steps.detections
    keep = det.valid[i]
    n = min(most, int(keep.sum()))
    probs = det.mask_probs[i][keep][:n]
    boxes = det.boxes[i][keep][:n]
    labels = det.labels[i][keep][:n].cpu().numpy()
    masks = paste_masks_in_image(
        probs.float().cpu().numpy(), boxes.float().cpu().numpy(), image.shape[:2], threshold
    )
    m = det.mask_probs.shape[-1]
    rows = 3 if batch.has_targets else 2
    if batch.has_targets:
        targets, box_iou, matched = mask_targets_for(batch, i, boxes.float(), m, fg_iou_thresh)
    fig = new_figure(2.0 * max(n, 1) + 4.5, 2.1 * rows)
    grid = fig.add_gridspec(rows, max(n, 1) + 2)
    for j in range(n):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(probs[j].cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
        name = class_names[labels[j]] if class_names else str(labels[j])
        ax.set_title(f"{name} {float(det.scores[i][keep][j]):.2f}", fontsize=7)
        ax.set_axis_off()
        binary = probs[j].cpu().numpy() >= threshold
        _mask_panel(fig.add_subplot(grid[1, j]), binary, f">= {threshold:g}")
        if not batch.has_targets:
            continue
        ax = fig.add_subplot(grid[2, j])
        if bool(matched[j]):
            target = targets[j].cpu().numpy() > 0.5
            union = np.logical_or(binary, target).sum()
            mask_iou = np.logical_and(binary, target).sum() / union if union else 1.0
            _mask_panel(
                ax, target, f"target, IoU {mask_iou:.2f}\n(box IoU {float(box_iou[j]):.2f})"
            )
        else:
            _mask_panel(ax, np.zeros((m, m), bool), f"no target\n(box IoU {float(box_iou[j]):.2f})")
    ax = fig.add_subplot(grid[:, max(n, 1) :])
    pasted = _instances(
        image, boxes.cpu().numpy(), masks, labels=labels, class_names=class_names, show_text=False
    )
    _panel(
        ax,
        pasted,
        f"{n} of {int(keep.sum())} masks pasted at their boxes\n"
        f"mask_probs {_shape(det.mask_probs[i])} ({m} x {m}) -> {image.shape[0]} x "
        f"{image.shape[1]}",
        image.shape[:2],
    )
    if n:
        what = (
            "thresholded (middle), mask targets (bottom)"
            if batch.has_targets
            else ("thresholded (bottom)")
        )
        fig.suptitle(f"mask head output, M = {m} (top), {what}", fontsize=8, x=0.3)
    return figure_to_array(fig)


def _mask_panel(ax: Axes, mask: np.ndarray, title: str) -> None:
    ax.imshow(mask, cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])  # a frame, so that an all-white or all-black mask shows
    ax.set_yticks([])


@torch.no_grad()
def step_pictures(
    model, batch: Batch, class_names: Sequence[str] | None = None
) -> list[dict[str, np.ndarray]]:
    """`model.inference_steps(batch)` drawn for every slot -> per slot {"1_rpn", "2_detections",
    "3_masks"}: uint8 images. The model sees the images only; a batch with ground truth also
    gets the mask targets drawn (`draw_mask_steps`)."""
    inputs = replace(
        batch, gt_boxes=None, gt_labels=None, gt_mini_masks=None, gt_valid=None, gt_keypoints=None
    )
    steps = model.inference_steps(inputs)
    names = class_names or model.class_names or None
    out = []
    for i in range(len(batch)):
        out.append(
            {
                "1_rpn": draw_rpn_steps(batch, steps, i),
                "2_detections": draw_detection_steps(
                    batch, steps, i, names, model.roi_heads.detection_layer.score_thresh
                ),
                "3_masks": draw_mask_steps(
                    batch,
                    steps,
                    i,
                    names,
                    model.mask_thresh,
                    fg_iou_thresh=model.roi_heads.sampler.fg_iou_thresh,
                ),
            }
        )
    return out
