"""The MLflow model registry: log a trained model without pickle, register it, move aliases.

The model is logged as MLflow "models from code": `pipeline/tracking/pyfunc.py` as the pyfunc's
code, the `mrcnn` package as its code path, the `mrcnn.weights.save` folder as its `model`
artifact, the checked ONNX file (when exported) as its `onnx` artifact and an accepted int8
model as its `onnx_int8` (ONNX) or `openvino_int8` (OpenVINO IR folder) artifact; model_config
`backend` (`export.pyfunc_backend`) says which the pyfunc runs (onnxruntime and openvino both
run the `onnx` artifact).

A version is registered once per weights file: weights already registered (same sha256, tag
`weights.sha256`) keep their version, which only gets the new metrics and aliases
(`find_version`; its backend and ONNX file stay those it was logged with). A version carries
a description (data, preset, AP: `describe`) and a few readable tags (`version_tags`). Alias
`champion` moves only to a version whose metric strictly beats the champion's; otherwise the
version gets `challenger`. Under `dvc exp run` nothing is registered unless `export.register`
is true (`should_register`).
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
from pipeline.tracking.store import dvc_experiment

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_CODE = Path(__file__).with_name("pyfunc.py")
MODEL_ARTIFACT = "model"  # the weights folder `MaskRCNNModel.load_context` reads
PARAM_SECTIONS = ("shards", "model", "train")  # the params.yaml sections training used
METRIC_TAG = "metrics."
WEIGHTS_TAG = "weights.sha256"
HEADLINE_METRICS = ("segm.AP", "bbox.AP")  # tagged on every version, with the champion metric
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


def log_model(
    model_dir: Path,
    *,
    heads: Any = None,
    onnx_file: Path | None = None,
    backend: str = "torch",
    int8_file: Path | None = None,
) -> Any:
    """Log the saved model as a models-from-code pyfunc into the active run -> ModelInfo.

    heads:     `pipeline.tracking.pyfunc.Heads` of the model (which output columns the
               signature lists; default: boxes + masks)
    onnx_file: the checked whole-model ONNX file, logged as artifact `onnx` (with onnxruntime
               among the requirements) so the pyfunc can run it
    backend:   the pyfunc's default backend, one of `mrcnn.export.MODEL_BACKENDS` (model_config
               `backend`; "onnxruntime" and "openvino" need `onnx_file`, "int8" needs
               `int8_file`; "openvino" puts openvino among the requirements)
    int8_file: the accepted int8 model (`export.int8`): an ONNX file, logged as artifact
               `onnx_int8` (with onnxruntime among the requirements), or an OpenVINO IR
               `.xml` whose `.bin` is beside it, logged as artifact `openvino_int8` (a folder
               with both; openvino among the requirements)
    """
    import mlflow

    import mrcnn
    from mrcnn import weights
    from mrcnn.export import MODEL_BACKENDS, ONNX_BACKENDS
    from pipeline.tracking.pyfunc import (
        INT8_ARTIFACT,
        ONNX_ARTIFACT,
        OPENVINO_INT8_ARTIFACT,
        Heads,
    )

    if backend not in MODEL_BACKENDS:
        choices = ", ".join(MODEL_BACKENDS)
        raise ExportError(f"export.pyfunc_backend must be one of {choices}: {backend}")
    if backend in ONNX_BACKENDS and onnx_file is None:
        raise ExportError(
            f"export.pyfunc_backend: {backend} needs the ONNX file: set export.portable: true"
        )
    if backend == "int8" and int8_file is None:
        raise ExportError(
            "export.pyfunc_backend: int8 needs an accepted int8 file: set export.int8: true "
            "(and see export.json's int8 section for why it was refused)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        # Only the two files `mrcnn.weights.load` reads travel with the model.
        staged = Path(tmp) / "weights"
        staged.mkdir()
        for name in (weights.WEIGHTS_FILE, weights.CONFIG_FILE):
            shutil.copy2(model_dir / name, staged / name)
        artifacts = {MODEL_ARTIFACT: str(staged)}
        if onnx_file is not None:
            artifacts[ONNX_ARTIFACT] = str(onnx_file)
        openvino_ir = int8_file is not None and int8_file.suffix == ".xml"
        if openvino_ir:  # the IR is two files: they travel as one folder
            ir = Path(tmp) / OPENVINO_INT8_ARTIFACT
            ir.mkdir()
            for path in (int8_file, int8_file.with_suffix(".bin")):
                shutil.copy2(path, ir / path.name)
            artifacts[OPENVINO_INT8_ARTIFACT] = str(ir)
        elif int8_file is not None:
            artifacts[INT8_ARTIFACT] = str(int8_file)
        with warnings.catch_warnings():
            # An input example would run the model while logging; the signature says enough.
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            warnings.filterwarnings("ignore", message=".*Add type hints to the `predict`.*")
            return mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_CODE),
                artifacts=artifacts,
                code_paths=[str(Path(mrcnn.__file__).parent)],
                pip_requirements=requirements(
                    onnx=onnx_file is not None, openvino=openvino_ir or backend == "openvino"
                ),
                signature=signature(heads or Heads()),
                model_config={"backend": backend},
            )


def signature(heads: Any) -> Any:
    """The pyfunc's `ModelSignature`: a binary column `image` in, `output_columns(heads)` out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    from pipeline.tracking.pyfunc import FLOAT_ARRAY, INPUT_COLUMN, output_columns

    outputs = [
        ColSpec(Array(DataType.double) if t == FLOAT_ARRAY else t, name)
        for name, t in output_columns(heads)
    ]
    return ModelSignature(inputs=Schema([ColSpec("binary", INPUT_COLUMN)]), outputs=Schema(outputs))


