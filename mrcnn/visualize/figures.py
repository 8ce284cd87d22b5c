"""Drawing helpers (palette, font, zoom) and matplotlib figures outside pyplot's global state,
with the plots of the reports: class distribution, per-category AP, precision / recall curves."""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import ImageFont


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


def drawing_sizes(h: int, w: int) -> tuple[int, int]:
    """(line width, font size) in px for boxes and captions drawn on an h x w image: they keep
    their share of the picture, so a 4000 x 3000 photo gets 6 px lines and 75 px captions
    (1 px lines vanish when it is shown scaled down) and a 128 px thumbnail 1 px and 10 px
    (enlarge small images first, `zoom`, for captions that do not cover them)."""
    side = min(h, w)
    return max(1, round(side / 500)), max(10, side // 40)


def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


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
