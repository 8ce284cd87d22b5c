"""Train reports: `losses.csv` (for `dvc plots`) and `losses.png`, from the run's history."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from mrcnn import visualize as vis
from mrcnn.fileio import save_png_atomic, write_text_atomic


def write_loss_reports(history: list[dict[str, float]], out: Path) -> None:
    """`out/losses.csv`: step, then every loss term and lr (one row per logged step);
    `out/losses.png`: the loss terms on a log scale, the total thicker."""
    keys = ["step"] + sorted({k for r in history for k in r} - {"step"}, key=_order)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(keys)
    for r in history:
        writer.writerow([f"{r.get(k, math.nan):.6g}" for k in keys])
    write_text_atomic(Path(out) / "losses.csv", text.getvalue())

    fig = vis.new_figure(8, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    steps = [r["step"] for r in history]
    for k in keys:
        if k.startswith("loss"):
            values = [r.get(k, math.nan) for r in history]
            ax.plot(steps, values, label=k, linewidth=2.0 if k == "loss" else 1.0)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (log)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png_atomic(vis.figure_to_array(fig), Path(out) / "losses.png")


def _order(key: str) -> tuple[int, str]:
    """The total loss first, the terms next, lr last."""
    return (0 if key == "loss" else 2 if key == "lr" else 1, key)
