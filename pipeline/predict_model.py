"""The model `pipeline.predict` runs: where `--model` points, and which backend runs it.

    locate(spec, tracking_uri, workdir, backend) -> ModelFiles   (downloads what it needs)
    load_predictor(files, device, score_thresh)  -> (predictor, class map)

`--model` is `models:/NAME@ALIAS` or `models:/NAME/VERSION` (`/latest`), pulled from the
registry; a local folder in `mrcnn.weights.save` format (config.json + model.safetensors) or a
downloaded MLflow model (its `MLmodel` file); or a whole-model ONNX file (`*.onnx`, written by
`mrcnn.export.to_onnx`, e.g. `models/export/model.onnx`), or the int8 model of `export.int8`
(`models/export/model_int8.xml` with its `.bin`, OpenVINO IR; or `model_int8.onnx`).

Backends: `torch` rebuilds the network from the weights (`mrcnn.weights.load`); `onnxruntime` runs
the ONNX file through `mrcnn.export.onnx_model.OnnxModel` (an MLflow model's `onnx` artifact, which
`pipeline.export` logs with `export.portable: true`); `openvino` runs the same ONNX file through
`mrcnn.export.openvino_model.OpenVinoModel` (fp32, OpenVINO's CPU plugin, the `openvino` extra);
`int8` runs the int8 model: an OpenVINO IR
through `mrcnn.export.openvino_model.OpenVinoModel` (artifact `openvino_int8`), an int8 ONNX file
through `OnnxModel` (artifact `onnx_int8`). `auto` is onnxruntime for an `.onnx` file, int8 for an
`.xml`, the model's own `backend` (model_config, `export.pyfunc_backend`) for an MLflow model, and
torch for a weights folder. From the registry only the files the backend needs are downloaded
(plus config.json, for the class map).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mrcnn.export import MODEL_BACKENDS, ONNX_BACKENDS
from pipeline.tracking import pull
from pipeline.tracking.pull import HOW_TO_CREATE, ModelNotFoundError

log = logging.getLogger("pipeline.predict")

BACKENDS = ("auto", *MODEL_BACKENDS)  # auto: see the module doc
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?/?$")
# the pyfunc's artifact keys (pipeline.tracking.pyfunc)
WEIGHTS_KEY, ONNX_KEY, INT8_KEY = "model", "onnx", "onnx_int8"
OPENVINO_INT8_KEY = "openvino_int8"  # a folder with the OpenVINO IR (.xml + .bin)
INT8_KEYS = (OPENVINO_INT8_KEY, INT8_KEY)  # what backend int8 runs: whichever was logged


@dataclass(frozen=True)
class ModelFiles:
    """What `locate` found: the backend to run and its files.

    backend:     one of `mrcnn.export.MODEL_BACKENDS` (never "auto")
    weights_dir: the `mrcnn.weights.save` folder (for onnxruntime it may hold only config.json;
                 None for a bare ONNX file)
    onnx_file:   the exported file the backend runs (not torch): the ONNX file, or the int8
                 model (an `.onnx`, or an OpenVINO IR `.xml` with its `.bin` beside it)
    source:      how the model was found, for images.json ({"path"} or {"registered_model",
                 "version", "alias", "uri"}), with "backend"
    """

    backend: str
    weights_dir: Path | None
    onnx_file: Path | None
    source: dict[str, Any]


def locate(spec: str, tracking_uri: str | None, workdir: Path, backend: str = "auto") -> ModelFiles:
    """`--model` + `--backend` -> `ModelFiles` (registry files are downloaded into `workdir`)."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    m = _MODELS_URI.match(spec)
    if m:
        files = _pull_registered(
            m["name"], m["alias"], m["version"], tracking_uri, workdir, backend
        )
    elif spec.startswith(("models:/", "runs:/")):
        raise ModelNotFoundError(
            f"cannot read --model {spec!r}: use models:/NAME@ALIAS, models:/NAME/VERSION, a "
            "local folder or an .onnx file"
        )
    else:
        files = _local(Path(spec), backend)
    return ModelFiles(
        files.backend,
        files.weights_dir,
        files.onnx_file,
        {**files.source, "backend": files.backend},
    )


