"""Stage `export`: log the trained model to MLflow, register it, move `champion` on improvement.

    python -m pipeline.export [--params params.yaml] [--model DIR] [--out DIR] ...

1. Reads the final model (`mrcnn.weights.save` format), `metrics/eval.json` and, if present,
   `metrics/train_run.json` (its `mlflow_run_id` is the run the model is logged into; without
   it, or when the store has no such run, a new run named "export" is started and the log says
   so).
2. Logs the model without pickle and registers a new version of `export.registered_model`,
   tagged with its metrics and provenance (`pipeline.tracking.registry`).
3. Moves alias `champion` to it only when its `export.champion_metric` (default `segm.AP`) is
   strictly greater than the current champion's; otherwise the new version gets `challenger`.
4. With `export.portable: true`, writes `models/export/model.onnx`, the whole inference graph
   (`mrcnn.export.to_onnx`), checks it against eager PyTorch on up to 8 val images (the shards'
   val split; seeded images when there is none) and logs it to the run; a file whose
   detections do not match is removed and the export fails.
5. Writes `models/export/export.json`: version, alias, URIs, metric, decision.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrcnn.fileio import file_digest, write_json_atomic
from pipeline import layout
from pipeline.params import SPLITS, ExportParams, MlflowParams, load_section
from pipeline.tracking import registry, store

log = logging.getLogger(__name__)

PORTABLE_FILE = "model.onnx"
CHECK_IMAGES = 8  # val images the ONNX file is checked on


@dataclass(frozen=True)
class ExportPaths:
    """What export reads and writes."""

    model_dir: Path
    eval_metrics: Path
    train_run: Path  # train_run.json: the MLflow run of the training
    train_metrics: Path
    out_dir: Path
    params_file: Path | None = None
    manifests: tuple[tuple[str, Path], ...] = ()  # (split, manifest.json)


def run(
    paths: ExportPaths,
    params: ExportParams,
    *,
    tracking_uri: str,
    experiment: str,
    artifact_location: str | None = None,
) -> dict[str, Any]:
    """Log, register and alias the model; returns what `export.json` holds."""
    import mlflow

    from mrcnn import export as portable_export
    from mrcnn import weights

    evals = read_json(paths.eval_metrics, "run `python -m pipeline.evaluate` (or `dvc repro`)")
    value = registry.metric_value(evals, params.champion_metric, paths.eval_metrics)
    train_run = read_json(paths.train_run) if paths.train_run.is_file() else {}
    train = read_json(paths.train_metrics) if paths.train_metrics.is_file() else {}
    if not train_run:
        log.warning("%s not found: the model gets a run of its own", paths.train_run)
    model = weights.load(paths.model_dir)  # fails early, with a clear message, on a bad folder

    tags = {
        **registry.metric_tags(evals),
        **registry.provenance_tags(paths.manifests, paths.params_file),
        "weights_md5": file_digest(paths.model_dir / weights.WEIGHTS_FILE, "md5"),
    }
    if "iterations" in train:
        tags["train.iterations"] = str(train["iterations"])
    train_run_id = train_run.get("mlflow_run_id")
    with store.start_run(
        tracking_uri,
        experiment,
        run_name="export",
        run_id=train_run_id,
        artifact_location=artifact_location,
    ) as active:
        run_id = active.info.run_id
        into_training_run = run_id == train_run_id
        if not into_training_run:
            why = (
                f"training run {train_run_id} is not in the store" if train_run_id else "no run id"
            )
            log.warning("logging the model into a new run %s (%s)", run_id, why)
        portable = None
        (paths.out_dir / PORTABLE_FILE).unlink(missing_ok=True)  # never leave a stale file
        if params.portable:
            portable = portable_export.export_portable(
                model, paths.out_dir / PORTABLE_FILE, val_images(paths.manifests, CHECK_IMAGES)
            )
            mlflow.log_artifact(portable["file"], artifact_path="portable")
            tags["portable.onnx"] = f"runs:/{run_id}/portable/{PORTABLE_FILE}"
            tags["portable.matched_fraction"] = f"{portable['matched_fraction']:.4f}"
            tags["portable.max_box_diff"] = f"{portable['max_box_diff']:.3g}"
        info = registry.log_model(paths.model_dir)
        version = registry.register(params.registered_model, info.model_uri, tags)
        alias, previous = registry.assign_alias(
            params.registered_model, version, params.champion_metric, value
        )
        mlflow.set_tags(
            {
                "export.registered_model": params.registered_model,
                "export.version": version,
                "export.alias": alias,
            }
        )
    result = {
        "registered_model": params.registered_model,
        "version": int(version),
        "alias": alias,
        "model_uri": f"models:/{params.registered_model}/{version}",
        "alias_uri": f"models:/{params.registered_model}@{alias}",
        "logged_model_uri": info.model_uri,
        "run_id": run_id,
        "logged_into_training_run": into_training_run,
        "tracking_uri": store.redact(tracking_uri),
        "metric": {"name": params.champion_metric, "value": value},
        "previous_champion": previous,
        "portable": portable,
        "tags": tags,
    }
    write_json_atomic(paths.out_dir / "export.json", result)
    log.info(
        "registered %s version %s as %s (%s = %.4f; previous champion %s)",
        params.registered_model,
        version,
        alias,
        params.champion_metric,
        value,
        previous,
    )
    return result


def val_images(manifests: tuple[tuple[str, Path], ...], limit: int) -> list | None:
    """Up to `limit` val images (uint8 H x W x 3, the real image inside each padded frame), or
    None when there are no val shards."""
    from mrcnn.data.shards import ShardDataset

    for split, manifest in manifests:
        if split == "val" and manifest.is_file():
            ds = ShardDataset(manifest.parent)
            out = []
            for i in range(min(limit, len(ds))):
                sample = ds[i]
                y1, x1, y2, x2 = (int(v) for v in sample.window)
                out.append(sample.image[y1:y2, x1:x2])
            return out or None
    return None


def read_json(path: Path, how_to_create: str = "") -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist" + (f"; {how_to_create}" if how_to_create else "")
        )
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=layout.PARAMS)
    ap.add_argument("--model", type=Path, default=layout.MODEL)
    ap.add_argument("--eval-metrics", type=Path, default=layout.EVAL_METRICS)
    ap.add_argument("--train-metrics", type=Path, default=layout.TRAIN_METRICS)
    ap.add_argument("--train-run", type=Path, default=layout.TRAIN_RUN)
    ap.add_argument("--shards", type=Path, default=layout.SHARDS)
    ap.add_argument("--out", type=Path, default=layout.EXPORT)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow_params = load_section(args.params, "mlflow", MlflowParams)
    params = load_section(args.params, "export", ExportParams)
    uri = store.tracking_uri(args.params, mlflow_params.tracking_uri)
    root = layout.project_root(args.params)
    shards = layout.under(root, args.shards)
    paths = ExportPaths(
        model_dir=layout.under(root, args.model),
        eval_metrics=layout.under(root, args.eval_metrics),
        train_run=layout.under(root, args.train_run),
        train_metrics=layout.under(root, args.train_metrics),
        out_dir=layout.under(root, args.out),
        params_file=Path(args.params).resolve(),
        manifests=tuple((s, shards / s / "manifest.json") for s in SPLITS),
    )
    try:
        store.check_tracking_uri(uri)
        run(
            paths,
            params,
            tracking_uri=uri,
            experiment=mlflow_params.experiment,
            artifact_location=store.default_artifact_location(args.params, uri, mlflow_params),
        )
    except (registry.ExportError, FileNotFoundError, store.TrackingError) as e:
        log.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    main()
