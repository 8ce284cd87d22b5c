"""Where precision goes: COCO's `analyze()` breakdown of the precision / recall curve (after Hoiem
et al., "Diagnosing Error in Object Detectors", ECCV 2012; cocoapi's MATLAB `CocoEval.analyze`).

    bd = pr_breakdown(COCO("instances_val.json"), results, "segm")
    bd.curves()[:, :, 0]     # float [7, R]: the seven curves below, area "all"
    bd.ap()["small"]["Loc"]  # the area under one curve (the numbers in analyze()'s legends)

Seven PR curves per category and object size (all, small, medium, large), each above the last,
each a COCOeval run (maxDets 100):

    C75  precision at IoU .75             C50  at IoU .50
    Loc  at IoU .10: localisation errors forgiven
    Sim  at IoU .10, and detections on an object of another category of the same supercategory
         ignored (neither right nor wrong): confusions with similar classes forgiven
    Oth  the same for objects of any other category: every class confusion forgiven
    BG   precision 1 wherever Oth reaches the recall: background false positives removed
    FN   precision 1 everywhere: every object found
The band between two curves is what that error costs (e.g. Oth - Sim: confusions with
dissimilar classes).

analyze() runs COCOeval once per category for Sim and Oth: the category's detections against all
the ground truth with useCats=0, the other categories' objects marked ignore. Here each of Sim and
Oth is one COCOeval run over all categories that gives the same numbers: the ground truth gets,
for each category k, an ignored copy labelled k of every other-category object that some
detection of k overlaps at IoU >= .1 (copies no detection of k reaches cannot change k's
matching: COCOeval only matches at IoU >= the threshold). The backends ("faster", "pycocotools")
are those of `coco_evaluate`. tests/mrcnn/evaluation/test_analyze.py holds the two forms
equal. A category's curves are -1 where it has no ground truth of that size, and such
categories are left out of the means (analyze() counts them as 0).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn.evaluation.coco_eval import BACKENDS
from mrcnn.evaluation.coco_index import load_results, results_for, results_index
from mrcnn.evaluation.matching import gt_rles, prepare_scene

CURVES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
AREAS = ("all", "small", "medium", "large")  # COCOeval's default area ranges, in its order
# analyze()'s colours for the bands under each curve (C75 and C50 white).
CURVE_COLORS = ((1, 1, 1), (1, 1, 1), (0.31, 0.51, 0.74), (0.75, 0.31, 0.30))
CURVE_COLORS += ((0.36, 0.90, 0.38), (0.50, 0.39, 0.64), (1, 0.6, 0))
LOC_IOU = 0.1


@dataclass
class PrBreakdown:
    """analyze()'s curves (`pr_breakdown`).

    precision float [7, R, K, A]: CURVES x recall thresholds x categories x AREAS; -1 where the
              category has no ground truth of that size
    recall    float [R] (0, .01, .., 1);  category_ids [K], names [K]
    """

    iou_type: str
    recall: np.ndarray
    precision: np.ndarray
    category_ids: list[int]
    names: list[str]

    def curves(self, categories: Sequence[int] | None = None) -> np.ndarray:
        """The mean curves over `categories` (ids; default all) that have ground truth of each
        size -> float [7, R, A]; NaN for a size no category has."""
        p = self.precision
        if categories is not None:
            p = p[:, :, [self.category_ids.index(int(c)) for c in categories]]
        valid = p[0] > -1  # [R, K, A]
        count = valid.sum(1)  # [R, A]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(valid[None], p, 0).sum(2) / count[None]

    def ap(self, categories: Sequence[int] | None = None) -> dict[str, dict[str, float | None]]:
        """{area: {curve: mean precision over recall}} of `curves` (None where undefined)."""
        c = self.curves(categories).mean(1)  # [7, A]
        return {
            area: {
                n: (None if np.isnan(v) else float(v)) for n, v in zip(CURVES, c[:, a], strict=True)
            }
            for a, area in enumerate(AREAS)
        }


def pr_breakdown(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    iou_type: str = "bbox",
    *,
    image_ids: Sequence[int] | None = None,
    backend: str = "faster",
) -> PrBreakdown:
    """analyze()'s seven PR curves of COCO `results` against `coco_gt` ("bbox" or "segm"): three
    COCOeval runs (IoU .75 / .5 / .1; Sim; Oth), as the module docstring says."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(int(i) for i in image_ids)
    cat_ids = sorted(int(c) for c in coco_gt.getCatIds())
    sup = {c: coco_gt.cats[c].get("supercategory", f"#{c}") for c in cat_ids}
    copies_sim, copies_oth = _confusable(coco_gt, results, iou_type, ids, sup)
    coco_class, evaluator = _backend(backend)
    gt = _with_copies(coco_gt, [], coco_class)
    with contextlib.redirect_stdout(io.StringIO()):
        copies = results_for(iou_type, results)
        if backend == "faster":
            dets = results_index(gt, copies, iou_type)
        else:  # the reference: pycocotools' own loadRes
            dets = load_results(gt, copies, coco_class)
    std = _evaluate(evaluator, gt, dets, iou_type, ids, [0.75, 0.5, LOC_IOU])
    precision = np.zeros((7, *std.shape[1:]))  # [7, R, K, A]
    precision[0:3] = std  # IoU .75, .5, .1
    for row, copies in ((3, copies_sim), (4, copies_oth)):
        gt = _with_copies(coco_gt, copies, coco_class)
        precision[row] = _evaluate(evaluator, gt, dets, iou_type, ids, [LOC_IOU])[0]
    defined = std[0] > -1  # [R, K, A]
    precision[5] = precision[4] > 0
    precision[6] = 1.0
    precision[:, ~defined] = -1
    return PrBreakdown(
        iou_type=iou_type,
        recall=np.linspace(0.0, 1.0, 101),
        precision=precision,
        category_ids=cat_ids,
        names=[str(coco_gt.cats[c]["name"]) for c in cat_ids],
    )