def resolve_model(spec: str, tracking_uri: str | None, workdir: Path) -> tuple[Path, dict]:
    """`--model` -> (folder in `mrcnn.weights.save` format, description of the source): the
    torch backend's files (kept for callers that load the weights themselves)."""
    files = locate(spec, tracking_uri, workdir, "torch")
    assert files.weights_dir is not None
    return files.weights_dir, {k: v for k, v in files.source.items() if k != "backend"}


def _local(path: Path, backend: str) -> ModelFiles:
    from mrcnn.weights import CONFIG_FILE, WEIGHTS_FILE

    source = {"path": str(path.resolve())}
    if not path.exists():
        raise ModelNotFoundError(f"model {path} does not exist. {HOW_TO_CREATE}")
    if path.is_file() and path.suffix == ".onnx":
        if backend == "torch":
            raise ValueError(f"{path} is an ONNX file: run it with --backend onnxruntime (or auto)")
        # an int8 file (model_int8.onnx) is an ONNX file too: "int8" runs it on ONNX Runtime
        chosen = "onnxruntime" if backend == "auto" else backend
        return ModelFiles(chosen, None, path, source)
    if path.is_file() and path.suffix == ".xml":  # OpenVINO IR: only export.int8 writes one
        if backend not in ("auto", "int8"):
            raise ValueError(
                f"{path} is an OpenVINO IR (the int8 model): run it with --backend int8 (or auto)"
            )
        return ModelFiles("int8", None, path, source)
    if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        if backend != "torch" and backend != "auto":
            raise ValueError(
                f"{path} holds weights, not an ONNX file: give --model the exported file "
                "(models/export/model.onnx; for int8 models/export/model_int8.xml or .onnx) "
                "or use --backend torch"
            )
        return ModelFiles("torch", path, None, source)
    if (path / "MLmodel").is_file():  # a downloaded MLflow model
        flavor = _pyfunc_flavor(path / "MLmodel")
        chosen = _choose(backend, flavor, str(path))
        weights_dir = path / _artifact_path(flavor, WEIGHTS_KEY, path / "MLmodel")
        onnx = None
        if chosen != "torch":
            key = _onnx_key(chosen, flavor)
            onnx = _model_file(path / _artifact_path(flavor, key, path), key)
        return ModelFiles(chosen, weights_dir, onnx, source)
    raise ModelNotFoundError(
        f"{path} is not a saved model: expected {CONFIG_FILE} + {WEIGHTS_FILE} "
        "(mrcnn.weights.save), an MLflow model folder with an MLmodel file, or an .onnx file"
    )


def _pyfunc_flavor(mlmodel: Path) -> dict[str, Any]:
    doc = yaml.safe_load(mlmodel.read_text()) or {}
    flavor = (doc.get("flavors") or {}).get("python_function")
    if not isinstance(flavor, dict) or WEIGHTS_KEY not in (flavor.get("artifacts") or {}):
        raise ModelNotFoundError(
            f"{mlmodel} is not a model logged by pipeline.export (no '{WEIGHTS_KEY}' artifact)"
        )
    return flavor


def _artifact_path(flavor: dict[str, Any], key: str, where: Path | str) -> str:
    artifacts = flavor.get("artifacts") or {}
    if key not in artifacts:
        what = "int8 file (export.int8: false, or refused)" if key in INT8_KEYS else "ONNX file"
        raise ModelNotFoundError(
            f"{where} was logged without its {what}: use another --backend (torch runs the "
            "weights), or export again with export.portable: true (export.int8: true for int8)"
        )
    return str(artifacts[key]["path"])


