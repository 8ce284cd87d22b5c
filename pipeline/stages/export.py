"""Stage `export`: log the trained model to MLflow, register it, move `champion` on improvement.

    python -m pipeline.export [--params params.yaml] [--model DIR] [--out DIR] ...

1. Reads the final model (`mrcnn.weights.save` format), `metrics/eval.json` and, if present,
   `metrics/train_run.json` (its `mlflow_run_id` is the run the model is logged into; without
   it, or when the store has no such run, a new run named "export" is started and the log says
   so).
2. Logs the model without pickle and registers a new version of `export.registered_model`,
   with a description (data, preset, AP) and a few tags (`pipeline.tracking.registry`). Weights
   already registered (same sha256) are not registered again: that version gets the new
   metrics and the aliases. `export.register: false` (and, by default, `dvc exp run`) logs
   the model to its run without registering it.
3. Moves alias `champion` to the version only when its `export.champion_metric` (default
   `segm.AP`) is strictly greater than the current champion's; otherwise it gets `challenger`.
4. With `export.portable: true`, writes `models/export/model.onnx`, the whole inference graph
   (`mrcnn.export.to_onnx`), checks it against eager PyTorch on up to 8 val images (the shards'
   val split; seeded images when there is none) and logs it to the run; a file whose
   detections do not match is removed and the export fails. The registered model carries the
   checked file too (artifact `onnx`), and runs it when `export.pyfunc_backend` is onnxruntime.
   A model without a mask head gets no file (the graph outputs masks): a warning, and
   `export.json` says `"portable": {"skipped": ...}`.
5. Writes `models/export/export.json`: version, alias, URIs, metric, decision.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrcnn.data.layout import MANIFEST, SPLITS
from mrcnn.fileio import file_digest, write_json_atomic
from pipeline import cli, layout
from pipeline.paramfile import DEFAULT_PRESET, load_params, load_section
from pipeline.params import ExportParams, MlflowParams
from pipeline.tracking import active, registry, store

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
    from mrcnn import export as portable_export
    from mrcnn import weights
    from pipeline.tracking import pyfunc

    evals = read_json(paths.eval_metrics, "run `python -m pipeline.evaluate` (or `dvc repro`)")
    value = registry.metric_value(evals, params.champion_metric, paths.eval_metrics)
    train_run = read_json(paths.train_run) if paths.train_run.is_file() else {}
    train = read_json(paths.train_metrics) if paths.train_metrics.is_file() else {}
    if not train_run:
        log.warning("%s not found: the model gets a run of its own", paths.train_run)
    model = weights.load(paths.model_dir)  # fails early, with a clear message, on a bad folder
    heads = pyfunc.model_heads(model)
    if params.pyfunc_backend == "onnxruntime" and heads != pyfunc.Heads():
        raise registry.ExportError(
            f"export.pyfunc_backend: onnxruntime serves boxes and masks only, and this model has "
            f"{heads}: set export.pyfunc_backend: torch"
        )

    sha256 = file_digest(paths.model_dir / weights.WEIGHTS_FILE)
    info = {
        "data": train_run.get("data_source", ""),
        "preset": model_preset(paths.params_file),
        "train.run": train_run.get("run_name", ""),
        "train.iterations": str(train.get("iterations", "")),
        registry.WEIGHTS_TAG: sha256,
    }
    tags = registry.version_tags(
        evals, params.champion_metric, info, paths.manifests, paths.params_file
    )
    description = registry.describe(evals, info, paths.manifests)
    register, register_why = registry.should_register(params.register)
    train_run_id = train_run.get("mlflow_run_id")
    with store.start_run(
        tracking_uri,
        experiment,
        run_name="export",
        run_id=train_run_id,
        artifact_location=artifact_location,
    ) as logged:
        run_id = logged.info.run_id
        into_training_run = run_id == train_run_id
        if not into_training_run:
            why = (
                f"training run {train_run_id} is not in the store" if train_run_id else "no run id"
            )
            log.warning("logging the model into a new run %s (%s)", run_id, why)
        portable, onnx_file = None, None
        (paths.out_dir / PORTABLE_FILE).unlink(missing_ok=True)  # never leave a stale file
        if params.portable and not heads.masks:
            why = "the graph outputs masks and this model has no mask head"
            log.warning("export.portable: %s not written: %s", PORTABLE_FILE, why)
            portable = {"skipped": why}
        elif params.portable:
            portable = portable_export.export_portable(
                model, paths.out_dir / PORTABLE_FILE, val_images(paths.manifests, CHECK_IMAGES)
            )
            onnx_file = Path(portable["file"])
            portable["sha256"] = file_digest(onnx_file)
            portable["heads_not_in_graph"] = [
                name
                for name, present in (
                    ("keypoints", heads.keypoints > 0),
                    ("mask_scores", heads.mask_scores),
                )
                if present
            ]
            if portable["heads_not_in_graph"]:
                log.warning(
                    "%s holds boxes, scores, labels and masks only: this model's %s are not in "
                    "it (the torch backend serves them)",
                    PORTABLE_FILE,
                    " and ".join(portable["heads_not_in_graph"]),
                )
            active.log_artifact(onnx_file, artifact_path="portable")
            tags["portable.onnx"] = f"runs:/{run_id}/portable/{PORTABLE_FILE}"
            tags["portable.matched_fraction"] = f"{portable['matched_fraction']:.4f}"
            tags["portable.max_box_diff"] = f"{portable['max_box_diff']:.3g}"
        name = params.registered_model
        version = registry.find_version(name, sha256) if register else None
        new_version = register and version is None
        logged_uri = None
        if version is None:  # weights not registered yet (or not registering): log them
            logged_uri = registry.log_model(
                paths.model_dir,
                heads=heads,
                onnx_file=onnx_file,
                backend=params.pyfunc_backend,
            ).model_uri
        if new_version:
            version = registry.register(name, logged_uri, tags, description)
        elif version is not None:
            log.info("these weights are %s version %s already: aliases only", name, version)
            registry.update_version(name, version, tags, description)
        alias, previous = None, None
        if version is not None:
            alias, previous = registry.assign_alias(name, version, params.champion_metric, value)
            active.set_tags(
                {"export.registered_model": name, "export.version": version, "export.alias": alias}
            )
        else:
            log.info("not registered: %s", register_why)
            active.set_tags({"export.registered": f"no: {register_why}"})
    result = {
        "registered_model": params.registered_model,
        "registered": version is not None,
        "why": register_why,
        "new_version": new_version,
        "version": int(version) if version is not None else None,
        "alias": alias,
        "model_uri": f"models:/{name}/{version}" if version else None,
        "alias_uri": f"models:/{name}@{alias}" if alias else None,
        "logged_model_uri": logged_uri,
        "run_id": run_id,
        "logged_into_training_run": into_training_run,
        "tracking_uri": store.redact(tracking_uri),
        "metric": {"name": params.champion_metric, "value": value},
        "previous_champion": previous,
        "portable": portable,
        "tags": tags,
        "description": description,
    }
    write_json_atomic(paths.out_dir / "export.json", result)
    if version is not None:
        log.info(
            "%s version %s is %s (%s = %.4f; previous champion %s)",
            name,
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


def model_preset(params_file: Path | None) -> str:
    """`model.preset` of the params file training used (the default when it names none)."""
    if params_file is None or not params_file.is_file():
        return ""
    return str((load_params(params_file).get("model") or {}).get("preset", DEFAULT_PRESET))


def read_json(path: Path, how_to_create: str = "") -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist" + (f"; {how_to_create}" if how_to_create else "")
        )
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> None:
    ap = cli.parser(__doc__)
    ap.add_argument("--model", type=Path, default=layout.MODEL)
    ap.add_argument("--eval-metrics", type=Path, default=layout.EVAL_METRICS)
    ap.add_argument("--train-metrics", type=Path, default=layout.TRAIN_METRICS)
    ap.add_argument("--train-run", type=Path, default=layout.TRAIN_RUN)
    ap.add_argument("--shards", type=Path, default=layout.SHARDS)
    ap.add_argument("--out", type=Path, default=layout.EXPORT)
    args = ap.parse_args(argv)
    cli.run_main(args, lambda: _main(args), (registry.ExportError, store.TrackingError))


def _main(args: argparse.Namespace) -> None:
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
        manifests=tuple((s, shards / s / MANIFEST) for s in SPLITS),
    )
    store.check_tracking_uri(uri)
    run(
        paths,
        params,
        tracking_uri=uri,
        experiment=mlflow_params.experiment,
        artifact_location=store.default_artifact_location(args.params, uri, mlflow_params),
    )


if __name__ == "__main__":
    main()
