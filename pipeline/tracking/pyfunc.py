"""The registered model, as MLflow "models from code" (no pickle anywhere).

`pipeline.export` logs this file as the pyfunc's code, the `mrcnn` package as its code path and
the `mrcnn.weights.save` folder (model.safetensors + config.json) as its `model` artifact.
Loading runs `load_context`, which rebuilds the network with `mrcnn.weights.load`.

    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/mrcnn-shapes@champion")
    frame = model.predict(pd.DataFrame({"image": [open("a.jpg", "rb").read()]}))

Input: a DataFrame with a binary column `image`, one encoded image file (JPEG, PNG, BMP, WebP)
per row; a served model takes it base64-encoded (`{"dataframe_split": {"columns": ["image"],
"data": [["<base64>"]]}}`). Output: a DataFrame with one row per detection, the columns of
`OUTPUT_COLUMNS`: `image_index` (input row), `label` (model class index, 1..K-1), `class_name`,
`score`, the box `x1, y1, x2, y2` in original pixels, and the mask as a COCO RLE (`mask_counts`
string, `mask_height`, `mask_width`; decode with `mrcnn.coco_results.decode_masks`).

This module must stay importable from the logged model alone: it imports mlflow, pandas and
`mrcnn` (shipped with the model), never `pipeline`.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from mrcnn.coco_results import encode_masks
from mrcnn.images import read_image
from mrcnn.structures import Detections

INPUT_COLUMN = "image"
# (name, MLflow type) of the output frame, in order.
OUTPUT_COLUMNS = (
    ("image_index", "long"),
    ("label", "long"),
    ("class_name", "string"),
    ("score", "double"),
    ("x1", "double"),
    ("y1", "double"),
    ("x2", "double"),
    ("y2", "double"),
    ("mask_counts", "string"),
    ("mask_height", "long"),
    ("mask_width", "long"),
)
_PANDAS_TYPES = {"long": "int64", "double": "float64", "string": "object"}


class MaskRCNNModel(PythonModel):
    """pyfunc wrapper: encoded images in, one row per detection out."""

    def load_context(self, context: Any) -> None:
        import torch

        from mrcnn import weights

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = weights.load(context.artifacts["model"], device)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if INPUT_COLUMN not in frame.columns:
            raise ValueError(
                f"expected a DataFrame with a binary column '{INPUT_COLUMN}' (encoded image "
                f"files), got columns {list(frame.columns)}"
            )
        images = [read_image(data, name=f"row {i}") for i, data in enumerate(frame[INPUT_COLUMN])]
        detections = self.model.detect(images) if images else []
        return detections_frame(detections, self.model.class_names)


def detections_frame(detections: list[Detections], class_names: tuple[str, ...]) -> pd.DataFrame:
    """Detections of several images -> the pyfunc's output frame (see the module docstring)."""
    rows: list[dict[str, Any]] = []
    for i, det in enumerate(detections):
        h, w = det.masks.shape[1:]
        for j, rle in enumerate(encode_masks(det.masks)):
            label = int(det.labels[j])
            x1, y1, x2, y2 = (float(v) for v in det.boxes[j])
            rows.append(
                {
                    "image_index": i,
                    "label": label,
                    "class_name": class_names[label] if label < len(class_names) else str(label),
                    "score": float(det.scores[j]),
                    "x1": x1,
                    "y1": y1,
                    "x2": x2,
                    "y2": y2,
                    "mask_counts": rle["counts"],
                    "mask_height": int(h),
                    "mask_width": int(w),
                }
            )
    columns = [name for name, _ in OUTPUT_COLUMNS]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({name: _PANDAS_TYPES[t] for name, t in OUTPUT_COLUMNS})


def frame_detections(frame: pd.DataFrame, num_images: int) -> list[Detections]:
    """The inverse of `detections_frame` (masks decoded from their RLEs)."""
    from mrcnn.coco_results import decode_masks

    out = []
    for i in range(num_images):
        rows = frame[frame["image_index"] == i]
        rles = [
            {"size": [int(r.mask_height), int(r.mask_width)], "counts": r.mask_counts}
            for r in rows.itertuples()
        ]
        out.append(
            Detections(
                boxes=rows[["x1", "y1", "x2", "y2"]].to_numpy(np.float32).reshape(-1, 4),
                scores=rows["score"].to_numpy(np.float32),
                labels=rows["label"].to_numpy(np.int64),
                masks=decode_masks(rles),
            )
        )
    return out


mlflow.models.set_model(MaskRCNNModel())
