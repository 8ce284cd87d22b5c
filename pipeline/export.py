"""Stage `export`: log the trained model to MLflow, register it, move `champion` on improvement.

    python -m pipeline.export --params params.yaml

1. Reads `models/final/` (`mrcnn.weights.save` format), `metrics/eval.json` and, if present,
   `metrics/train.json` (its `mlflow_run_id` is the run the model is logged into; without it, or
   when the store has no such run, a new run named "export" is started and the log says so).
2. Logs the model without pickle: MLflow "models from code" (`pipeline/mlflow_model.py`), the
   `mrcnn` package as code, the weights folder as the `model` artifact.
3. Registers a new version of `export.registered_model` and tags it with its metrics
   (`metrics.segm.AP`, ...), the md5 of the shard manifests and of the params sections used for
   training, and the weights' md5.
4. Moves alias `champion` to it only when its `export.champion_metric` (default `segm.AP`) is
   strictly greater than the current champion's; otherwise the new version gets `challenger`.
5. With `export.portable: true`, writes `models/export/backbone_rpn.onnx` (see `mrcnn.export`
   for exactly what it holds), checked against eager PyTorch, and logs it to the run.
6. Writes `models/export/export.json`: version, alias, URIs, metric, decision.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from mrcnn.fileio import write_json_atomic
from pipeline.params import ExportParams, MlflowParams, load_section
from pipeline.tracking import (
    TrackingError,
    check_tracking_uri,
    default_artifact_location,
    project_root,
    redact,
    start_run,
    tracking_uri,
)

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
MODEL_ARTIFACT = "model"  # the key `MaskRCNNModel.load_context` reads
PORTABLE_FILE = "backbone_rpn.onnx"
PARAM_SECTIONS = ("shards", "model", "train")  # the params.yaml sections training used
METRIC_TAG = "metrics."
_REQUIREMENTS = (
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "pillow",
    "pycocotools",
    "safetensors",
    "tqdm",
)


@dataclass(frozen=True)
class ExportPaths:
    """What export reads and writes (absolute, or relative to the working directory)."""

    model_dir: Path
    eval_metrics: Path
    train_metrics: Path
    out_dir: Path
    params_file: Path | None = None
    manifests: tuple[tuple[str, Path], ...] = ()  # (split, manifest.json)

    @classmethod
    def under(cls, root: Path, params_file: Path | None = None) -> ExportPaths:
        """The project layout: models/final, metrics/*.json, data/shards/*/manifest.json."""
        return cls(
            model_dir=root / "models" / "final",
            eval_metrics=root / "metrics" / "eval.json",
            train_metrics=root / "metrics" / "train.json",
            out_dir=root / "models" / "export",
            params_file=params_file,
            manifests=tuple(
                (s, root / "data" / "shards" / s / "manifest.json") for s in ("train", "val")
            ),
        )


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

    evals = _read_json(paths.eval_metrics, "run `python -m pipeline.evaluate` (or `dvc repro`)")
    value = metric_value(evals, params.champion_metric, paths.eval_metrics)
    train = _read_json(paths.train_metrics) if paths.train_metrics.is_file() else {}
    if not train:
        log.warning("%s not found: the model gets a run of its own", paths.train_metrics)
    model = weights.load(paths.model_dir)  # fails early, with a clear message, on a bad folder

    tags = {
        **metric_tags(evals),
        **provenance_tags(paths),
        "weights_md5": md5_file(paths.model_dir / weights.WEIGHTS_FILE),
    }
    if "iterations" in train:
        tags["train.iterations"] = str(train["iterations"])
    train_run = train.get("mlflow_run_id")
    with start_run(
        tracking_uri,
        experiment,
        run_name="export",
        run_id=train_run,
        artifact_location=artifact_location,
    ) as active:
        run_id = active.info.run_id
        into_training_run = run_id == train_run
        if not into_training_run:
            why = f"training run {train_run} is not in the store" if train_run else "no run id"
            log.warning("logging the model into a new run %s (%s)", run_id, why)
        portable = None
        (paths.out_dir / PORTABLE_FILE).unlink(missing_ok=True)  # never leave a stale file
        if params.portable:
            portable = portable_export.export_portable(model, paths.out_dir / PORTABLE_FILE)
            mlflow.log_artifact(portable["file"], artifact_path="portable")
            tags["portable.onnx"] = f"runs:/{run_id}/portable/{PORTABLE_FILE}"
            tags["portable.worst_relative_diff"] = f"{portable['worst_relative']:.3g}"
        info = log_model(paths.model_dir)
        version = register(params.registered_model, info.model_uri, tags)
        alias, previous = assign_alias(
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
        "tracking_uri": redact(tracking_uri),
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


def log_model(model_dir: Path) -> Any:
    """Log the saved model as a models-from-code pyfunc into the active run -> ModelInfo."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    import mrcnn
    from mrcnn import weights
    from pipeline.mlflow_model import INPUT_COLUMN, OUTPUT_COLUMNS

    signature = ModelSignature(
        inputs=Schema([ColSpec("binary", INPUT_COLUMN)]),
        outputs=Schema([ColSpec(t, name) for name, t in OUTPUT_COLUMNS]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        # Only the two files `mrcnn.weights.load` reads travel with the model.
        staged = Path(tmp) / "weights"
        staged.mkdir()
        for name in (weights.WEIGHTS_FILE, weights.CONFIG_FILE):
            shutil.copy2(model_dir / name, staged / name)
        with warnings.catch_warnings():
            # An input example would run the model while logging; the signature says enough.
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            warnings.filterwarnings("ignore", message=".*Add type hints to the `predict`.*")
            return mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_CODE),
                artifacts={MODEL_ARTIFACT: str(staged)},
                code_paths=[str(Path(mrcnn.__file__).parent)],
                pip_requirements=requirements(),
                signature=signature,
            )


