"""Detections <-> COCO results format (what `COCOeval` and COCO tools read).

One result per instance: `{"image_id", "category_id", "bbox": [x, y, w, h], "score",
"segmentation": RLE}` where the RLE is `pycocotools.mask.encode` of the instance mask with its
`counts` decoded to a string (JSON-safe). Encoding is lossless: `decode_masks(encode_masks(m))`
gives `m` back.

Keypoint models add `"keypoints": [x1, y1, s1, x2, y2, s2, ...]` (COCO's flat layout; the third
value of each is the keypoint's score where COCO's ground truth has its visibility, as detectron2
writes them; COCOeval reads only x and y). Mask Scoring R-CNN models add `"segm_score"`, the
mask's own score, which `mrcnn.coco_eval.coco_evaluate` ranks the segm results by (the bbox
results keep `"score"`). A model without a mask head writes no `"segmentation"`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from mrcnn.structures import Detections


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """bool/uint8 `[N, H, W]` -> N COCO RLEs `{"size": [H, W], "counts": str}`."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    # pycocotools wants a Fortran-ordered uint8 [H, W, N].
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_masks(rles: list[Mapping[str, Any]], shape: tuple[int, int] | None = None) -> np.ndarray:
    """COCO RLEs (string or bytes counts) -> bool `[N, H, W]`; `shape` is used when N = 0."""
    if not rles:
        h, w = shape if shape is not None else (0, 0)
        return np.zeros((0, h, w), dtype=bool)
    fixed = [
        {"size": list(r["size"]), "counts": r["counts"].encode("ascii")}
        if isinstance(r["counts"], str)
        else dict(r)
        for r in rles
    ]
    return mask_utils.decode(fixed).transpose(2, 0, 1).astype(bool)


def to_coco_results(
    det: Detections,
    image_id: int,
    category_ids: Mapping[int, int] | None = None,
    file_name: str | None = None,
) -> list[dict[str, Any]]:
    """One image's detections -> COCO result dicts (bbox as `[x, y, w, h]` in pixels).

    `category_ids` maps model labels to dataset category ids (labels are used as they are when it
    is None); a label missing from it raises `KeyError`. `file_name` is added to each result when
    given (COCO tools ignore extra keys).
    """
    has_masks = det.masks.ndim == 3 and det.masks.shape[1] * det.masks.shape[2] > 0
    rles = encode_masks(det.masks) if has_masks else None
    out = []
    for i in range(len(det)):
        x1, y1, x2, y2 = (float(v) for v in det.boxes[i])
        label = int(det.labels[i])
        result: dict[str, Any] = {"image_id": int(image_id)}
        if file_name is not None:
            result["file_name"] = file_name
        result.update(
            category_id=int(category_ids[label]) if category_ids is not None else label,
            bbox=[x1, y1, x2 - x1, y2 - y1],
            score=float(det.scores[i]),
        )
        if rles is not None:
            result["segmentation"] = rles[i]
        if det.mask_scores is not None:
            result["segm_score"] = float(det.mask_scores[i])
        if det.keypoints is not None:
            result["keypoints"] = [float(v) for v in det.keypoints[i].reshape(-1)]
        out.append(result)
    return out