def _confusable(coco_gt, results, iou_type, ids, sup) -> tuple[list[tuple], list[tuple]]:
    """(object annotation, category) pairs for the ignored copies: every object of another
    category that a detection of the category overlaps at IoU >= LOC_IOU (crowd regions with
    COCOeval's crowd IoU), same supercategory (Sim) and any (Oth)."""
    scene = prepare_scene(coco_gt, results, iou_type, image_ids=ids, max_dets=None)
    anns = []
    for i in scene.image_ids:
        anns += coco_gt.imgToAnns.get(int(i), [])
    geoms, starts = _object_geometry(coco_gt, scene, anns)
    pairs: set[tuple[int, int]] = set()
    for i in range(len(scene.image_ids)):
        d0, d1 = scene.det_start[i], scene.det_start[i + 1]
        g0, g1 = starts[i], starts[i + 1]
        if d1 == d0 or g1 == g0:
            continue
        crowd = [int(anns[k].get("iscrowd", 0)) for k in range(g0, g1)]
        iou = np.asarray(mask_utils.iou(scene.det_geom[d0:d1], geoms[g0:g1], crowd))
        det_cat = scene.det_category[d0:d1]
        obj_cat = np.asarray([anns[k]["category_id"] for k in range(g0, g1)])
        d, g = np.nonzero((iou >= LOC_IOU - 1e-12) & (det_cat[:, None] != obj_cat[None, :]))
        pairs.update(zip((g + g0).tolist(), det_cat[d].tolist(), strict=True))
    ordered = sorted(pairs)
    oth = [(anns[g], k) for g, k in ordered if k in sup]
    sim = [(a, k) for a, k in oth if sup[k] == sup[a["category_id"]]]
    return sim, oth


def _object_geometry(coco_gt: COCO, scene, anns: list[dict]) -> tuple[Any, np.ndarray]:
    """Every object's (crowd regions too) box or RLE, image by image -> (geometry [G'] as
    `Scene.gt_geom`, starts int [I + 1])."""
    image_index = {int(i): k for k, i in enumerate(scene.image_ids)}
    counts = np.bincount([image_index[a["image_id"]] for a in anns], minlength=len(image_index))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if scene.iou_type == "bbox":
        return np.asarray([a["bbox"] for a in anns], np.float64).reshape(-1, 4), starts
    rle = gt_rles(coco_gt)
    return [rle(a) for a in anns], starts


def _with_copies(coco_gt: COCO, copies: list[tuple], coco_class: type) -> Any:
    """The ground truth (annotations copied: COCOeval writes into them) plus the ignored
    copies, each marked "_analyze_ignore"."""
    anns = [dict(a) for a in coco_gt.dataset.get("annotations", [])]
    next_id = max((a["id"] for a in anns), default=0) + 1
    for k, (ann, cat) in enumerate(copies):
        anns.append({**ann, "id": next_id + k, "category_id": cat, "_analyze_ignore": 1})
    gt = coco_class()
    if hasattr(gt, "print_function"):
        gt.print_function = lambda *a: None
    gt.dataset = {**coco_gt.dataset, "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _backend(backend: str) -> tuple[type, type]:
    """(the COCO class, a COCOeval subclass that marks the copies ignore after its _prepare)."""
    if backend == "faster":
        import faster_coco_eval

        coco_class, base = faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster
    else:
        coco_class, base = COCO, COCOeval

    class AnalyzeEval(base):  # type: ignore[misc, valid-type]
        def _prepare(self) -> None:
            super()._prepare()  # sets every object's "ignore" from its iscrowd
            for ann in self.cocoGt.dataset["annotations"]:
                if ann.get("_analyze_ignore"):
                    ann["ignore"] = 1

    return coco_class, AnalyzeEval


def _evaluate(evaluator, gt, dets, iou_type, ids, thresholds) -> np.ndarray:
    """One COCOeval run (100 detections per image) -> precision float [T, R, K, A]."""
    kwargs = {"print_function": lambda *a: None} if hasattr(evaluator, "print_function") else {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ev = evaluator(gt, dets, iou_type, **kwargs)
        ev.params.imgIds = ids
        ev.params.iouThrs = np.asarray(thresholds, np.float64)
        ev.params.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    return np.asarray(ev.eval["precision"])[..., 0]