def _onnx_key(backend: str, flavor: dict[str, Any]) -> str:
    """The pyfunc artifact an exported backend runs: the fp32 ONNX file, or the int8 model
    (the OpenVINO IR folder or the int8 ONNX file, whichever the model was logged with)."""
    if backend in ONNX_BACKENDS:
        return ONNX_KEY
    artifacts = flavor.get("artifacts") or {}
    return next((k for k in INT8_KEYS if k in artifacts), INT8_KEY)


def _model_file(path: Path, key: str) -> Path:
    """The file to open of a downloaded artifact: the `.xml` in the OpenVINO IR folder."""
    if key == OPENVINO_INT8_KEY:
        from mrcnn.export.openvino_model import find_ir

        return find_ir(path)
    return path


def _choose(backend: str, flavor: dict[str, Any], where: str) -> str:
    """`--backend`, with auto -> the logged model's own default (model_config `backend`)."""
    if backend != "auto":
        return backend
    chosen = str((flavor.get("config") or {}).get("backend", "torch"))
    log.info("%s runs on %s (its export.pyfunc_backend)", where, chosen)
    return chosen


def _pull_registered(
    name: str,
    alias: str | None,
    version: str | None,
    uri: str | None,
    workdir: Path,
    backend: str,
) -> ModelFiles:
    from mrcnn.weights import CONFIG_FILE

    where = pull.use_store(uri)
    version = pull.registered_version(name, alias, version, where)
    base = f"models:/{name}/{version}"
    flavor = _pyfunc_flavor(pull.download(f"{base}/MLmodel", workdir))
    chosen = _choose(backend, flavor, base)
    sub = _artifact_path(flavor, WEIGHTS_KEY, base)
    onnx = None
    if chosen != "torch":
        key = _onnx_key(chosen, flavor)
        onnx = _model_file(
            Path(pull.download(f"{base}/{_artifact_path(flavor, key, base)}", workdir)), key
        )
        # the class map lives in config.json: only that file of the weights folder
        pull.download(f"{base}/{sub}/{CONFIG_FILE}", workdir)
        local = workdir / sub
    else:
        local = pull.download(f"{base}/{sub}", workdir)
    log.info("pulled %s v%s%s from %s", name, version, f" (@{alias})" if alias else "", where)
    source = {"registered_model": name, "version": int(version), "alias": alias, "uri": base}
    return ModelFiles(chosen, Path(local), Path(onnx) if onnx else None, source)


def read_class_map(weights_dir: Path, num_classes: int) -> dict[int, int] | None:
    """{label: dataset category id} from the saved model's config.json class map (the shape of
    `mrcnn.data.read_class_map`, covering every foreground label 1..K-1), or None without one."""
    from mrcnn.data import category_ids
    from mrcnn.data import read_class_map as parse
    from mrcnn.weights import CONFIG_FILE

    raw = json.loads((weights_dir / CONFIG_FILE).read_text()).get("class_map")
    if raw is None:
        return None
    try:
        return category_ids(parse(raw, num_classes))
    except ValueError as e:
        raise ValueError(f"class_map in {weights_dir / CONFIG_FILE}: {e}") from None


@dataclass
class Thresholds:
    """The two detection-layer settings predict reads from
    `MaskRCNN.roi_heads.detection_layer`."""

    score_thresh: float
    nms_thresh: float


@dataclass
class ThresholdHeads:
    """`MaskRCNN.roi_heads` as far as predict reads it."""

    detection_layer: Thresholds


