"""Export: the whole inference as one static-shape graph, and running it without torch.

    graph        `InferenceGraph`: the eager model's own functions, traced with a static NMS
    onnx         `to_onnx`, `to_torch_export`, `export_portable` (write + check against eager)
    compare      `compare_onnx`, `match_detections`: exported vs eager detections
    onnx_model   `OnnxModel`: the ONNX file on ONNX Runtime with `MaskRCNN.detect`'s contract
                 (numpy, Pillow and onnxruntime only); `ExportedGraph`, what runtimes share
    openvino_model  `OpenVinoModel`: the same on OpenVINO (the `openvino` extra), ONNX or IR
    int8         `quantize_int8`: post-training int8, calibrated on images (ONNX Runtime QDQ
                 or NNCF + OpenVINO, `int8_openvino`)
    accuracy     `int8_accuracy` (agreement with fp32, bbox / segm AP of both),
                 `check_ap_drop` (the gate), `compare_exported`, `evaluate_exported`,
                 `open_exported` (a file on its runtime)

Names are imported on first use (PEP 562), so `from mrcnn.export import OnnxModel` loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrcnn.lazy import lazy_names

if TYPE_CHECKING:
    from mrcnn.export.accuracy import (
        Int8AccuracyError,
        check_ap_drop,
        compare_exported,
        evaluate_exported,
        int8_accuracy,
        open_exported,
    )
    from mrcnn.export.compare import compare_onnx, match_detections
    from mrcnn.export.int8 import quantize_int8
    from mrcnn.export.onnx import export_portable, to_onnx, to_torch_export
    from mrcnn.export.onnx_model import OnnxModel
    from mrcnn.export.openvino_model import OpenVinoModel

# The ways a saved model runs: eager PyTorch rebuilt from its weights (`mrcnn.weights.load`),
# its whole-model ONNX file on ONNX Runtime (`OnnxModel`) or on OpenVINO's CPU plugin
# (`OpenVinoModel`, float layers in f32; faster than ONNX Runtime on the AVX-512 / AMX Xeon
# measured, slower on an AVX2-only AMD: docs/export.md), or the int8 model quantised from that
# file (`quantize_int8`, `export.int8`: OpenVINO IR on `OpenVinoModel`, or an int8 ONNX file on
# `OnnxModel`). The pyfunc, predict and the export params all offer these.
MODEL_BACKENDS = ("torch", "onnxruntime", "openvino", "int8")
# The backends that run the fp32 ONNX file (the pyfunc's `onnx` artifact, `model.onnx`).
ONNX_BACKENDS = ("onnxruntime", "openvino")
# `quantize_int8`'s toolchains: ONNX Runtime static QDQ (an .onnx file on `OnnxModel`) or NNCF
# for OpenVINO (OpenVINO IR .xml + .bin on `OpenVinoModel`); `export.int8_toolchain` picks one.
INT8_TOOLCHAINS = ("onnxruntime", "openvino")

_MODULES = {
    "mrcnn.export.accuracy": (
        "Int8AccuracyError",
        "check_ap_drop",
        "compare_exported",
        "evaluate_exported",
        "int8_accuracy",
        "open_exported",
    ),
    "mrcnn.export.compare": ("compare_onnx", "match_detections"),
    "mrcnn.export.int8": ("quantize_int8",),
    "mrcnn.export.onnx": ("export_portable", "to_onnx", "to_torch_export"),
    "mrcnn.export.onnx_model": ("OnnxModel",),
    "mrcnn.export.openvino_model": ("OpenVinoModel",),
}
__all__ = [
    "INT8_TOOLCHAINS",
    "Int8AccuracyError",
    "MODEL_BACKENDS",
    "ONNX_BACKENDS",
    "OnnxModel",
    "OpenVinoModel",
    "check_ap_drop",
    "compare_exported",
    "compare_onnx",
    "evaluate_exported",
    "export_portable",
    "int8_accuracy",
    "match_detections",
    "open_exported",
    "quantize_int8",
    "to_onnx",
    "to_torch_export",
]

__getattr__, __dir__ = lazy_names(__name__, _MODULES)
