"""pipeline.tracking.names: a training run's metrics reach the MLflow UI's run page with the
loss and lr curves first and the single-value AP numbers after.

`ui_sections` is the rule of MLflow 3.x's run page (`RunsChartsCardConfig.
getBaseChartAndSectionConfigs` in mlflow/server/js): a chart's section is its name before the
last "/"; named sections in alphabetical order, then "Model metrics" (names without "/"), then
"System metrics" (`system/`). tests/pipeline/test_ui.py checks the real UI in a browser."""

from __future__ import annotations

from pipeline.tracking import names
from pipeline.tracking.runs import mlflow_metrics

MODEL_METRICS, SYSTEM_METRICS = "Model metrics", "System metrics"


def ui_sections(keys: list[str]) -> list[tuple[str, list[str]]]:
    """[(section, [chart title, ...]), ...] in the order the run page shows them."""
    sections: dict[str, list[str]] = {}
    for key in sorted(keys):
        head, _, title = key.rpartition("/")
        if not head:
            head = MODEL_METRICS
        elif f"{head}/" == "system/":
            head = SYSTEM_METRICS
        sections.setdefault(head, []).append(title)
    named = sorted(s for s in sections if s not in (MODEL_METRICS, SYSTEM_METRICS))
    order = [*named, *(s for s in (MODEL_METRICS, SYSTEM_METRICS) if s in sections)]
    return [(s, sections[s]) for s in order]


def run_metric_names() -> list[str]:
    """Every name a trained, validated and evaluated run holds, as our code makes them."""
    losses = {"loss": 1.0, "loss_box": 0.5, "loss_mask": 0.5, "lr": 0.01}
    keys = [*names.prefixed(names.TRAIN, losses)]
    keys += [*names.prefixed(names.PERF, {"images_per_s": 9.0, "memory_gb": 1.0})]
    keys += [*names.prefixed(names.SUMMARY, {"wall_s": 60.0, "best_iteration": 20})]
    keys += [*names.prefixed(names.VAL, {"bbox_AP": 0.4, "segm_AP": 0.3})]
    ap = {"AP": 0.5, "AP50": 0.8, "AP75": 0.5, "APs": 0.2, "APm": 0.5, "APl": 0.6}
    dap = dict.fromkeys(("cls", "loc", "both", "dupe", "bkg", "miss"), 1.0)
    errors = {"AP50": 50.0, "dAP": dap, "fp": 3.0, "fn": 2.0}
    evals = {
        "bbox": ap,
        "segm": ap,
        "errors": {"bbox": errors, "segm": errors},
        "per_category": {"circle": {"bbox_AP": 0.5, "segm_AP": 0.4}},
    }
    keys += [*mlflow_metrics(evals)]
    return keys + ["system/cpu_utilization_percentage"]


def test_losses_and_lr_come_first_and_the_ap_numbers_after() -> None:
    sections = ui_sections(run_metric_names())
    assert [s for s, _ in sections] == [
        "train",
        "train/perf",
        "train/summary",
        "val",
        "val/final",
        "val/final/errors",
        "val/final/per_category/circle",
        SYSTEM_METRICS,
    ]
    assert sections[0][1] == ["loss", "loss_box", "loss_mask", "lr"]
    assert sections[3][1] == ["bbox_AP", "segm_AP"]  # the validation curves
    assert sections[4][1][:2] == ["bbox_AP", "bbox_AP50"]  # the final numbers


def test_loss_names_read_back_with_or_without_the_prefix() -> None:
    assert [names.short(k) for k in ("train/loss_box", "loss_box", "train/lr")] == [
        "loss_box",
        "loss_box",
        "lr",
    ]
    assert names.is_loss_or_lr("train/loss") and names.is_loss_or_lr("lr")
    assert not names.is_loss_or_lr("train/perf/images_per_s")
    assert not names.is_loss_or_lr("train/summary/wall_s")