class OnnxPredictor:
    """An exported model (`OnnxModel` or `OpenVinoModel`) with the surface `pipeline.predict`
    uses of a `MaskRCNN`: `detect(images, batch_size)` (-> list[Detections]), `class_names`,
    `num_classes`, `image_size` and `roi_heads.detection_layer.score_thresh` / `.nms_thresh`.

    The graph's score threshold is fixed at export; raising that score threshold above it
    drops the detections at or below the new value, which gives exactly what the eager model
    gives with that threshold (the threshold, per-class NMS and top-D keep the higher scores
    first). Lowering it is impossible: `check_score_thresh` says so.
    """

    def __init__(self, model: Any) -> None:
        # Files from before the thresholds were metadata of their own: the config's.
        inference = {
            **((model.settings.get("config") or {}).get("inference") or {}),
            **{k: v for k, v in model.settings.items() if k in ("score_thresh", "nms_thresh")},
        }
        self.model = model
        self.class_names = model.class_names
        self.num_classes = model.num_classes
        self.image_size = model.image_size
        self.exported_score_thresh = float(inference.get("score_thresh", 0.0))
        self.roi_heads = ThresholdHeads(
            Thresholds(self.exported_score_thresh, float(inference.get("nms_thresh", 0.5)))
        )

    def check_score_thresh(self, value: float) -> None:
        if value < self.exported_score_thresh:
            raise ValueError(
                f"score threshold {value} is below the ONNX file's {self.exported_score_thresh} "
                "(fixed at export): use --backend torch, or export with a lower "
                "inference.score_thresh"
            )

    def detect(self, images: list[np.ndarray], batch_size: int | None = None) -> list:
        """As `MaskRCNN.detect`: uint8 H x W x 3 images -> one `Detections` per image."""
        from mrcnn.inference.detections import Detections

        out = []
        thresh = self.roi_heads.detection_layer.score_thresh
        for det in self.model.detect(images, batch_size=batch_size):
            if thresh > self.exported_score_thresh:
                keep = det.scores > thresh
                det = Detections(
                    det.boxes[keep], det.scores[keep], det.labels[keep], det.masks[keep]
                )
            out.append(det)
        return out


def load_predictor(
    files: ModelFiles, device: str, score_thresh: float = -1.0
) -> tuple[Any, dict[int, int] | None]:
    """`ModelFiles` -> (a `MaskRCNN` or `OnnxPredictor` on `device`, the class map or None).
    `score_thresh` >= 0 replaces the model's detection threshold."""
    from mrcnn import weights

    if files.backend != "torch":  # an exported file on its runtime
        assert files.onnx_file is not None
        net: Any = OnnxPredictor(_exported(files, device))
        if score_thresh >= 0:
            net.check_score_thresh(score_thresh)
    else:
        assert files.weights_dir is not None
        net = weights.load(files.weights_dir, device)
    if score_thresh >= 0:
        net.roi_heads.detection_layer.score_thresh = score_thresh
    class_map = None
    if files.weights_dir is not None and (files.weights_dir / weights.CONFIG_FILE).is_file():
        class_map = read_class_map(files.weights_dir, net.num_classes)
    elif files.backend != "torch":
        log.info("%s has no config.json beside it: results use the model's labels", files.onnx_file)
    return net, class_map


def _exported(files: ModelFiles, device: str) -> Any:
    """An exported file on its runtime: OpenVINO IR (`.xml`) and backend openvino's `.onnx` on
    OpenVINO's CPU plugin, any other `.onnx` on ONNX Runtime with the providers for `device`."""
    path = files.onnx_file
    assert path is not None
    if path.suffix == ".xml" or files.backend == "openvino":
        from mrcnn.export.openvino_model import OpenVinoModel

        if device.startswith("cuda"):
            log.warning("%s runs on OpenVINO: on the CPU (OpenVINO's CPU plugin)", path)
        return OpenVinoModel(path)
    from mrcnn.export.onnx_model import OnnxModel

    return OnnxModel(path, providers=_providers(device))


def _providers(device: str) -> tuple[str, ...]:
    """ONNX Runtime execution providers for a torch-style device string."""
    import onnxruntime as ort

    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    if device.startswith("cuda"):
        log.warning("onnxruntime has no CUDA provider here (onnxruntime-gpu): running on CPU")
    return ("CPUExecutionProvider",)