def requirements(onnx: bool = False, openvino: bool = False) -> list[str]:
    """Pinned requirements of the logged model (local version labels such as +cu130 dropped);
    `onnx`: with onnxruntime, for a model that carries its ONNX file; `openvino`: with
    openvino, for one that carries an OpenVINO IR or runs on OpenVINO by default."""
    out = []
    extra = (("onnxruntime",) if onnx else ()) + (("openvino",) if openvino else ())
    for dist in ("mlflow", *_REQUIREMENTS, *extra):
        try:
            out.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


def register(name: str, model_uri: str, tags: dict[str, str], description: str = "") -> str:
    """A new version of registered model `name` (created if missing) -> its version."""
    import mlflow

    mv = mlflow.register_model(model_uri, name, tags=tags)
    if description:
        mlflow.MlflowClient().update_model_version(name, mv.version, description=description)
    return str(mv.version)


def find_version(name: str, weights_sha256: str) -> str | None:
    """The version of `name` registered with these weights (tag `weights.sha256`), or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        return None
    found = [
        int(mv.version)
        for mv in client.search_model_versions(f"name = '{name}'")
        if mv.tags.get(WEIGHTS_TAG) == weights_sha256
    ]
    return str(min(found)) if found else None


def update_version(name: str, version: str, tags: dict[str, str], description: str) -> None:
    """New metrics (and the rest of `tags`) and description on an existing version."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=description)


def should_register(setting: str) -> tuple[bool, str]:
    """`export.register` (auto / true / false) -> (register?, why). auto registers except under
    `dvc exp run` (DVC_EXP_NAME set): experiments stay out of the registry until promoted."""
    experiment = dvc_experiment()
    if setting == "true":
        return True, "export.register is true"
    if setting == "false":
        return False, "export.register is false"
    if experiment:
        return False, f"DVC experiment {experiment} (set export.register: true to register it)"
    return True, "export.register is auto"


def assign_alias(
    name: str, version: str, metric: str, value: float, floor: float | None = None
) -> tuple[str, dict[str, Any] | None]:
    """Give `version` alias champion if `value` is above `floor` (`export.champion_floor`; None:
    no floor) and beats the champion's metric, else challenger.

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
    beats = previous is None or is_improvement(value, previous["value"])
    above_floor = floor is None or value > floor
    if beats and not above_floor:
        log.warning(
            "%s v%s: %s %.4f is not above export.champion_floor %g: registered as challenger, "
            "not champion",
            name,
            version,
            metric,
            value,
            floor,
        )
    alias = CHAMPION if beats and above_floor else CHALLENGER
    client.set_registered_model_alias(name, alias, version)
    if alias == CHAMPION and str(aliases.get(CHALLENGER, "")) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)  # promoted: one alias, not two
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


def version_tags(
    evals: dict[str, Any],
    champion_metric: str,
    info: dict[str, str],
    manifests: tuple[tuple[str, Path], ...],
    params_file: Path | None,
) -> dict[str, str]:
    """The few tags of a version: `metrics.segm.AP`, `metrics.bbox.AP` and the champion metric
    (what `assign_alias` compares), `info` (e.g. data, preset, train.run, weights.sha256), and
    `provenance.md5`: one digest of the shard manifests and the params sections training used."""
    tags = {}
    for key in dict.fromkeys((*HEADLINE_METRICS, champion_metric)):
        try:
            tags[METRIC_TAG + key] = repr(metric_value(evals, key))
        except ExportError:
            continue
    parts: dict[str, Any] = {}
    for split, manifest in manifests:
        if manifest.is_file():
            parts[f"manifest.{split}"] = file_digest(manifest, "md5")
    if params_file is not None and params_file.is_file():
        doc = yaml.safe_load(params_file.read_text()) or {}
        parts |= {f"params.{k}": doc[k] for k in PARAM_SECTIONS if k in doc}
    if parts:
        tags["provenance.md5"] = json_digest(parts, "md5")
    return tags | {k: v for k, v in info.items() if v}


def describe(
    evals: dict[str, Any], info: dict[str, str], manifests: tuple[tuple[str, Path], ...]
) -> str:
    """One paragraph for the version page: what was trained on what, and how well.

    >>> describe({"segm": {"AP": 0.5}}, {"data": "shapes", "preset": "shapes_small"}, ())
    'Mask R-CNN, preset shapes_small, trained on shapes. Val segm AP 0.500.'"""
    import json

    text = f"Mask R-CNN, preset {info.get('preset') or '?'}, trained on {info.get('data') or '?'}"
    counts = {}
    for split, manifest in manifests:
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            counts[split] = m.get("counts", {}).get("images")
            names = [n for n in m.get("class_names", []) if n != "background"]
    if counts:
        text += " (" + ", ".join(f"{n} {s} images" for s, n in counts.items() if n is not None)
        more = "..." if len(names) > 10 else ""
        text += f"; {len(names)} classes: {', '.join(names[:10])}{more}"
        text += ")"
    if info.get("train.iterations"):
        text += f", {info['train.iterations']} iterations"
    if info.get("train.run"):
        text += f" (run {info['train.run']})"
    aps = []
    for key in HEADLINE_METRICS:
        try:
            aps.append(f"{key.replace('.', ' ')} {metric_value(evals, key):.3f}")
        except ExportError:
            continue
    return text + "." + (f" Val {', '.join(aps)}." if aps else "")
