"""How much AP each kind of error costs: TIDE's error breakdown (Bolya et al., "TIDE: A General
Toolbox for Identifying Object Detection Errors", ECCV 2020).

    breakdown = error_breakdown(COCO("instances_val.json"), results, "segm")
    breakdown["AP50"], breakdown["dAP"]["loc"], breakdown["fp"]

Each detection and object gets one type (`mrcnn.evaluation.error_types`: cls, loc, both, dupe,
bkg, miss). The dAP of a type is the AP after fixing only the errors of that type, by the paper's
oracles (section 2.3), minus the AP:

    cls   the error becomes a true positive of its object's class (the highest-scored cls / loc
          error of an unmatched object; the others, and those at matched objects, are removed)
    loc   the same, keeping its class
    both, dupe, bkg   the errors are removed
    miss  the missed objects are removed from the ground truth
and two "special" errors (section 2.4):
    fp    every false positive scored below every true positive (perfect precision)
    fn    every unmatched object removed (perfect recall)

The AP is TIDE's: at IoU 0.5, per category the precision made monotone and sampled at the 101
recalls 0, .01, .., 1 (COCO's interpolation), averaged over the categories that have ground truth
or detections (a category only detected counts as 0), in points 0..100. Main dAPs below 0 are
clipped to 0 (binning, as TIDE); special ones are not. Scores that tie are ordered as TIDE does
(image by image; in the fixed runs errors before true positives).

Differences from the `tidecv` package, on purpose: a detection that a crowd region ignores is
not an error here (tidecv types it and may let its oracle fix an object with it); crowd regions
ignore at crowd IoU >= 0.5 (COCOeval) where tidecv needs > 0.5. Measured side by side with
tidecv: docs/evaluate.md ("Error analysis").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from mrcnn.evaluation.error_types import (
    BKG,
    BOTH,
    CLS,
    DET_TYPES,
    DUPE,
    ERROR_TYPES,
    IGNORED,
    LOC,
    TP,
    ErrorTypes,
    assign_error_types,
)

RECALLS = np.arange(101) / 100  # TIDE's (and COCO's) 101 recall points, as TIDE computes them


def error_breakdown(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    iou_type: str = "bbox",
    *,
    image_ids: Sequence[int] | None = None,
    pos_thresh: float = 0.5,
    bg_thresh: float = 0.1,
    max_dets: int = 100,
) -> dict[str, Any]:
    """TIDE's error breakdown of COCO `results` against `coco_gt` for "bbox" or "segm".

    -> {"iou_type", "AP50": TIDE's AP at pos_thresh (0..100),
        "dAP": {"cls", "loc", "both", "dupe", "bkg", "miss"}: AP gained by fixing each type,
        "fp", "fn": AP gained with perfect precision / perfect recall,
        "counts": {"tp", "cls", "loc", "both", "dupe", "bkg", "ignored", "miss", "gt"},
        "per_category": {name: {"AP50", "dAP": {type: ..}, "gt", "tp", "cls", .., "miss"}} for
            the categories with ground truth or detections (AP50 None where it has no ground
            truth; a name two categories share gets its id: "name (id)"; its dAP: its own AP
            after the fix, 100 if the fix leaves it nothing to find and nothing detected, minus
            its AP),
        "settings": {"pos_thresh", "bg_thresh", "max_dets", "images"}}
    An error's category is its detection's (cls errors: the class it predicted), a miss's is
    its object's. Arguments as `assign_error_types`; empty `results` gives AP 0 and every
    object missed.
    """
    types = assign_error_types(
        coco_gt,
        results,
        iou_type,
        image_ids=image_ids,
        pos_thresh=pos_thresh,
        bg_thresh=bg_thresh,
        max_dets=max_dets,
    )
    return tide_breakdown(types)


def tide_breakdown(types: ErrorTypes) -> dict[str, Any]:
    """`error_breakdown` from error types already assigned (to share them with other reports)."""
    k_n = len(types.category_ids)
    cat_index = {int(c): k for k, c in enumerate(types.category_ids)}
    det_k = np.asarray([cat_index[int(c)] for c in types.det_category], np.int64)
    gt_k = np.asarray([cat_index[int(c)] for c in types.gt_category], np.int64)
    n_gt = np.bincount(gt_k, minlength=k_n)
    t = types.det_type
    kept = t != IGNORED
    tp = t == TP
    order = np.arange(len(t))
    fixed_order = order + len(t) * tp  # TIDE's fixed runs push the errors before the positives

    def run(keep, k=det_k, positive=tp, score=types.det_score, gt=n_gt, tie=fixed_order):
        return tide_ap(k[keep], score[keep], positive[keep], tie[keep], gt)

    base, base_per = run(kept, tie=order)
    fixed = {}
    for name, code in (("cls", CLS), ("loc", LOC)):
        fix = (t == code) & types.det_fixes
        keep = kept & ((t != code) | fix)
        k = np.where(fix, gt_k[np.maximum(types.det_gt, 0)], det_k) if len(gt_k) else det_k
        fixed[name] = run(keep, k=k, positive=tp | fix)
    for name, code in (("both", BOTH), ("dupe", DUPE), ("bkg", BKG)):
        fixed[name] = run(kept & (t != code))
    missed = np.bincount(gt_k[types.gt_missed], minlength=k_n)
    fixed["miss"] = run(kept, gt=n_gt - missed)
    n_tp = np.bincount(det_k[tp], minlength=k_n)
    special = {
        "fp": run(kept, score=tp.astype(np.float64)),
        "fn": run(kept, gt=n_tp),
    }
    counts = {name: int((t == code).sum()) for code, name in enumerate(DET_TYPES)}
    counts.update(miss=int(types.gt_missed.sum()), gt=len(types.gt_ann))
    return {
        "iou_type": types.iou_type,
        "AP50": base,
        "dAP": {e: max(fixed[e][0] - base, 0.0) for e in ERROR_TYPES},
        "fp": special["fp"][0] - base,
        "fn": special["fn"][0] - base,
        "counts": counts,
        "per_category": _per_category(types, det_k, gt_k, n_gt, base_per, fixed),
        "settings": {
            "pos_thresh": types.pos_thresh,
            "bg_thresh": types.bg_thresh,
            "max_dets": types.max_dets,
            "images": len(types.image_ids),
        },
    }


def tide_ap(
    category: np.ndarray,
    score: np.ndarray,
    positive: np.ndarray,
    tie: np.ndarray,
    n_gt: np.ndarray,
) -> tuple[float, np.ndarray]:
    """TIDE's AP (0..100) of scored detections -> (mean AP, per-category AP float [K], NaN
    where a category has neither ground truth nor detections).

    category int [N] in 0..K-1; score float [N]; positive bool [N]; tie [N] orders equal scores
    (lower first); n_gt int [K] objects per category. Detections are sorted once for all
    categories; each category's curve is then a slice.
    """
    k_n = len(n_gt)
    order = np.lexsort((tie, -score, category))
    k, hit = category[order], positive[order]
    start = np.searchsorted(k, np.arange(k_n + 1))
    tps = np.cumsum(hit)
    fps = np.cumsum(~hit)
    ap = np.full(k_n, np.nan)
    for c in range(k_n):
        s, e = start[c], start[c + 1]
        if n_gt[c] <= 0:
            if e > s:
                ap[c] = 0.0  # detections of a category without ground truth: AP 0
            continue
        if e == s:
            ap[c] = 0.0
            continue
        tp_c = tps[s:e] - (tps[s - 1] if s else 0)
        fp_c = fps[s:e] - (fps[s - 1] if s else 0)
        precision = np.maximum.accumulate((tp_c / (tp_c + fp_c))[::-1])[::-1]
        at = np.searchsorted(tp_c / n_gt[c], RECALLS, side="left")
        ap[c] = float(np.where(at < e - s, precision[np.minimum(at, e - s - 1)], 0.0).mean() * 100)
    present = ~np.isnan(ap)
    return (float(ap[present].mean()) if present.any() else 0.0), ap


def _per_category(types, det_k, gt_k, n_gt, base_per, fixed) -> dict[str, dict[str, Any]]:
    k_n = len(types.category_ids)
    names = types.category_names
    counts = {
        name: np.bincount(det_k[types.det_type == code], minlength=k_n)
        for code, name in enumerate(DET_TYPES)
        if name != "ignored"
    }
    counts["miss"] = np.bincount(gt_k[types.gt_missed], minlength=k_n)
    out: dict[str, dict[str, Any]] = {}
    for c in range(k_n):
        if np.isnan(base_per[c]):
            continue  # neither ground truth nor detections
        name = names[c] if names.count(names[c]) == 1 else f"{names[c]} ({types.category_ids[c]})"
        entry: dict[str, Any] = {"AP50": float(base_per[c]) if n_gt[c] else None}
        # a category the fix leaves with nothing to find and nothing detected counts as 100
        entry["dAP"] = {
            e: max(float(np.nan_to_num(fixed[e][1][c], nan=100.0) - base_per[c]), 0.0)
            for e in ERROR_TYPES
        }
        entry["gt"] = int(n_gt[c])
        entry.update({name_: int(v[c]) for name_, v in counts.items()})
        out[name] = entry
    return out
