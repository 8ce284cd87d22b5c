"""The `export` and `predict` sections of `params.yaml`: how a trained model is shipped (the
registry, the portable and int8 files) and run on users' images. Read and checked like every
section (`pipeline.params`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from mrcnn.export import INT8_TOOLCHAINS, MODEL_BACKENDS, ONNX_BACKENDS
from pipeline.paramfile import check, check_device


@dataclass
class ExportParams:
    """`export`: registration in the MLflow model registry (`pipeline.export`)."""

    registered_model: str = "mrcnn-shapes"
    portable: bool = True  # also write + check the whole-model ONNX file (mrcnn.export.to_onnx)
    champion_metric: str = "segm.AP"  # a key of metrics/eval.json; higher is better
    # A version becomes champion only when its metric is above this, also the first one (a
    # model with AP 0.0 is registered as challenger, never pulled as @champion).
    champion_floor: float = 0.0
    # auto: register, except under `dvc exp run` (throwaway experiments stay out of the
    # registry); true / false: always / never (the model is still logged to its MLflow run).
    register: str = "auto"
    # What the registered model's pyfunc (and `mlflow models serve`) runs by default, one of
    # `mrcnn.export.MODEL_BACKENDS`: torch (the weights, eager PyTorch), onnxruntime (the
    # checked ONNX file on ONNX Runtime) or openvino (the same file on OpenVINO's CPU plugin,
    # fp32: faster than onnxruntime on the AVX-512 / AMX Xeon measured, slower on an AVX2-only
    # AMD, docs/export.md; the `openvino` extra where it is served) -- both need portable: true
    # and a model with boxes + masks only, no keypoint or MaskIoU head -- or int8 (below).
    pyfunc_backend: str = "torch"
    # int8: also an int8 model beside model.onnx (`mrcnn.export.quantize_int8`, calibrated on
    # int8_calibration_images train images), its AP on the val shards beside the fp32 file's;
    # refused (not logged to the run) when bbox or segm AP drops by more than int8_max_ap_drop.
    # int8_eval_images: the first N val images; 0 = all. int8_toolchain: openvino (NNCF ->
    # OpenVINO IR model_int8.xml + .bin, run by OpenVINO; the `openvino` extra) or onnxruntime
    # (static QDQ -> model_int8.onnx, run by ONNX Runtime). openvino by default: on the CPUs
    # measured (docs/export.md) its int8 is the fastest runtime and ONNX Runtime's int8 is
    # slower than its own fp32 without VNNI, at the same accuracy.
    int8: bool = False
    int8_toolchain: str = "openvino"
    int8_max_ap_drop: float = 0.01
    int8_calibration_images: int = 200
    int8_eval_images: int = 0

    @staticmethod
    def normalize(d: dict[str, Any]) -> dict[str, Any]:
        """YAML's `register: true` / `false` (booleans) -> "true" / "false"."""
        if isinstance(d.get("register"), bool):
            d = {**d, "register": str(d["register"]).lower()}
        return d

    def validate(self) -> None:
        check(self.register in ("auto", "true", "false"), "register", "must be auto, true or false")
        name_ok = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.registered_model)
        check(name_ok is not None, "registered_model", "must be letters, digits, '.', '_', '-'")
        key_ok = re.fullmatch(r"\w+(\.\w+)*", self.champion_metric)
        check(key_ok is not None, "champion_metric", "must be a key of eval.json, e.g. segm.AP")
        check(
            self.pyfunc_backend in MODEL_BACKENDS,
            "pyfunc_backend",
            f"must be {' or '.join(MODEL_BACKENDS)}",
        )
        check(not self.int8 or self.portable, "int8", "quantises model.onnx: set portable: true")
        check(
            self.pyfunc_backend != "int8" or self.int8,
            "pyfunc_backend",
            "int8 runs the int8 file: set int8: true as well",
        )
        check(
            self.int8_toolchain in INT8_TOOLCHAINS,
            "int8_toolchain",
            f"must be {' or '.join(INT8_TOOLCHAINS)}",
        )
        check(self.int8_max_ap_drop >= 0, "int8_max_ap_drop", "must be >= 0")
        check(self.int8_calibration_images >= 1, "int8_calibration_images", "must be >= 1")
        check(self.int8_eval_images >= 0, "int8_eval_images", "must be >= 0 (0 = all)")
        check(
            self.pyfunc_backend not in ONNX_BACKENDS or self.portable,
            "pyfunc_backend",
            f"{self.pyfunc_backend} runs the ONNX file: set portable: true as well",
        )


@dataclass
class PredictParams:
    """`predict`: inference on image files (`pipeline.predict`)."""

    score_thresh: float = -1.0  # < 0: the model's own inference.score_thresh
    batch_size: int = 4
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    keypoint_thresh: float = 2.0  # overlays: keypoints whose score (logit) passes this

    def validate(self) -> None:
        check(self.score_thresh < 1, "score_thresh", "must be < 1 (< 0 keeps the model's)")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check_device(self.device)
        check(math.isfinite(self.keypoint_thresh), "keypoint_thresh", "must be a number")
