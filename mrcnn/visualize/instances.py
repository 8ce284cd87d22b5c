"""Pictures of instances: detections or ground truth drawn on their image, and the mini-mask
round trip (after matterport's inspect notebooks).

Every function returns an image (uint8 `[H, W, 3]` numpy) or draws into a matplotlib `Axes` it
is given; nothing calls `plt.show()` or touches pyplot's global state (figures are created with
`matplotlib.figure.Figure` on the Agg canvas), so this works headless and in notebooks alike.
Boxes are `(x1, y1, x2, y2)` in the frame of the image they are drawn on, x2 / y2 exclusive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from mrcnn.data.minimask import expand_mini_masks
from mrcnn.visualize.figures import colors, drawing_sizes, figure_to_array, label_font


def draw_instances(
    image: np.ndarray,
    boxes: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    scores: Sequence[float] | np.ndarray | None = None,
    *,
    alpha: float = 0.45,
    instance_colors: np.ndarray | None = None,
    show_text: bool = True,
    keypoints: np.ndarray | None = None,
    keypoint_thresh: float = 0.0,
) -> np.ndarray:
    """Instances over an image -> uint8 [H, W, 3] (a new array).

    image:  uint8 [H, W, 3]
    boxes:  float [N, 4] xyxy, or None (then masks must be given)
    masks:  bool [N, H, W] drawn translucent with their outline, or None
    labels: int [N] class indices; class_names[label] is printed when given
    scores: float [N] printed after the label when given (detections)
    instance_colors: uint8 [N, 3]; default one colour per instance
    keypoints: float [N, K, 3] (x, y, v) drawn as dots in the instance's colour with a dark
            rim where v > keypoint_thresh (ground truth: v = visibility, so labelled ones;
            detections: v = the keypoint's score)
    A mask array with no pixels per instance ([N, 0, 0], a model without a mask head) draws
    no masks.
    """
    out = np.array(image, dtype=np.uint8, copy=True)
    if out.ndim != 3 or out.shape[2] != 3:
        raise ValueError(f"expected an image uint8 [H, W, 3], got shape {out.shape}")
    n = len(boxes) if boxes is not None else (len(masks) if masks is not None else 0)
    palette = colors(n) if instance_colors is None else np.asarray(instance_colors, np.uint8)
    if masks is not None and np.asarray(masks).ndim == 3 and np.asarray(masks).shape[1] == 0:
        masks = None  # [N, 0, 0]: no masks to draw
    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        for i in range(n):
            m = masks[i]
            c = palette[i].astype(np.float32)
            out[m] = (out[m].astype(np.float32) * (1 - alpha) + c * alpha).round().astype(np.uint8)
            out[_outline(m)] = palette[i]
    if boxes is None and n == 0:
        return out
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    width, size = drawing_sizes(*out.shape[:2])  # both grow with the image
    font = label_font(size)
    radius = max(1.5, min(out.shape[:2]) / 200)
    for i in range(n):
        c = tuple(int(v) for v in palette[i])
        if keypoints is not None:
            for x, y, v in np.asarray(keypoints[i], dtype=np.float64):
                if v > keypoint_thresh:
                    dot = [x - radius, y - radius, x + radius, y + radius]
                    draw.ellipse(dot, fill=c, outline=(0, 0, 0))
        if boxes is not None:
            x1, y1, x2, y2 = (float(v) for v in boxes[i])
            draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=c, width=width)
    for i in range(n):  # captions after every box, so that no box line crosses a caption
        c = tuple(int(v) for v in palette[i])
        if not show_text or (labels is None and scores is None):
            continue
        text = _caption(i, labels, class_names, scores)
        if boxes is not None:
            anchor = (float(boxes[i][0]) + width, float(boxes[i][1]) + width)
        else:
            ys, xs = np.nonzero(masks[i])
            anchor = (float(xs.min()) if len(xs) else 0.0, float(ys.min()) if len(ys) else 0.0)
        left, top, right, bottom = draw.textbbox(anchor, text, font=font)
        draw.rectangle([left - 1, top - 1, right, bottom], fill=(0, 0, 0))
        draw.text(anchor, text, fill=c, font=font)
    return np.asarray(pil)


def draw_mini_mask_round_trip(
    image: np.ndarray,
    box: Sequence[float],
    mini_mask: np.ndarray,
    full_mask: np.ndarray | None = None,
    *,
    title: str = "",
) -> np.ndarray:
    """The mini-mask trick in pictures -> uint8 image of 3 (or 4) panels.

    image: uint8 [H, W, 3]; box: xyxy (x2 / y2 exclusive) in the image frame; mini_mask: bool
    [m, m]; full_mask: bool [H, W] reference (e.g. pycocotools' `annToMask`), optional.
    Panels: the instance's region, the m x m mini-mask, the mini-mask expanded back into the
    frame (`expand_mini_masks`), and, with a reference, the agreement (white = both,
    red = only the reference, blue = only the round trip) and its IoU.
    """
    box_arr = np.asarray(box, dtype=np.float32).reshape(1, 4)
    h, w = image.shape[:2]
    back = expand_mini_masks(box_arr, np.asarray(mini_mask, bool)[None], (h, w))[0]
    x1, y1, x2, y2 = box_arr[0]
    pad = max(4.0, 0.15 * max(x2 - x1, y2 - y1))
    cx1, cy1 = int(max(0, np.floor(x1 - pad))), int(max(0, np.floor(y1 - pad)))
    cx2, cy2 = int(min(w, np.ceil(x2 + pad))), int(min(h, np.ceil(y2 + pad)))
    crop = (slice(cy1, cy2), slice(cx1, cx2))
    local_box = box_arr - np.array([cx1, cy1, cx1, cy1], dtype=np.float32)
    panels = [
        ("instance region", image[crop]),
        (f"mini-mask {mini_mask.shape[0]}x{mini_mask.shape[1]}", mini_mask),
        ("expanded back", draw_instances(image[crop], local_box, back[crop][None])),
    ]
    if full_mask is not None:
        ref = np.asarray(full_mask, dtype=bool)
        iou = (ref & back).sum() / max(1, (ref | back).sum())
        diff = np.zeros((cy2 - cy1, cx2 - cx1, 3), dtype=np.uint8)
        diff[ref[crop] & back[crop]] = (255, 255, 255)
        diff[ref[crop] & ~back[crop]] = (255, 60, 60)
        diff[~ref[crop] & back[crop]] = (60, 120, 255)
        panels.append((f"vs reference: IoU {iou:.3f}", diff))
    fig = Figure(figsize=(3.2 * len(panels), 3.4), dpi=100)
    for k, (name, img) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return figure_to_array(fig)


def image_grid(images: Sequence[np.ndarray], cols: int, gap: int = 4) -> np.ndarray:
    """Tile equally sized uint8 [H, W, 3] images into one, `cols` per row, white gaps."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    h, w = images[0].shape[:2]
    rows = -(-len(images) // cols)
    cols = min(cols, len(images))
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = img
    return out


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _caption(i, labels, class_names, scores) -> str:
    parts = []
    if labels is not None:
        label = int(labels[i])
        if class_names is not None and 0 <= label < len(class_names):
            parts.append(str(class_names[label]))
        else:
            parts.append(str(label))
    if scores is not None:
        parts.append(f"{float(scores[i]):.2f}")
    return " ".join(parts)
