"""Export: the whole inference as one static-shape graph, and running it without torch.

    graph        `InferenceGraph`: the eager model's own functions, traced with a static NMS
    onnx         `to_onnx`, `to_torch_export`, `export_portable` (write + check against eager)
    compare      `compare_onnx`, `match_detections`: exported vs eager detections
    onnx_model   `OnnxModel`: the ONNX file on ONNX Runtime with `MaskRCNN.detect`'s contract
                 (numpy, Pillow and onnxruntime only)

Names are imported on first use (PEP 562), so `from mrcnn.export import OnnxModel` loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrcnn.lazy import lazy_names

if TYPE_CHECKING:
    from mrcnn.export.compare import compare_onnx, match_detections
    from mrcnn.export.onnx import export_portable, to_onnx, to_torch_export
    from mrcnn.export.onnx_model import OnnxModel

# The two ways a saved model runs: eager PyTorch rebuilt from its weights (`mrcnn.weights.load`)
# or its whole-model ONNX file on ONNX Runtime (`OnnxModel`). The pyfunc, predict and the export
# params all offer these.
MODEL_BACKENDS = ("torch", "onnxruntime")

_MODULES = {
    "mrcnn.export.compare": ("compare_onnx", "match_detections"),
    "mrcnn.export.onnx": ("export_portable", "to_onnx", "to_torch_export"),
    "mrcnn.export.onnx_model": ("OnnxModel",),
}
__all__ = [
    "MODEL_BACKENDS",
    "OnnxModel",
    "compare_onnx",
    "export_portable",
    "match_detections",
    "to_onnx",
    "to_torch_export",
]

__getattr__, __dir__ = lazy_names(__name__, _MODULES)
