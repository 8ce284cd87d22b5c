"""What a finished sweep leaves behind: the trial table, the picture and the best config.

    records = [TrialRecord(...), ...]            # one per trial, from Tune's ResultGrid
    best = best_trial(records, "segm_AP", "max")
    write_reports(out_dir, records, best, space, "segm_AP", params_doc)

Files under `out_dir` (`sweeps/<name>/`): `trials.csv` and `trials.md` (one row per trial: id,
status, iterations, metrics, sampled values), `sweep.png` (the metric against iterations for
every trial, then against each swept key), `best_params.yaml` (only the swept keys, nested as
in params.yaml, with the `dvc exp run -S` line that applies them) and `summary.json`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from mrcnn.fileio import write_text_atomic
from pipeline.search_space import SearchSpace, dvc_set_args, nested
from pipeline.sweep.records import COMPLETED, FAILED, METRIC_KEYS, STOPPED, TrialRecord


def table_rows(records: Sequence[TrialRecord], space: SearchSpace) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "trial_id": r.trial_id,
            "status": r.status,
            "iteration": r.iteration,
            "planned_iterations": r.planned_iterations,
        }
        row |= {k: r.metrics.get(k, "") for k in METRIC_KEYS}
        row |= {k: _cell(r.values.get(k, "")) for k in space.keys}
        row["error"] = r.error.splitlines()[0][:200] if r.error else ""
        row["mlflow_run_id"] = r.mlflow_run_id
        rows.append(row)
    return rows


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, tuple, dict)) else v


def _text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_reports(
    out: Path,
    records: Sequence[TrialRecord],
    best: TrialRecord | None,
    space: SearchSpace,
    metric: str,
    params_doc: Mapping[str, Any] | None,
    summary: Mapping[str, Any],
) -> dict[str, Path]:
    """Write the sweep's files under `out` (each atomically); returns them by name."""
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(records, space)
    columns = list(rows[0]) if rows else ["trial_id", "status"]
    files = {"trials.csv": out / "trials.csv", "trials.md": out / "trials.md"}
    csv_lines = [",".join(columns)]
    for row in rows:
        csv_lines.append(",".join(_csv(row[c]) for c in columns))
    write_text_atomic(files["trials.csv"], "\n".join(csv_lines) + "\n")
    md = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    md += [
        "| " + " | ".join(_text(row[c]).replace("|", "/") for c in columns) + " |" for row in rows
    ]
    write_text_atomic(files["trials.md"], "\n".join(md) + "\n")
    if best is not None:
        files["best_params.yaml"] = out / "best_params.yaml"
        write_text_atomic(files["best_params.yaml"], best_params_text(best, metric, params_doc))
    files["summary.json"] = out / "summary.json"
    write_text_atomic(files["summary.json"], json.dumps(summary, indent=2, default=str) + "\n")
    files["sweep.png"] = out / "sweep.png"
    plot_sweep(files["sweep.png"], records, best, space, metric)
    return files


def _csv(v: Any) -> str:
    text = _text(v) if not isinstance(v, float) else repr(v)
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text


def best_params_text(best: TrialRecord, metric: str, params_doc: Mapping[str, Any] | None) -> str:
    """best_params.yaml: the swept keys only, nested as in params.yaml, and how to apply them."""
    command = "dvc exp run " + " ".join(dvc_set_args(best.values, params_doc))
    value = best.metrics.get(metric)
    head = [
        f"# Best trial {best.trial_id}: {metric} {value:.4f} after {best.iteration} iterations.",
        "# Apply it to a full training run, then reproduce the pipeline:",
        f"#   {command}",
        "# or copy these keys into params.yaml and run `dvc repro`.",
    ]
    body = yaml.safe_dump(nested(best.values), sort_keys=False, default_flow_style=None)
    return "\n".join(head) + "\n" + body


def plot_sweep(
    path: Path,
    records: Sequence[TrialRecord],
    best: TrialRecord | None,
    space: SearchSpace,
    metric: str,
) -> None:
    """`metric` against iterations for every trial (ASHA's stops show as short curves), then
    against each swept key: a scatter, log-x for log-uniform keys, categories for lists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + len(space.dims)
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), dpi=100, squeeze=False)
    flat = [ax for row in axes for ax in row]
    style = {COMPLETED: ("o", "tab:blue"), STOPPED: ("x", "tab:orange")}

    ax = flat[0]
    for r in records:
        if r.curve:
            xs, ys = zip(*r.curve, strict=True)
            marker, color = style.get(r.status, ("o", "grey"))
            width = 2.5 if r is best else 1.0
            ax.plot(xs, ys, marker=marker, color=color, linewidth=width, markersize=4, alpha=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel(metric)
    ax.set_title("trials (x: stopped early)")
    ax.grid(alpha=0.3)

    # The scatters compare trials at one iteration that all of them reached (ASHA's first rung
    # when some were stopped there): last values would set stopped trials against longer ones.
    scored = [r for r in records if r.status != FAILED and r.curve]
    at = min((r.curve[-1][0] for r in scored), default=0)
    points = {r.trial_id: _value_at(r.curve, at) for r in scored}
    for ax, dim in zip(flat[1:], space.dims, strict=False):
        for status, (marker, color) in style.items():
            group = [r for r in scored if r.status == status]
            xs = [_axis_value(dim, r.values[dim.key]) for r in group]
            ys = [points[r.trial_id] for r in group]
            ax.scatter(xs, ys, marker=marker, c=color, label=status)
        if best is not None and best.trial_id in points:
            ax.scatter(
                [_axis_value(dim, best.values[dim.key])],
                [points[best.trial_id]],
                s=160,
                facecolors="none",
                edgecolors="red",
                label="best",
            )
        _x_axis(ax, dim)
        ax.set_xlabel(dim.key)
        ax.set_ylabel(f"{metric} at iteration {at}")
        ax.grid(alpha=0.3)
    if len(flat) > 1:
        flat[1].legend(fontsize=7)
    for ax in flat[panels:]:
        ax.axis("off")
    failed = sum(r.status == FAILED for r in records)
    fig.suptitle(
        f"{len(records)} trials, {failed} failed" + (f"; best {best.trial_id}" if best else "")
    )
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _value_at(curve: Sequence[tuple[int, float]], iteration: int) -> float:
    """The curve's value at the last point at or before `iteration`."""
    before = [v for i, v in curve if i <= iteration]
    return before[-1] if before else curve[0][1]


def _x_axis(ax: Any, dim: Any) -> None:
    """The declared range as the x-axis (log for log-uniform, with plain labels), or the
    options as categories."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if dim.kind in ("loguniform", "uniform", "randint"):
        lo, hi = dim.values
        if dim.log_scale:
            ax.set_xscale("log")
            ax.set_xlim(lo / 1.1, hi * 1.1)
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            pad = 0.05 * (hi - lo)
            ax.set_xlim(lo - pad, hi + pad)
    elif not dim.numeric:
        ax.set_xticks(range(len(dim.values)))
        ax.set_xticklabels([_short(v) for v in dim.values], fontsize=7, rotation=15)
        ax.set_xlim(-0.5, len(dim.values) - 0.5)


def _axis_value(dim: Any, value: Any) -> Any:
    if dim.numeric:
        return value
    for i, v in enumerate(dim.values):
        if json.dumps(v) == json.dumps(value):
            return i
    return -1


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 24 else text[:21] + "..."


def records_as_dicts(records: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(r).items() if k != "curve"} for r in records]
