"""Pictures of anchors: the RPN's positive, negative and neutral anchors on an image, and the
anchors of each pyramid level (Faster R-CNN sec. 3.1.2; matterport's inspect_data notebook)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from mrcnn.visualize.figures import colors, drawing_sizes, label_font

POSITIVE, NEGATIVE, NEUTRAL = 1, 0, -1  # anchor labels (RPN targets, Faster R-CNN sec. 3.1.2)


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
    keeps the picture readable. Ground-truth boxes, if given, are drawn in white, thicker. The
    legend names every kind drawn, ground truth included; lines and text grow with the image
    (`drawing_sizes`).
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(anchor_labels)
    pil = Image.fromarray(np.array(image, dtype=np.uint8, copy=True))
    draw = ImageDraw.Draw(pil)
    unit, size = drawing_sizes(pil.size[1], pil.size[0])
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
                width=width * unit,
            )
        legend.append(
            (f"{name}: {total}" + (f" ({len(idx)} shown)" if len(idx) < total else ""), colour)
        )
    gt = np.asarray(gt_boxes if gt_boxes is not None else np.zeros((0, 4))).reshape(-1, 4)
    for b in gt:
        draw.rectangle(
            [float(b[0]), float(b[1]), float(b[2]) - 1, float(b[3]) - 1],
            outline=(255, 255, 255),
            width=3 * unit,
        )
    if gt_boxes is not None:
        legend.append((f"ground truth: {len(gt)}", (255, 255, 255)))
    font = label_font(size)
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
    unit, size = drawing_sizes(h, w)
    font = label_font(size)
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
            box = [float(a[0]), float(a[1]), float(a[2]) - 1, float(a[3]) - 1]
            draw.rectangle(box, outline=c, width=unit)
            mx, my, r = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2, 1.5 * unit
            draw.ellipse([mx - r, my - r, mx + r, my + r], fill=c)
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
