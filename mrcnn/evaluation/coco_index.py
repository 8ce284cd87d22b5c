"""The COCO indexes COCOeval reads: the results of one IoU type, the ground truth for
faster-coco-eval.

    copies = results_for("segm", results)       # our copies, in COCOeval's form for that type
    gt = faster_ground_truth(coco_gt)           # faster-coco-eval's index of a pycocotools COCO
    dets = results_index(gt, copies, "segm")    # = gt.loadRes(copies), built in batch
"""

from __future__ import annotations

import contextlib
import io
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from pycocotools.coco import COCO


def results_for(iou_type: str, results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `results` as COCOeval wants them for one IoU type."""
    if iou_type == "keypoints":
        # Without bbox and segmentation, loadRes takes a result's box and area from its keypoints.
        keep = ("image_id", "category_id", "score", "keypoints")
        return [{k: r[k] for k in keep} for r in results if "keypoints" in r]
    if iou_type == "segm":
        # Without "bbox", pycocotools takes a mask result's area from the mask, so small / medium
        # / large mean the same for segm results as for the ground truth (as in detectron2).
        out = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        for r in out:
            if "segm_score" in r:  # Mask Scoring R-CNN: masks ranked by their own score
                r["score"] = r["segm_score"]
        return out
    return [{k: v for k, v in r.items() if k != "segmentation"} for r in results]


# faster-coco-eval's own COCO index of each ground truth, built once per `COCO` object: its
# evaluator adds fields ("ignore", the masks' RLE) to the annotations it reads, so it gets
# copies, and the RLEs it caches there are reused by the next evaluation (periodic validation).
_FASTER_GT: weakref.WeakKeyDictionary[COCO, Any] = weakref.WeakKeyDictionary()


def faster_ground_truth(coco_gt: COCO) -> Any:
    import faster_coco_eval

    gt = _FASTER_GT.get(coco_gt)
    if gt is None:
        gt = faster_coco_eval.COCO()
        gt.print_function = lambda *a: None
        gt.dataset = {
            **coco_gt.dataset,
            "annotations": [dict(a) for a in coco_gt.dataset.get("annotations", [])],
        }
        gt.createIndex()
        _FASTER_GT[coco_gt] = gt
    return gt


def load_results(coco_gt: Any, results: list[dict[str, Any]], coco_class: type) -> Any:
    """`coco_gt.loadRes(results)`, or an empty results set (which `loadRes` cannot build)."""
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(results)
    empty = coco_class()
    empty.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def results_index(coco_gt: Any, results: list[dict[str, Any]], iou_type: str) -> Any:
    """faster-coco-eval's index of bbox or segm `results` (our copies: completed in place): what
    `coco_gt.loadRes(results)` builds, less what a bbox or segm evaluation never reads.

    `loadRes` decodes each result's RLE twice, in two calls per result (its area, its box). Here
    the areas of all RLEs come from one call, and segm results get no box (loadRes computes one
    from the mask; faster-coco-eval's segm evaluation reads the masks, their areas and scores
    only), bbox results no polygon "segmentation". The fields set are loadRes's: "id" from 1 in
    order, "iscrowd" 0, "area" (the box's w * h for bbox results, the mask's pixel count for segm
    ones). At COCO scale (5,000 images, 500,000 results) this took `coco_evaluate` bbox + segm
    from 19.3-20.0 s to 16.0 s (docs/benchmarks.md). test_coco_eval_backends holds the numbers
    to pycocotools' own loadRes path. Keypoint results (few) go through loadRes."""
    from faster_coco_eval.core import mask as mask_api

    if iou_type == "keypoints" or not results:
        return load_results(coco_gt, results, type(coco_gt))
    if iou_type == "segm":
        areas = mask_api.area([r["segmentation"] for r in results]).tolist()
        for i, (r, area) in enumerate(zip(results, areas, strict=True), start=1):
            r["area"], r["id"], r["iscrowd"] = area, i, 0
    else:
        for i, r in enumerate(results, start=1):
            _, _, w, h = r["bbox"]
            r["area"], r["id"], r["iscrowd"] = w * h, i, 0
    index = type(coco_gt)()
    index.print_function = lambda *a: None
    index.dataset = {
        "info": dict(coco_gt.dataset.get("info", {})),
        "images": list(coco_gt.dataset["images"]),
        "categories": [dict(c) for c in coco_gt.dataset["categories"]],
        "annotations": results,
    }
    index.createIndex()
    return index
