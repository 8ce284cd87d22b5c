"""Pictures of instances, mini-masks and anchors (after matterport's inspect notebooks).

Every function returns an image (uint8 `[H, W, 3]` numpy) or draws into a matplotlib `Axes` it
is given; nothing calls `plt.show()` or touches pyplot's global state (figures are created with
`matplotlib.figure.Figure` on the Agg canvas), so this works headless and in notebooks alike.
Boxes are `(x1, y1, x2, y2)` in the frame of the image they are drawn on, x2 / y2 exclusive.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from mrcnn.data.minimask import expand_mini_masks

POSITIVE, NEGATIVE, NEUTRAL = 1, 0, -1  # anchor labels (RPN targets, Faster R-CNN sec. 3.1.2)


def colors(n: int) -> np.ndarray:
    """n well-separated colours, uint8 [n, 3] (golden-ratio hues, fixed order)."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]
    return (np.asarray(rgb, dtype=np.float64).reshape(n, 3) * 255).round().astype(np.uint8)


def zoom(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of `[H, W, ...]` by an integer factor (small images)."""
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


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
) -> np.ndarray:
    """Instances over an image -> uint8 [H, W, 3] (a new array).

    image:  uint8 [H, W, 3]
    boxes:  float [N, 4] xyxy, or None (then masks must be given)
    masks:  bool [N, H, W] drawn translucent with their outline, or None
    labels: int [N] class indices; class_names[label] is printed when given
    scores: float [N] printed after the label when given (detections)
    instance_colors: uint8 [N, 3]; default one colour per instance
    """
    out = np.array(image, dtype=np.uint8, copy=True)
    if out.ndim != 3 or out.shape[2] != 3:
        raise ValueError(f"expected an image uint8 [H, W, 3], got shape {out.shape}")
    n = len(boxes) if boxes is not None else (len(masks) if masks is not None else 0)
    palette = colors(n) if instance_colors is None else np.asarray(instance_colors, np.uint8)
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
    font = _font(max(10, min(out.shape[:2]) // 40))
    for i in range(n):
        c = tuple(int(v) for v in palette[i])
        if boxes is not None:
            x1, y1, x2, y2 = (float(v) for v in boxes[i])
            draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=c, width=1)
        if not show_text or (labels is None and scores is None):
            continue
        text = _caption(i, labels, class_names, scores)
        if boxes is not None:
            anchor = (float(boxes[i][0]) + 1, float(boxes[i][1]) + 1)
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


def draw_anchors(
    image: np.ndarray,
    anchors: np.ndarray,
    anchor_labels: np.ndarray,
    *,
    max_negative: int = 40,
    max_neutral: int = 40,
    gt_boxes: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Anchors coloured by their RPN label -> uint8 [H, W, 3].

    anchors: float [A, 4] xyxy; anchor_labels: int [A] (1 positive, 0 negative, -1 neutral).
    Every positive is drawn (green); a random sample of negatives (red) and neutrals (blue)
    keeps the picture readable. Ground-truth boxes, if given, are drawn in white.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(anchor_labels)
    pil = Image.fromarray(np.array(image, dtype=np.uint8, copy=True))
    draw = ImageDraw.Draw(pil)
    picks = [
        ("negative", NEGATIVE, max_negative, (230, 60, 60), 1),
        ("neutral", NEUTRAL, max_neutral, (70, 150, 255), 1),
        ("positive", POSITIVE, None, (40, 230, 80), 2),
    ]
    legend = []
    for name, kind, limit, colour, width in picks:
        idx = np.flatnonzero(labels == kind)
        total = len(idx)
        if limit is not None and len(idx) > limit:
            idx = np.sort(rng.choice(idx, limit, replace=False))
        for a in np.asarray(anchors)[idx]:
            draw.rectangle(
                [float(a[0]), float(a[1]), float(a[2]) - 1, float(a[3]) - 1],
                outline=colour,
                width=width,
            )
        legend.append(
            (f"{name}: {total}" + (f" ({len(idx)} shown)" if len(idx) < total else ""), colour)
        )
    for b in np.asarray(gt_boxes if gt_boxes is not None else np.zeros((0, 4))):
        draw.rectangle(
            [float(b[0]), float(b[1]), float(b[2]) - 1, float(b[3]) - 1],
            outline=(255, 255, 255),
            width=2,
        )
    font = _font(max(10, min(pil.size) // 40))
    line = draw.textbbox((0, 0), "Ag", font=font)[3] + 3
    for k, (text, colour) in enumerate(legend):
        pos = (3, 3 + k * line)
        draw.rectangle(draw.textbbox(pos, text, font=font), fill=(0, 0, 0))
        draw.text(pos, text, fill=colour, font=font)
    return np.asarray(pil)


def draw_anchors_per_level(
    image: np.ndarray,
    anchors: np.ndarray,
    counts: Sequence[int],
    *,
    per_level: int = 6,
    sizes: Sequence[float] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """A few anchors of every pyramid level, one colour per level, with a legend.

    anchors: float [A, 4] in pyramid order (level, cell, ratio); counts: anchors per level;
    sizes: the anchor size of each level for the legend (default: measured from the anchors).
    Anchors are sampled among those centred inside the image.
    """
    rng = np.random.default_rng(seed)
    anchors = np.asarray(anchors)
    h, w = image.shape[:2]
    pil = Image.fromarray(np.array(image, dtype=np.uint8, copy=True))
    draw = ImageDraw.Draw(pil)
    font = _font(max(10, min(h, w) // 40))
    palette = colors(len(counts))
    line = draw.textbbox((0, 0), "Ag", font=font)[3] + 3
    legend: list[tuple[str, tuple[int, ...]]] = []
    start = 0
    for level, count in enumerate(counts):
        level_anchors = anchors[start : start + count]
        start += count
        cx = (level_anchors[:, 0] + level_anchors[:, 2]) / 2
        cy = (level_anchors[:, 1] + level_anchors[:, 3]) / 2
        inside = np.flatnonzero((cx >= 0) & (cx < w) & (cy >= 0) & (cy < h))
        if len(inside) == 0:
            continue
        pick = rng.choice(inside, min(per_level, len(inside)), replace=False)
        c = tuple(int(v) for v in palette[level])
        for a in level_anchors[np.sort(pick)]:
            draw.rectangle([float(a[0]), float(a[1]), float(a[2]) - 1, float(a[3]) - 1], outline=c)
            mx, my = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
            draw.ellipse([mx - 1.5, my - 1.5, mx + 1.5, my + 1.5], fill=c)
        if sizes is not None:
            side = float(sizes[level])
        else:
            wh = level_anchors[:, 2:] - level_anchors[:, :2]
            side = float(np.sqrt(np.median(wh[:, 0] * wh[:, 1])))
        legend.append((f"P{level + 2}: {side:g} px, {count} anchors", c))
    for k, (text, c) in enumerate(legend):  # last, so no anchor covers it
        pos = (3, 3 + k * line)
        draw.rectangle(draw.textbbox(pos, text, font=font), fill=(0, 0, 0))
        draw.text(pos, text, fill=c, font=font)
    return np.asarray(pil)


def plot_class_distribution(
    ax: Axes, counts: Mapping[str, Mapping[str, int]], *, title: str = "instances per class"
) -> Axes:
    """Grouped bars: `counts[split][class_name] -> n` (e.g. from the shard manifests)."""
    splits = list(counts)
    names = list(dict.fromkeys(name for split in splits for name in counts[split]))
    x = np.arange(len(names))
    width = 0.8 / max(1, len(splits))
    palette = colors(len(splits)) / 255.0
    for k, split in enumerate(splits):
        values = [counts[split].get(name, 0) for name in names]
        bars = ax.bar(
            x + (k - (len(splits) - 1) / 2) * width, values, width, label=split, color=palette[k]
        )
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(
        x, names, rotation=45 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center"
    )
    ax.set_ylabel("instances")
    ax.set_title(title)
    ax.legend()
    return ax


def plot_per_category_ap(
    ax: Axes,
    per_category: Mapping[str, Mapping[str, float | None]],
    iou_types: Sequence[str] = ("bbox", "segm"),
    *,
    title: str = "per-category AP (IoU .50:.95)",
) -> Axes:
    """Grouped bars, one group per category, one bar per IoU type: `per_category[name]
    [f"{iou_type}_AP"]` in 0..1 (None: no ground truth, drawn as "n/a")."""
    names = list(per_category)
    x = np.arange(len(names))
    width = 0.8 / max(1, len(iou_types))
    palette = colors(len(iou_types)) / 255.0
    for k, iou_type in enumerate(iou_types):
        values = [per_category[n].get(f"{iou_type}_AP") for n in names]
        heights = [0.0 if v is None else float(v) for v in values]
        offset = (k - (len(iou_types) - 1) / 2) * width
        bars = ax.bar(x + offset, heights, width, label=iou_type, color=palette[k])
        if len(names) <= 20:  # numbers on 80 COCO classes would be unreadable
            texts = ["n/a" if v is None else f"{v:.2f}" for v in values]
            ax.bar_label(bars, labels=texts, fontsize=7)
    many = len(names) > 8
    ax.set_xticks(x, names, rotation=90 if many else 0, fontsize=7 if many else 9)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("AP")
    ax.set_title(title)
    ax.legend()
    return ax


def plot_pr_curves(
    ax: Axes,
    recall: np.ndarray,
    curves: Mapping[str, np.ndarray],
    *,
    title: str = "precision / recall",
) -> Axes:
    """Precision-recall curves: `curves[label]` float [R] precision at `recall` [R] (NaN points
    are not drawn)."""
    styles = ("-", "--", ":", "-.")
    for k, (label, precision) in enumerate(curves.items()):  # matplotlib's colour cycle
        ax.plot(recall, precision, styles[k % len(styles)], color=f"C{k % 10}", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return ax


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


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a matplotlib figure (Agg) -> uint8 [H, W, 3]."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A figure on the Agg canvas, outside pyplot's global state."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


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


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()
