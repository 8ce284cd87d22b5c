"""What the inspect and evaluate stages log: inspect's pictures into a run of their own
(`log_inspection`), evaluate's metrics, settings and pictures into the training's run
(`log_evaluation`)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mrcnn.evaluation.coco_eval import ALL_IOU_TYPES
from pipeline.paramfile import to_dict
from pipeline.params import EvaluateParams
from pipeline.tracking import names
from pipeline.tracking.store import flatten, start_run

log = logging.getLogger(__name__)

ARTIFACT_PATH = "evaluate"


def mlflow_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The evaluate stage's numbers (eval.json's sections, `errors`: eval_errors.json,
    `per_category`: reports/evaluate/summary.json) -> MLflow metrics: `val/final/bbox_AP`, ...,
    `val/final/segm_APl`, the error breakdown `val/final/errors/bbox_AP50`,
    `val/final/errors/bbox_dAP_<type>`, `val/final/errors/bbox_fp` / `_fn` (likewise segm), and
    `val/final/per_category/<name>/{bbox,segm}_AP`. COCO's -1 (no ground truth in that area
    range) and per-category None are left out rather than logged as numbers.

    The UI groups charts into sections by the names' "/" prefixes, in alphabetical order: these
    single numbers come after the training's curves (`pipeline.tracking.names`), and the error
    charts (9 per IoU type) get a section beside the AP ones instead of burying them."""
    final = names.FINAL
    out = {}
    for iou_type in ALL_IOU_TYPES:
        for name, value in metrics.get(iou_type, {}).items():
            if value >= 0:
                out[f"{final}{iou_type}_{name}"] = float(value)
    for iou_type, e in metrics.get("errors", {}).items():
        out[f"{final}errors/{iou_type}_AP50"] = float(e["AP50"])
        for name, value in e["dAP"].items():
            out[f"{final}errors/{iou_type}_dAP_{name}"] = float(value)
        for name in ("fp", "fn"):
            out[f"{final}errors/{iou_type}_{name}"] = float(e[name])
    for name, entry in metrics.get("per_category", {}).items():
        safe = re.sub(r"[^\w.\- /]", "_", name)
        for iou_type in ALL_IOU_TYPES:
            value = entry.get(f"{iou_type}_AP")
            if value is not None:
                out[f"{final}per_category/{safe}/{iou_type}_AP"] = float(value)
    return out


def log_evaluation(
    train_run: Path,
    metrics_files: Sequence[Path],
    reports_dir: Path,
    metrics: Mapping[str, Any],
    params: EvaluateParams,
    *,
    tracking_uri: str,
    experiment: str,
    artifact_location: str | None = None,
) -> str:
    """Log into the training's run (`mlflow_run_id` of train_run.json) if the store has it, else a
    new run "evaluate" -> the run id. Settings go in as tags (`evaluate.*`): params of a run
    cannot change, and evaluate may run again on the same training run."""
    import mlflow

    info = json.loads(train_run.read_text()) if train_run.is_file() else {}
    train_run_id = info.get("mlflow_run_id")
    if not train_run_id:
        log.warning(
            "no mlflow_run_id in %s: evaluate logs into a new MLflow run 'evaluate'", train_run
        )
    with start_run(
        tracking_uri,
        experiment,
        run_name="evaluate",
        run_id=train_run_id,
        artifact_location=artifact_location,
    ) as active:
        run_id = active.info.run_id
        if train_run_id and run_id != train_run_id:
            log.warning(
                "training run %s is not in the store: logged into new run %s ('evaluate')",
                train_run_id,
                run_id,
            )
        mlflow.log_metrics(mlflow_metrics(metrics))
        mlflow.set_tags(
            {
                **flatten(to_dict(params), prefix="evaluate."),
                "evaluate.num_images": str(metrics["num_images"]),
                "evaluate.num_detections": str(metrics["num_detections"]),
            }
        )
        for path in metrics_files:  # eval.json, errors.json
            mlflow.log_artifact(str(path), artifact_path=ARTIFACT_PATH)
        # the whole folder (written as a whole, so nothing stale): pictures, pr.csv,
        # summary.json, steps/, the error analysis' errors/, worst/, confusion/, errors.json
        # (the whole breakdowns), image_errors.csv and, when asked, results.json
        mlflow.log_artifacts(str(reports_dir), artifact_path=ARTIFACT_PATH)
    log.info("logged to MLflow run %s (artifacts under %s/)", run_id, ARTIFACT_PATH)
    return run_id


def log_inspection(
    out_dir: Path, source: str, uri: str, experiment: str, artifact_location: str | None = None
) -> str:
    """The pictures (and summary.json) as artifacts `inspect/` of a new MLflow run
    `inspect-<data source>` (tags `stage`, `data.source`) -> its run id."""
    import mlflow

    tags = {"stage": "inspect", "data.source": source}
    name = f"inspect-{source}"
    location = artifact_location
    with start_run(uri, experiment, name, tags=tags, artifact_location=location) as r:
        mlflow.log_artifacts(str(out_dir), artifact_path="inspect")
        return r.info.run_id
