"""Train reports: `losses.csv` (for `dvc plots`) and `losses.png`, from the run's history, and
`results.png`, the whole run on one page (losses, validation AP, lr; the kept checkpoint)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

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


VAL_COLORS = {"segm_AP": "tab:blue", "bbox_AP": "tab:orange", "keypoints_AP": "tab:green"}


def write_results_figure(
    history: list[dict[str, float]],
    validations: list[dict[str, float]],
    summary: dict[str, Any],
    out: Path,
) -> None:
    """`out/results.png`: the run on one page, three panels over the iterations: the loss
    terms (log scale, the total thicker), the validation APs (the selection metric thicker, its
    best starred), the lr; the checkpoint the model was made of is a dashed line through all
    three. `summary` is train.json's dict (stopped, iterations, best_*, kept*, weights)."""
    fig = vis.new_figure(9, 8.5)
    grid = fig.add_gridspec(3, 1, height_ratios=(3, 2.2, 1.3), hspace=0.12)
    losses = fig.add_subplot(grid[0])
    val = fig.add_subplot(grid[1], sharex=losses)
    lr = fig.add_subplot(grid[2], sharex=losses)
    steps = [r["step"] for r in history]
    keys = sorted({k for r in history for k in r if k.startswith("loss")}, key=_order)
    for k in keys:
        values = [r.get(k, math.nan) for r in history]
        total = k == "loss"
        losses.plot(
            steps,
            values,
            label=k,
            linewidth=2.2 if total else 1.0,
            color="black" if total else None,
            alpha=1.0 if total else 0.8,
        )
    if keys:
        losses.set_yscale("log")
        losses.legend(fontsize=8, ncol=3, loc="upper right")
    losses.set_ylabel("training loss (log)")
    _plot_validation(val, validations, summary)
    lr.plot(steps, [r.get("lr", math.nan) for r in history], color="tab:purple")
    lr.set_ylabel("lr")
    lr.set_xlabel("iteration")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    kept = summary.get("kept_iteration")
    for ax in (losses, val, lr):
        ax.grid(alpha=0.3)
        if kept is not None:
            label = f"the model: iteration {kept}" if ax is val else None
            ax.axvline(kept, color="tab:red", linestyle="--", linewidth=1.0, alpha=0.7, label=label)
    if kept is not None:
        val.legend(fontsize=8, loc="lower right")
    for ax in (losses, val):
        ax.tick_params(labelbottom=False)
    fig.suptitle(_headline(summary), fontsize=10.5)
    fig.subplots_adjust(left=0.09, right=0.97, top=0.92, bottom=0.06)
    save_png_atomic(vis.figure_to_array(fig), Path(out) / "results.png")


def _plot_validation(ax, validations: list[dict[str, float]], summary: dict[str, Any]) -> None:
    metric = summary.get("best_metric")
    if not validations:
        ax.text(
            0.5,
            0.5,
            "no periodic validation (train.eval_every: 0)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="gray",
        )
        ax.set_ylabel("val AP")
        return
    steps = [r["step"] for r in validations]
    names = sorted({k for r in validations for k in r} - {"step"}, key=lambda k: k != metric)
    for k in names:
        chosen = k == metric
        ax.plot(
            steps,
            [r.get(k, math.nan) for r in validations],
            marker="o",
            markersize=3.5 if chosen else 2.5,
            linewidth=2.0 if chosen else 1.0,
            color=VAL_COLORS.get(k),
            label=k.replace("_AP", " AP") + (" (ranks checkpoints)" if chosen else ""),
        )
    best, value = summary.get("best_iteration"), summary.get("best_value")
    if best is not None and value is not None:
        ax.plot(
            [best],
            [value],
            marker="*",
            markersize=15,
            color="tab:red",
            zorder=5,
            linestyle="none",
            label=f"best {value:.3f} @ {best}",
        )
    ax.set_ylabel("val AP")
    ax.legend(fontsize=8, loc="lower right")


def _headline(summary: dict[str, Any]) -> str:
    """Two lines, e.g. `stopped: early stop at iteration 300 · EMA weights` and `model: best
    checkpoint, iteration 200 (best val segm AP 0.812 @ 200)`."""
    stopped = summary.get("stopped", "iterations")
    when = f"at iteration {summary.get('iterations')}"
    first = (
        f"ran all {summary.get('iterations')} iterations"
        if stopped == "iterations"
        else f"stopped: {stopped.replace('_', ' ')} {when}"
    )
    kept = summary.get("kept", "last")
    model = f"model: {kept} checkpoint, iteration {summary.get('kept_iteration')}"
    if summary.get("best_value") is not None:
        name = str(summary.get("best_metric", "AP")).replace("_AP", " AP")
        model += f" (best val {name} {summary['best_value']:.3f} @ {summary.get('best_iteration')})"
    weights = "EMA weights" if summary.get("weights") == "ema" else "raw weights"
    return f"{first}  ·  {weights}\n{model}"
