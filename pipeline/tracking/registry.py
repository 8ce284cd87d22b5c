"""The MLflow model registry: log a trained model without pickle, register it, move aliases.

The model is logged as MLflow "models from code": `pipeline/tracking/pyfunc.py` as the pyfunc's
code, the `mrcnn` package as its code path and the `mrcnn.weights.save` folder as its `model`
artifact. A new version is tagged with its metrics (`metrics.segm.AP`, ...) and provenance
(digests of the shard manifests, of the params sections training used, of the weights).
Alias `champion` moves only to a version whose metric strictly beats the champion's; otherwise
the version gets `challenger`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from mrcnn.fileio import file_digest, json_digest

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_CODE = Path(__file__).with_name("pyfunc.py")
MODEL_ARTIFACT = "model"  # the key `MaskRCNNModel.load_context` reads
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


class ExportError(RuntimeError):
    """Export cannot go on; the message says why and what to do."""


def log_model(model_dir: Path) -> Any:
    """Log the saved model as a models-from-code pyfunc into the active run -> ModelInfo."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    import mrcnn
    from mrcnn import weights
    from pipeline.tracking.pyfunc import INPUT_COLUMN, OUTPUT_COLUMNS

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


def provenance_tags(
    manifests: tuple[tuple[str, Path], ...], params_file: Path | None
) -> dict[str, str]:
    """md5 of the shard manifests and of the params sections used for training (those present):
    `data.<split>_manifest_md5`, `params.<section>_md5` (canonical JSON of the section)."""
    tags = {}
    for split, manifest in manifests:
        if manifest.is_file():
            tags[f"data.{split}_manifest_md5"] = file_digest(manifest, "md5")
    if params_file is not None and params_file.is_file():
        doc = yaml.safe_load(params_file.read_text()) or {}
        for section in PARAM_SECTIONS:
            if section in doc:
                tags[f"params.{section}_md5"] = json_digest(doc[section], "md5")
    return tags