def requirements() -> list[str]:
    """Pinned requirements of the logged model (local version labels such as +cu130 dropped)."""
    out = []
    for dist in ("mlflow", *_REQUIREMENTS):
        try:
            out.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


def register(name: str, model_uri: str, tags: dict[str, str]) -> str:
    """A new version of registered model `name` (created if missing) -> its version."""
    import mlflow

    mv = mlflow.register_model(model_uri, name, tags=tags)
    return str(mv.version)


def assign_alias(
    name: str, version: str, metric: str, value: float
) -> tuple[str, dict[str, Any] | None]:
    """Give `version` alias champion if `value` beats the champion's metric, else challenger.

    The champion's value is read from its version tag `metrics.<metric>`; a champion without
    that tag (registered by other means) is replaced, with a warning.
    -> (alias, {"version", "value"} of the champion before, or None if there was none).
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    aliases = client.get_registered_model(name).aliases
    previous = None
    if CHAMPION in aliases and str(aliases[CHAMPION]) != str(version):
        champ = client.get_model_version(name, str(aliases[CHAMPION]))
        raw = champ.tags.get(METRIC_TAG + metric)
        previous = {"version": int(champ.version), "value": float(raw) if raw else None}
        if raw is None:
            log.warning(
                "champion %s v%s has no tag %s%s; the new version replaces it",
                name,
                champ.version,
                METRIC_TAG,
                metric,
            )
    alias = CHAMPION if previous is None or is_improvement(value, previous["value"]) else CHALLENGER
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "export.decision", alias)
    return alias, previous


def is_improvement(value: float, champion: float | None) -> bool:
    """Strictly better (ties keep the champion); no champion value counts as no champion."""
    return champion is None or value > champion


class ExportError(RuntimeError):
    """Export cannot go on; the message says why and what to do."""


def metric_value(evals: dict[str, Any], key: str, where: Path | str = "eval.json") -> float:
    """`evals["segm"]["AP"]` for key "segm.AP"; raises `ExportError` naming the key."""
    node: Any = evals
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ExportError(f"{where} has no '{key}' (export.champion_metric in params.yaml)")
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise ExportError(f"'{key}' in {where} is not a number: {node!r}")
    return float(node)


def metric_tags(evals: dict[str, Any]) -> dict[str, str]:
    """`{"bbox": {"AP": 0.5}, "segm": {...}}` -> `{"metrics.bbox.AP": "0.5", ...}` (numbers at
    the first two levels only; per-category tables stay in the reports)."""
    tags = {}
    for section, stats in evals.items():
        if isinstance(stats, dict):
            for k, v in stats.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    tags[f"{METRIC_TAG}{section}.{k}"] = repr(float(v))
        elif isinstance(stats, (int, float)) and not isinstance(stats, bool):
            tags[f"{METRIC_TAG}{section}"] = repr(float(stats))
    return tags


def provenance_tags(paths: ExportPaths) -> dict[str, str]:
    """md5 of the shard manifests and of the params sections used for training (those present):
    `data.<split>_manifest_md5`, `params.<section>_md5` (canonical JSON of the section)."""
    tags = {}
    for split, manifest in paths.manifests:
        if manifest.is_file():
            tags[f"data.{split}_manifest_md5"] = md5_file(manifest)
    if paths.params_file is not None and paths.params_file.is_file():
        doc = yaml.safe_load(paths.params_file.read_text()) or {}
        for section in PARAM_SECTIONS:
            if section in doc:
                tags[f"params.{section}_md5"] = md5_json(doc[section])
    return tags


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5_json(value: Any) -> str:
    """md5 of canonical JSON (sorted keys, no spaces): equal params give equal hashes."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.md5(text.encode()).hexdigest()


def _read_json(path: Path, how_to_create: str = "") -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist" + (f"; {how_to_create}" if how_to_create else "")
        )
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow_params = load_section(args.params, "mlflow", MlflowParams)
    params = load_section(args.params, "export", ExportParams)
    uri = tracking_uri(args.params, mlflow_params.tracking_uri)
    root = project_root(args.params)
    try:
        check_tracking_uri(uri)
        run(
            ExportPaths.under(root, params_file=Path(args.params).resolve()),
            params,
            tracking_uri=uri,
            experiment=mlflow_params.experiment,
            artifact_location=default_artifact_location(args.params, uri, mlflow_params),
        )
    except (ExportError, FileNotFoundError, TrackingError) as e:
        log.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    main()
