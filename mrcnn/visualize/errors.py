"""Pictures of what went wrong (mrcnn.evaluation's error analysis); each returns an image (uint8
`[H, W, 3]`) and none touches pyplot.

    draw_error_breakdown   TIDE's dAP per error type, bbox beside segm (`error_breakdown`)
    draw_pr_breakdown      COCO analyze()'s stacked PR curves, one panel per object size
    draw_confusion_matrix  the confusion matrix, counts or row-normalised
    draw_error_types       the ground truth beside the detections, coloured by outcome
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mrcnn.evaluation.analyze import AREAS, CURVE_COLORS, CURVES, PrBreakdown
from mrcnn.visualize.figures import figure_to_array, label_font, new_figure
from mrcnn.visualize.instances import draw_instances

# Outcome colours (RGB) of detections and of objects.
TYPE_COLORS = {
    "tp": (40, 190, 70),
    "cls": (255, 140, 0),
    "loc": (240, 220, 0),
    "both": (180, 90, 230),
    "dupe": (0, 190, 230),
    "bkg": (230, 40, 150),
    "ignored": (150, 150, 150),
    "matched": (40, 190, 70),
    "missed": (235, 40, 40),
}
MAIN_ERRORS = ("cls", "loc", "both", "dupe", "bkg", "miss")


def draw_error_breakdown(
    breakdowns: Mapping[str, Mapping[str, Any]], *, title: str = ""
) -> np.ndarray:
    """TIDE's summary as bars: per IoU type (the keys, e.g. "bbox", "segm"), the dAP of the six
    main errors and of fp / fn, with the AP50 in the panel title -> uint8 image."""
    fig = new_figure(4.2 * max(1, len(breakdowns)), 3.6)
    palette = [np.asarray(TYPE_COLORS.get(e, TYPE_COLORS["missed"])) / 255 for e in MAIN_ERRORS]
    for k, (iou_type, b) in enumerate(breakdowns.items()):
        ax = fig.add_subplot(1, len(breakdowns), k + 1)
        names = [*MAIN_ERRORS, "fp", "fn"]
        values = [b["dAP"][e] for e in MAIN_ERRORS] + [b["fp"], b["fn"]]
        colors = [*palette, (0.45, 0.45, 0.45), (0.7, 0.7, 0.7)]
        bars = ax.barh(np.arange(len(names))[::-1], values, color=colors)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=2)
        ax.set_yticks(np.arange(len(names))[::-1], names)
        ax.set_xlim(0, max(1.0, max(values) * 1.25))
        ax.set_xlabel("dAP (AP50 points gained by fixing)")
        ax.set_title(f"{iou_type}: AP50 {b['AP50']:.1f}", fontsize=10)
        ax.axhline(1.5, color="k", lw=0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return figure_to_array(fig)


def draw_pr_breakdown(bd: PrBreakdown, *, title: str = "") -> np.ndarray:
    """analyze()'s picture: per object size the seven curves stacked as filled bands (legend,
    beside each panel: the area under each curve, as analyze() prints it) -> uint8 image, one
    panel per size that has objects (two per row; sizes without objects are named in the
    title, not drawn as empty panels)."""
    curves = bd.curves()  # [7, R, A]
    ap = bd.ap()
    drawn = [a for a in range(len(AREAS)) if not np.isnan(curves[:, :, a]).all()] or [0]
    cols = min(2, len(drawn))
    rows = -(-len(drawn) // cols)
    fig = new_figure(5.6 * cols, 3.6 * rows)
    for k, a in enumerate(drawn):
        area = AREAS[a]
        ax = fig.add_subplot(rows, cols, k + 1)
        c = curves[:, :, a]
        if np.isnan(c).all():
            ax.text(0.5, 0.5, "no objects", ha="center", va="center")
            ax.set_axis_off()
            continue
        lower = np.zeros_like(bd.recall)
        for k, name in enumerate(CURVES):
            v = ap[area][name]
            label = f"[{v:.3f}] {name}"
            ax.fill_between(bd.recall, lower, c[k], color=CURVE_COLORS[k], label=label, lw=0)
            ax.plot(bd.recall, c[k], color="k", lw=0.4)
            lower = np.maximum(lower, c[k])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.0)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"{bd.iou_type}, {area} objects", fontsize=10)
        # outside the axes: inside, it would hide the bands it names
        legend = ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        for handle in legend.legend_handles:  # C75 and C50 are white: outline every swatch
            handle.set_edgecolor("k")
            handle.set_linewidth(0.4)
    missing = [AREAS[a] for a in range(len(AREAS)) if a not in drawn]
    note = f"(no {' / '.join(missing)} objects)" if missing else ""
    if title or note:
        fig.suptitle(" ".join(t for t in (title, note) if t), fontsize=10)
    fig.tight_layout()
    return figure_to_array(fig)


def draw_confusion_matrix(cm: Any, *, normalize: bool = True, title: str = "") -> np.ndarray:
    """A `ConfusionMatrix` as a heat map: rows actual, columns predicted, the last row / column
    background; row-normalised (each row's share, the counts in the cells) or raw counts. Cell
    numbers are written up to 25 classes -> uint8 image."""
    counts = np.asarray(cm.counts)
    values = cm.normalized if normalize else counts.astype(np.float64)
    n = len(cm.names)
    side = min(16.0, 2.5 + 0.35 * n)
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.nan_to_num(values), cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fontsize = 9 if n <= 12 else 7 if n <= 25 else 5
    ax.set_xticks(np.arange(n), cm.names, rotation=90, fontsize=fontsize)
    ax.set_yticks(np.arange(n), cm.names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if n <= 25:
        top = np.nanmax(values) if np.isfinite(values).any() else 1.0
        for r in range(n):
            for c in range(n):
                if counts[r, c] == 0:
                    continue
                text = f"{values[r, c]:.2f}\n({counts[r, c]})" if normalize else str(counts[r, c])
                dark = np.nan_to_num(values[r, c]) > 0.6 * top
                ax.text(c, r, text, ha="center", va="center", fontsize=fontsize - 2,
                        color="white" if dark else "black")  # fmt: skip
    kind = "row-normalised" if normalize else "counts"
    ax.set_title(
        title or f"confusion ({kind}): IoU {cm.iou_thresh:g}, score >= {cm.score_thresh:g}",
        fontsize=10,
    )
    fig.tight_layout()
    return figure_to_array(fig)


def draw_error_types(
    image: np.ndarray,
    detail: Mapping[str, Any],
    class_names: Mapping[int, str] | None = None,
    *,
    det_masks: np.ndarray | None = None,
    gt_masks: np.ndarray | None = None,
    score_thresh: float = 0.0,
    max_detections: int = 30,
) -> np.ndarray:
    """The ground truth (left) beside the detections (right) of one image, coloured by outcome
    (`mrcnn.evaluation.image_detail`): objects green when matched, red and drawn thick when
    missed, orange / yellow when a cls / loc error is why; detections by type (TYPE_COLORS).
    A legend strip is added below -> uint8 [H + legend, 2 W + gap, 3].

    class_names: {category_id: name} for the captions (default the ids)
    det_masks / gt_masks: bool [n, H, W] / [m, H, W] in detail's order (optional)
    Detections scoring below score_thresh are left out, and only the first max_detections.
    """
    dets, objs = detail["detections"], detail["objects"]
    keep = np.flatnonzero(np.asarray(dets["scores"]) >= score_thresh)[:max_detections]
    ids = sorted({int(c) for c in dets["category_ids"]} | {int(c) for c in objs["category_ids"]})
    names = [str((class_names or {}).get(c, c)) for c in ids]
    label = {c: k for k, c in enumerate(ids)}
    status = list(objs["status"])
    left = draw_instances(
        image,
        np.asarray(objs["boxes"]).reshape(-1, 4),
        None if gt_masks is None else np.asarray(gt_masks),
        [label[int(c)] for c in objs["category_ids"]],
        names,
        instance_colors=np.asarray([TYPE_COLORS[s] for s in status], np.uint8).reshape(-1, 3),
    )
    left = _thick_boxes(
        left, np.asarray(objs["boxes"]).reshape(-1, 4)[np.asarray(status) == "missed"]
    )
    types = [dets["types"][k] for k in keep]
    right = draw_instances(
        image,
        np.asarray(dets["boxes"]).reshape(-1, 4)[keep],
        None if det_masks is None else np.asarray(det_masks)[keep],
        [label[int(dets["category_ids"][k])] for k in keep],
        names,
        np.asarray(dets["scores"])[keep],
        instance_colors=np.asarray([TYPE_COLORS[t] for t in types], np.uint8).reshape(-1, 3),
    )
    h, w = left.shape[:2]
    gap = max(4, w // 100)
    panels = np.full((h, 2 * w + gap, 3), 255, np.uint8)
    panels[:, :w], panels[:, w + gap :] = left, right
    return np.concatenate([panels, _legend(panels.shape[1], max(18, h // 20))], axis=0)


def _thick_boxes(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    if len(boxes) == 0:
        return image
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    width = max(2, min(image.shape[:2]) // 150)
    for x1, y1, x2, y2 in boxes.tolist():
        draw.rectangle(
            [x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=TYPE_COLORS["missed"], width=width
        )
    return np.asarray(pil)


def _legend(width: int, height: int) -> np.ndarray:
    """A strip naming the colours: objects on the left, detection types on the right."""
    pil = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(pil)
    font = label_font(max(9, height * 2 // 3))
    x = 4.0
    items: Sequence[str] = ("matched", "missed", "|", "tp", "cls", "loc", "both", "dupe", "bkg")
    for name in items:
        if name == "|":
            x += height
            continue
        draw.rectangle([x, 3, x + height - 6, height - 3], fill=TYPE_COLORS[name])
        x += height - 2
        draw.text((x, 1), name, fill=(0, 0, 0), font=font)
        x += draw.textlength(name, font=font) + height // 2
    return np.asarray(pil)
