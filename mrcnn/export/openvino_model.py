"""`OpenVinoModel`: an exported Mask R-CNN on OpenVINO's CPU runtime, same `detect` as `OnnxModel`.

OpenVINO reads the whole-model ONNX file (`mrcnn.export.to_onnx`) as it is, every operator
included (`NonMaxSuppression`, `RoiAlign`, `NonZero`, `ScatterND`), and the OpenVINO IR
(`.xml` + `.bin`) that `mrcnn.export.quantize_int8(..., toolchain="openvino")` writes. The
settings `detect` needs travel in the file: ONNX `metadata_props`, which OpenVINO keeps under
its `framework` run-time info, also in the IR it saves. Imports numpy, Pillow and openvino only
(no torch); openvino is the optional `openvino` extra:

    from mrcnn.export.openvino_model import OpenVinoModel
    detections = OpenVinoModel("model.onnx").detect([image])   # or "model_int8.xml"

Why a second runtime (docs/export.md, "int8 and the CPU runtime"): its int8 IR (NNCF) is the
fastest int8 measured, and on the Intel CPU with AVX-512 / AMX measured it runs the same fp32
graph 9-16% faster than ONNX Runtime with the same detections (the `openvino` backend of
`mrcnn.export.MODEL_BACKENDS`; on an AVX2-only AMD it was slower).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn.export.onnx_model import INPUT_NAMES, OUTPUT_NAMES, ExportedGraph, read_settings

FRAMEWORK_INFO = "framework"  # where OpenVINO keeps an ONNX file's metadata_props
INSTALL = "pip install -e '.[openvino]'"  # the extra with openvino and nncf
# OpenVINO's CPU plugin runs float layers in bf16 by default on CPUs with AMX / AVX512_BF16
# (Sapphire Rapids and later): there the fp32 file missed ONNX Runtime's detections by up to
# 1e-2 px / 2e-4 score (eager parity asks 1e-2 / 1e-4), and an int8 IR's layers kept in fp32
# (`quantize_int8`'s keep_fp32) would not be. f32 keeps both what was measured, on every CPU,
# so the export stage's AP gate holds wherever the model is served; the int8 layers stay int8.
# Pass config={"INFERENCE_PRECISION_HINT": "bf16"} to trade that for speed.
DEFAULT_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


class OpenVinoMissingError(RuntimeError):
    """openvino (or nncf, for quantising) cannot be imported here; the message is one line
    naming the packages and `INSTALL`."""


def missing_packages(packages: tuple[str, ...] = ("openvino",)) -> list[str]:
    """Those of `packages` this Python cannot find (without importing them: nncf imports torch)."""
    import importlib.util

    missing = []
    for name in packages:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or blocked module
            found = False
        if not found:
            missing.append(name)
    return missing


def find_ir(folder: str | Path) -> Path:
    """The OpenVINO IR `.xml` in `folder` (e.g. a registered model's `openvino_int8`
    artifact, which holds one `.xml` and its `.bin`); a path to the `.xml` itself is returned
    as it is. `FileNotFoundError` when there is not exactly one."""
    folder = Path(folder)
    if folder.suffix == ".xml":
        return folder
    found = sorted(folder.glob("*.xml")) if folder.is_dir() else []
    if len(found) != 1:
        raise FileNotFoundError(f"expected one OpenVINO IR .xml (with its .bin) in {folder}")
    return found[0]


def import_openvino(what: str = "OpenVinoModel") -> Any:
    """`import openvino`, or `OpenVinoMissingError` saying that `what` needs it and how to
    install it."""
    try:
        import openvino
    except ImportError as e:
        raise OpenVinoMissingError(
            f"{what} needs openvino, which is not installed here: {INSTALL}"
        ) from e
    return openvino


def framework_metadata(model: Any) -> dict[str, str]:
    """An `openvino.Model`'s ONNX metadata ({key: string}), kept under run-time info
    `framework` when OpenVINO read the ONNX file (and saved with the IR)."""
    if not model.has_rt_info([FRAMEWORK_INFO]):
        return {}
    info = model.get_rt_info()[FRAMEWORK_INFO]
    return {str(k): v.astype(str) if hasattr(v, "astype") else str(v) for k, v in info.items()}


class OpenVinoModel(ExportedGraph):
    """An exported whole-model file (`.onnx` from `to_onnx` / `quantize_int8`, or OpenVINO IR
    `.xml`) compiled by OpenVINO for the CPU.

    Args:
        path: the `.onnx` or `.xml` file (an `.xml` needs its `.bin` beside it).
        device: OpenVINO device name (default "CPU").
        threads: inference threads (0 = OpenVINO's default, all cores).
        config: further OpenVINO properties, e.g. {"PERFORMANCE_HINT": "THROUGHPUT"}
            (default: `DEFAULT_CONFIG`, the latency hint, one request at a time, and float
            layers in f32).

    Attributes: those of `ExportedGraph` (from the file's metadata), and `compiled`.
    `detect` and `run` as `OnnxModel`'s.
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "CPU",
        threads: int = 0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        ov = import_openvino()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no model file at {path} (write one with to_onnx)")
        core = ov.Core()
        model = core.read_model(str(path))
        settings = read_settings(framework_metadata(model), path)
        properties = {**DEFAULT_CONFIG, **(config or {})}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, device, properties)
        self._request = self.compiled.create_infer_request()
        self._outputs = [self.compiled.output(name) for name in OUTPUT_NAMES]
        super().__init__(path, settings)

    def run(self, images: np.ndarray, windows: np.ndarray) -> dict[str, np.ndarray]:
        """The raw graph on one prepared batch of exactly `batch_size` images."""
        feeds = dict(
            zip(
                INPUT_NAMES,
                (images.astype(np.uint8), windows.astype(np.float32)),
                strict=True,
            )
        )
        result = self._request.infer(feeds)
        # Copies: the request's buffers are reused by its next call.
        return {
            name: np.array(result[out])
            for name, out in zip(OUTPUT_NAMES, self._outputs, strict=True)
        }
