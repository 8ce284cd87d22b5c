"""The registered model, as MLflow "models from code" (no pickle anywhere).

`pipeline.export` logs this file as the pyfunc's code, the `mrcnn` package as its code path, the
`mrcnn.weights.save` folder (model.safetensors + config.json) as its `model` artifact and, when
the export wrote one, the checked whole-model ONNX file as its `onnx` artifact. Loading runs
`load_context`, which builds the backend named by the model config's `backend`:

    torch        (default) `mrcnn.weights.load` rebuilds the network (eager PyTorch)
    onnxruntime  `mrcnn.export.onnx_model.OnnxModel` runs the `onnx` artifact (same `detect`)
    openvino     `mrcnn.export.openvino_model.OpenVinoModel` runs the same `onnx` artifact on
                 OpenVINO's CPU plugin, fp32 (the `openvino` extra; faster than onnxruntime on
                 the AVX-512 / AMX Xeon measured, slower on an AVX2-only AMD: docs/export.md)
    int8         the int8 model (`export.int8`, when it was accepted): the `openvino_int8`
                 artifact (a folder with OpenVINO IR .xml + .bin, `export.int8_toolchain:
                 openvino`) on `mrcnn.export.openvino_model.OpenVinoModel`, or the
                 `onnx_int8` artifact (toolchain onnxruntime) on `OnnxModel`

`export.pyfunc_backend` in params.yaml sets the logged default; a caller can pick another one
at load time (onnxruntime / openvino / int8 need a model logged with that file):

    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/mrcnn-shapes@champion")
    # or: mlflow.pyfunc.load_model(uri, model_config={"backend": "openvino"})  # or "int8", ...
    frame = model.predict(pd.DataFrame({"image": [open("a.jpg", "rb").read()]}))

Input: a DataFrame with a binary column `image`, one encoded image file (JPEG, PNG, BMP, WebP)
per row. A served model takes it base64-encoded, as `{"dataframe_split": {"columns": ["image"],
"data": [["<base64>"]]}}` or `{"inputs": {"image": ["<base64>", ...]}}` (docs/mlflow.md).
MLflow decodes the base64 of `dataframe_split` itself (the signature says binary) but hands the
text of `inputs` over as it is, so `image_bytes` decodes base64 that reaches `predict`. A row
that is not an image is refused with an `MlflowException` naming it (HTTP 400 with that
message when served, not MLflow's generic "unexpected error").

Output: a DataFrame with one row per detection: `image_index` (input row), `label` (model class
index, 1..K-1), `class_name`, `score`, the box `x1, y1, x2, y2` in original pixels; then, only
when the model has the head for them (`output_columns`):
    mask_counts, mask_height, mask_width  the mask as a COCO RLE (mask head; decode with
                                          `mrcnn.evaluation.coco_results.decode_masks`)
    mask_score                            the mask's own score (MaskIoU head)
    keypoints                             [Kp * 3] floats x1, y1, s1, x2, ... in original
                                          pixels (keypoint head; COCO's flat layout)
`frame_detections` turns the frame back into `mrcnn.Detections`.

This module must stay importable from the logged model alone: it imports mlflow, pandas and
`mrcnn` (shipped with the model), never `pipeline`.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from mrcnn.data.image_file import ImageReadError, read_image
from mrcnn.evaluation.coco_results import encode_masks
from mrcnn.export import MODEL_BACKENDS, ONNX_BACKENDS
from mrcnn.inference.detections import Detections

INPUT_COLUMN = "image"
MODEL_ARTIFACT = "model"  # the mrcnn.weights.save folder
ONNX_ARTIFACT = "onnx"  # the whole-model ONNX file (mrcnn.export.to_onnx), when exported
INT8_ARTIFACT = "onnx_int8"  # its int8 file (export.int8, toolchain onnxruntime), when accepted
# the same, toolchain openvino: a folder holding the OpenVINO IR (model_int8.xml + .bin)
OPENVINO_INT8_ARTIFACT = "openvino_int8"
INT8_ARTIFACTS = (OPENVINO_INT8_ARTIFACT, INT8_ARTIFACT)  # what backend int8 runs: either one
FLOAT_ARRAY = "array<double>"  # a list of floats per row (MLflow `Array(double)`)

# (name, MLflow type) of the output frame, in order: always, then per head.
BOX_COLUMNS = (
    ("image_index", "long"),
    ("label", "long"),
    ("class_name", "string"),
    ("score", "double"),
    ("x1", "double"),
    ("y1", "double"),
    ("x2", "double"),
    ("y2", "double"),
)
MASK_COLUMNS = (("mask_counts", "string"), ("mask_height", "long"), ("mask_width", "long"))
MASK_SCORE_COLUMNS = (("mask_score", "double"),)
KEYPOINT_COLUMNS = (("keypoints", FLOAT_ARRAY),)
OUTPUT_COLUMNS = BOX_COLUMNS + MASK_COLUMNS  # a plain Mask R-CNN's (kept for old callers)
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]+")
_PANDAS_TYPES = {"long": "int64", "double": "float64", "string": "object", FLOAT_ARRAY: "object"}


@dataclass(frozen=True)
class Heads:
    """Which optional outputs a model gives: masks, keypoints (Kp > 0) and mask scores."""

    masks: bool = True
    keypoints: int = 0
    mask_scores: bool = False


def model_heads(model: Any) -> Heads:
    """The `Heads` of a `MaskRCNN`, or of an `OnnxModel` (its graph outputs boxes and masks)."""
    heads = getattr(model, "roi_heads", None)
    if heads is None:
        return Heads()
    kp = heads.keypoint_head
    return Heads(
        masks=heads.mask_head is not None,
        keypoints=int(kp.num_keypoints) if kp is not None else 0,
        mask_scores=heads.mask_iou_head is not None,
    )


def output_columns(heads: Heads = Heads()) -> tuple[tuple[str, str], ...]:
    """(name, MLflow type) of the output frame of a model with these heads, in order."""
    return (
        BOX_COLUMNS
        + (MASK_COLUMNS if heads.masks else ())
        + (MASK_SCORE_COLUMNS if heads.mask_scores else ())
        + (KEYPOINT_COLUMNS if heads.keypoints else ())
    )


def load_backend(backend: str, artifacts: dict[str, str]) -> Any:
    """The model that `predict` runs: `MaskRCNN` (torch), `OnnxModel` (onnxruntime, int8 from
    ONNX Runtime's toolchain) or `OpenVinoModel` (openvino: the fp32 ONNX file; int8 from
    OpenVINO's toolchain). Without openvino installed, openvino and an OpenVINO int8 model
    raise `OpenVinoMissingError` (one line naming the install)."""
    if backend not in MODEL_BACKENDS:
        msg = f"model_config backend must be one of {', '.join(MODEL_BACKENDS)}: {backend!r}"
        raise ValueError(msg)
    if backend != "torch":  # an exported file on its runtime
        keys = (ONNX_ARTIFACT,) if backend in ONNX_BACKENDS else INT8_ARTIFACTS
        key = next((k for k in keys if k in artifacts), None)
        if key is None:
            raise ValueError(
                f"backend {backend} needs the model's {' or '.join(keys)} file, but this model "
                "was logged without one (export.portable: true writes the ONNX file, "
                "export.int8: true the int8 one); load it with backend torch"
            )
        if backend == "openvino" or key == OPENVINO_INT8_ARTIFACT:
            from mrcnn.export.openvino_model import OpenVinoModel, find_ir

            # the ONNX file itself, or the .xml in the IR folder
            path = artifacts[key] if key == ONNX_ARTIFACT else find_ir(artifacts[key])
            return OpenVinoModel(path)
        from mrcnn.export.onnx_model import OnnxModel

        return OnnxModel(artifacts[key])
    import torch

    from mrcnn import weights

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return weights.load(artifacts[MODEL_ARTIFACT], device)


class MaskRCNNModel(PythonModel):
    """pyfunc wrapper: encoded images in, one row per detection out (see the module docstring).

    After `load_context`: `backend` (one of `MODEL_BACKENDS`), `model` (what runs
    `detect`), `heads` (which optional columns the output has).
    """

    def load_context(self, context: Any) -> None:
        self.backend = str((context.model_config or {}).get("backend", "torch"))
        self.model = load_backend(self.backend, dict(context.artifacts))
        self.heads = model_heads(self.model)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if INPUT_COLUMN not in frame.columns:
            raise MlflowException(
                f"expected a DataFrame with a binary column '{INPUT_COLUMN}' (encoded image "
                f"files), got columns {list(frame.columns)}",
                error_code=INVALID_PARAMETER_VALUE,
            )
        try:
            images = [
                read_image(image_bytes(data), name=f"row {i}")
                for i, data in enumerate(frame[INPUT_COLUMN])
            ]
        except ImageReadError as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        detections = self.model.detect(images) if images else []
        return detections_frame(detections, self.model.class_names, self.heads)


def image_bytes(value: Any) -> bytes:
    """One `image` cell -> the encoded file's bytes. Base64 text (a str, or bytes made only of
    base64 characters, which no PNG, JPEG, BMP, WebP or TIFF file is: each has a non-ASCII or
    NUL byte in its header) is decoded; file bytes pass through."""
    if isinstance(value, str):
        value = value.encode("ascii", errors="replace")
    data = bytes(value)
    if data and _BASE64_TEXT.fullmatch(data):
        try:
            return base64.b64decode(b"".join(data.split()), validate=True)
        except ValueError:
            return data  # not valid base64 after all: read_image says what is wrong
    return data


def detections_frame(
    detections: list[Detections], class_names: tuple[str, ...], heads: Heads = Heads()
) -> pd.DataFrame:
    """Detections of several images -> the pyfunc's output frame (see the module docstring);
    its columns are `output_columns(heads)` whether or not there are detections."""
    rows: list[dict[str, Any]] = []
    for i, det in enumerate(detections):
        rles = encode_masks(np.asarray(det.masks)) if heads.masks else []
        for j in range(len(det)):
            label = int(det.labels[j])
            x1, y1, x2, y2 = (float(v) for v in det.boxes[j])
            row = {
                "image_index": i,
                "label": label,
                "class_name": class_names[label] if label < len(class_names) else str(label),
                "score": float(det.scores[j]),
                "x1": x1,
                "y1": y1,
                "x2": x2,
                "y2": y2,
            }
            if heads.masks:
                h, w = det.masks.shape[1:]
                row |= {"mask_counts": rles[j]["counts"], "mask_height": h, "mask_width": w}
            if heads.mask_scores:
                row["mask_score"] = float(det.mask_scores[j])
            if heads.keypoints:
                row["keypoints"] = [float(v) for v in np.asarray(det.keypoints[j]).reshape(-1)]
            rows.append(row)
    columns = output_columns(heads)
    frame = pd.DataFrame(rows, columns=[name for name, _ in columns])
    return frame.astype({name: _PANDAS_TYPES[t] for name, t in columns})


def frame_detections(frame: pd.DataFrame, num_images: int) -> list[Detections]:
    """The inverse of `detections_frame`: one `Detections` per input image; masks decoded from
    their RLEs (bool [N, H, W]; [N, 0, 0] without mask columns), keypoints [N, Kp, 3] and
    mask_scores [N] when the frame has those columns."""
    from mrcnn.evaluation.coco_results import decode_masks

    out = []
    for i in range(num_images):
        rows = frame[frame["image_index"] == i]
        n = len(rows)
        if "mask_counts" in frame.columns:
            rles = [
                {"size": [int(r.mask_height), int(r.mask_width)], "counts": r.mask_counts}
                for r in rows.itertuples()
            ]
            masks = decode_masks(rles)
        else:
            masks = np.zeros((n, 0, 0), dtype=bool)
        det = Detections(
            boxes=rows[["x1", "y1", "x2", "y2"]].to_numpy(np.float32).reshape(-1, 4),
            scores=rows["score"].to_numpy(np.float32),
            labels=rows["label"].to_numpy(np.int64),
            masks=masks,
        )
        if "mask_score" in frame.columns:
            det.mask_scores = rows["mask_score"].to_numpy(np.float32)
        if "keypoints" in frame.columns:
            flat = [np.asarray(k, dtype=np.float32) for k in rows["keypoints"]]
            det.keypoints = (
                np.stack(flat).reshape(n, -1, 3) if n else np.zeros((0, 0, 3), np.float32)
            )
        out.append(det)
    return out


mlflow.models.set_model(MaskRCNNModel())
