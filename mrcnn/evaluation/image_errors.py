"""Which images fail, and how: per-image error counts, and every detection's and object's outcome
on one image (what a picture colours).

    types = assign_error_types(coco_gt, results, "segm")    # mrcnn.evaluation.error_types
    worst = images_by_errors(types, top=8)   # [{"image_id", "weighted", "tp", "cls", .., "miss"}]
    detail = image_detail(types, worst[0]["image_id"])       # mrcnn.visualize.draw_error_types

An image's weighted error is the sum over its false positives of weight[type] x score (a
confident mistake costs more than one at 0.05 that a score threshold removes anyway) plus
weight["miss"] per missed object. The weights default to 1; `weights=breakdown["dAP"]` (from
`error_breakdown`) weighs each type by what it costs the AP overall.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mrcnn.evaluation.error_types import DET_TYPES, ERROR_TYPES, ErrorTypes

DEFAULT_WEIGHTS = dict.fromkeys(ERROR_TYPES, 1.0)


def images_by_errors(
    types: ErrorTypes,
    *,
    weights: Mapping[str, float] | None = None,
    top: int | None = None,
) -> list[dict[str, Any]]:
    """Per-image error counts, most weighted first (ties in image order).

    -> [{"image_id", "weighted": float, "tp", "cls", "loc", "both", "dupe", "bkg", "ignored",
         "miss", "gt": int}] for every image (or the `top` first); weights as the module
    docstring says (a type missing from `weights` weighs 0).
    """
    w = {**dict.fromkeys(ERROR_TYPES, 0.0), **(DEFAULT_WEIGHTS if weights is None else weights)}
    n_img = len(types.image_ids)
    counts = {
        name: np.bincount(types.det_image[types.det_type == code], minlength=n_img)
        for code, name in enumerate(DET_TYPES)
    }
    counts["miss"] = np.bincount(types.gt_image[types.gt_missed], minlength=n_img)
    counts["gt"] = np.bincount(types.gt_image, minlength=n_img)
    type_weight = np.asarray(
        [w.get(name, 0.0) if name in ERROR_TYPES else 0.0 for name in DET_TYPES]
    )
    det_w = type_weight[types.det_type] * types.det_score
    weighted = np.bincount(types.det_image, weights=det_w, minlength=n_img)
    weighted = weighted + w["miss"] * counts["miss"]
    order = np.argsort(-weighted, kind="stable")[:top]
    return [
        {
            "image_id": int(types.image_ids[i]),
            "weighted": float(weighted[i]),
            **{name: int(v[i]) for name, v in counts.items()},
        }
        for i in order
    ]


def image_detail(types: ErrorTypes, image_id: int) -> dict[str, Any]:
    """Every detection and object of one image with its outcome.

    -> {"image_id",
        "detections": {"result_index" int [n] (into `results`), "boxes" float [n, 4] xyxy,
                       "category_ids" int [n], "scores" float [n], "types" [n] DET_TYPES names,
                       "objects" int [n]: index into "objects" of the object it matched / would
                       have matched / duplicates / overlaps (-1 none), "ious" float [n]},
        "objects": {"ann_ids" int [m], "boxes" float [m, 4] xyxy, "category_ids" int [m],
                    "status" [m]: "matched", "missed", or "cls" / "loc" (unmatched, and that
                    error of the highest-scored detection at it is why)}}
    Detections in score order (the top `max_dets`); boxes in original image pixels.
    """
    where = np.flatnonzero(types.image_ids == int(image_id))
    if len(where) == 0:
        raise ValueError(f"image {image_id} is not among the typed images")
    i = int(where[0])
    dets = np.flatnonzero(types.det_image == i)
    objs = np.flatnonzero(types.gt_image == i)
    local = np.full(len(types.gt_ann), -1)
    local[objs] = np.arange(len(objs))
    status = np.where(types.gt_det[objs] >= 0, "matched", "missed").astype(object)
    for d in dets[types.det_fixes[dets]]:  # one per unmatched object that is not missed
        status[local[types.det_gt[d]]] = DET_TYPES[types.det_type[d]]
    return {
        "image_id": int(image_id),
        "detections": {
            "result_index": types.det_result[dets],
            "boxes": _xyxy(types.det_box[dets]),
            "category_ids": types.det_category[dets],
            "scores": types.det_score[dets],
            "types": [DET_TYPES[t] for t in types.det_type[dets]],
            "objects": np.where(types.det_gt[dets] >= 0, local[types.det_gt[dets]], -1),
            "ious": types.det_iou[dets],
        },
        "objects": {
            "ann_ids": types.gt_ann[objs],
            "boxes": _xyxy(types.gt_box[objs]),
            "category_ids": types.gt_category[objs],
            "status": status.tolist(),
        },
    }


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    out = np.array(xywh, dtype=np.float64).reshape(-1, 4)
    out[:, 2:] += out[:, :2]
    return out
