"""COCO evaluation: `COCOeval` for bbox, segm and keypoint AP, per category, with the precision
/ recall arrays kept for plots.

    scores = coco_evaluate(COCO("instances_val.json"), results)  # mrcnn.evaluation.coco_results
    scores.metrics["segm"]["AP"]          # = COCOeval.stats[0]

Two backends compute the same numbers (tests/mrcnn/evaluation/test_coco_eval.py holds them to 1e-6
on stats and per-category precision, crowd regions and empty categories included):
- "faster" (default): faster-coco-eval's `COCOeval_faster`, pycocotools' algorithm with the
  per-image matching and the accumulation in C++ (several times faster on COCO val, see
  docs/benchmarks.md);
- "pycocotools": the reference implementation.

Shape shorthand: T IoU thresholds (.50:.05:.95, 10), R recall thresholds (0:.01:1, 101),
K categories, A area ranges (all, small < 32^2, medium, large > 96^2 px), M max detections
per image (1, 10, 100). COCO writes -1 for "undefined": a statistic of an area range, or a
precision of a category, that has no ground truth.

Feeding the ground truth back as results (`ground_truth_results`) gives AP = 1: that is the
test that the evaluation itself is sound.

Keypoints (`iou_types=("keypoints",)`) are matched by object keypoint similarity (OKS) instead
of IoU: OKS = mean over labelled keypoints of exp(-d^2 / (2 s^2 k^2)), d the distance, s^2 the
object's area, k = 2 sigma a per-keypoint constant (`oks_sigmas`; COCO's 17 person sigmas by
default). Keypoint stats have no small-object range: AP, AP50, AP75, APm, APl.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn.evaluation.coco_index import (
    faster_ground_truth,
    load_results,
    results_for,
    results_index,
)
from mrcnn.evaluation.coco_results import encode_masks

log = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm")  # the default: what a Mask R-CNN is evaluated on
ALL_IOU_TYPES = ("bbox", "segm", "keypoints")
BACKENDS = ("faster", "pycocotools")
# COCOeval.stats[0:6]: AP over IoU .50:.95, at .50, at .75, then small / medium / large objects.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# COCOeval.stats[0:5] for keypoints (no small range: keypoints are only labelled on larger people).
KEYPOINT_METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl")


@dataclass
class CocoScores:
    """What `coco_evaluate` measured.

    metrics:       {"bbox": {"AP": .., "AP50": .., ...}, "segm": {...}} = COCOeval.stats[0:6]
    per_category:  {name: {"bbox_AP", "segm_AP"}} in the ground truth's category order: AP
                   over IoU .50:.95 (area all, 100 detections), None for a category without
                   ground truth; a name two categories share gets its id: "name (id)"
    precision:     {iou_type: float [T, R, K, A, M]} = COCOeval.eval["precision"] (-1 undefined)
    stats:         {iou_type: float [12]} = COCOeval.stats: the six APs of `metrics`, then AR
                   at 1, 10, 100 detections and AR small / medium / large
    iou_thresholds float [T]; recall_thresholds float [R]
    summary:       {iou_type: the table COCOeval.summarize() prints}
    """

    metrics: dict[str, dict[str, float]]
    per_category: dict[str, dict[str, float | None]]
    precision: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    summary: dict[str, str]


class EvaluationInputError(ValueError):
    """Results and ground truth do not belong together (the message names the image ids)."""


def coco_evaluate(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    iou_types: Sequence[str] = IOU_TYPES,
    image_ids: Sequence[int] | None = None,
    oks_sigmas: Sequence[float] | None = None,
    *,
    backend: str = "faster",
    processes: int = 1,
) -> CocoScores:
    """`COCOeval` of COCO `results` against `coco_gt` for each of `iou_types`.

    results:   [{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation": RLE}]
               (`mrcnn.evaluation.coco_results.to_coco_results`); not modified
    image_ids: the images evaluated (default every image of `coco_gt`); the ground truth of
               other images is not counted
    oks_sigmas: per-keypoint OKS sigmas for "keypoints" (default COCO's 17 person ones); one
               per keypoint of the ground truth's categories
    "segm" ranks results by their "segm_score" where they have one (Mask Scoring R-CNN),
    "keypoints" evaluates the results that have "keypoints".
    backend:   "faster" (faster-coco-eval's C++ COCOeval) or "pycocotools" (the reference)
    processes: evaluate the IoU types side by side in up to this many forked processes (one
               type each; the same numbers as one after the other); 1 = in this process
    An empty `results` is evaluated as "nothing detected" (AP 0 wherever there is ground truth),
    with a warning, instead of pycocotools' `loadRes` failing on it.
    """
    for t in iou_types:
        if t not in ALL_IOU_TYPES:
            raise ValueError(f"iou_types must be among {ALL_IOU_TYPES}, got {t!r}")
    if not iou_types:
        raise ValueError("iou_types is empty")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    known = set(coco_gt.getImgIds())
    ids = sorted(known) if image_ids is None else sorted({int(i) for i in image_ids})
    strangers = sorted(({int(r["image_id"]) for r in results} | set(ids)) - known)
    if strangers:
        raise EvaluationInputError(
            f"image ids {strangers[:5]} ({len(strangers)} in all) are not in the ground truth: "
            "the predictions and the annotations do not belong together"
        )
    if not results:
        log.warning("no detections at all: every AP is 0 (or -1 where there is no ground truth)")
    metrics: dict[str, dict[str, float]] = {}
    precision: dict[str, np.ndarray] = {}
    stats: dict[str, np.ndarray] = {}
    summary: dict[str, str] = {}
    job = _Job(coco_gt, results, ids, oks_sigmas, backend)
    for iou_type, ev in zip(iou_types, _evaluate_types(job, iou_types, processes), strict=True):
        names = KEYPOINT_METRIC_NAMES if iou_type == "keypoints" else METRIC_NAMES
        metrics[iou_type] = {k: float(v) for k, v in zip(names, ev.stats, strict=False)}
        precision[iou_type] = ev.precision
        stats[iou_type] = ev.stats[:12]
        summary[iou_type] = ev.summary
    last = ev  # every type has the same categories and thresholds
    names = [str(coco_gt.cats[c]["name"]) for c in last.cat_ids]
    per_category: dict[str, dict[str, float | None]] = {}
    for k, (cat_id, name) in enumerate(zip(last.cat_ids, names, strict=True)):
        entry: dict[str, float | None] = {}
        for iou_type in iou_types:
            p = precision[iou_type][:, :, k, 0, -1]  # [T, R]: area all, 100 detections
            entry[f"{iou_type}_AP"] = float(p[p > -1].mean()) if (p > -1).any() else None
        per_category[name if names.count(name) == 1 else f"{name} ({cat_id})"] = entry
    return CocoScores(
        metrics=metrics,
        per_category=per_category,
        precision=precision,
        stats=stats,
        iou_thresholds=last.iou_thresholds,
        recall_thresholds=last.recall_thresholds,
        summary=summary,
    )


@dataclass
class _Job:
    """What every IoU type's evaluation reads (handed to forked processes by inheritance)."""

    coco_gt: COCO
    results: Sequence[Mapping[str, Any]]
    image_ids: list[int]
    oks_sigmas: Sequence[float] | None
    backend: str


@dataclass
class _Evaluated:
    """One IoU type's COCOeval output (small enough to send back from a process)."""

    stats: np.ndarray  # float64 [12] ([10] for keypoints)
    precision: np.ndarray  # [T, R, K, A, M]
    summary: str
    cat_ids: list[int]
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray


def _evaluate_type(job: _Job, iou_type: str) -> _Evaluated:
    copies = results_for(iou_type, job.results)
    sigmas = _oks_sigmas(job.coco_gt, job.oks_sigmas) if iou_type == "keypoints" else None
    run = _run_faster if job.backend == "faster" else _run_pycocotools
    ev, summary = run(job.coco_gt, copies, iou_type, job.image_ids, sigmas)
    p = ev.params
    return _Evaluated(
        stats=np.asarray(ev.stats, dtype=np.float64),
        precision=np.asarray(ev.eval["precision"]),
        summary=summary,
        cat_ids=[int(c) for c in p.catIds],
        iou_thresholds=np.asarray(p.iouThrs),
        recall_thresholds=np.asarray(p.recThrs),
    )


# The job of the forked evaluation processes: set just before they fork, so they inherit it
# (the ground truth and 500,000 COCO val results are not pickled).
_FORKED_JOB: _Job | None = None


def _evaluate_forked(iou_type: str) -> _Evaluated:
    assert _FORKED_JOB is not None
    return _evaluate_type(_FORKED_JOB, iou_type)


def _evaluate_types(job: _Job, iou_types: Sequence[str], processes: int) -> list[_Evaluated]:
    """Each IoU type evaluated, one after the other or in forked processes side by side."""
    global _FORKED_JOB
    n = min(processes, len(iou_types))
    if n < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [_evaluate_type(job, t) for t in iou_types]
    _FORKED_JOB = job
    try:
        with multiprocessing.get_context("fork").Pool(n) as pool:
            return pool.map(_evaluate_forked, iou_types, chunksize=1)
    finally:
        _FORKED_JOB = None


def _oks_sigmas(coco_gt: COCO, sigmas: Sequence[float] | None) -> np.ndarray:
    """OKS sigmas as COCOeval wants them, checked against the ground truth's keypoint count."""
    counts = {len(c.get("keypoints", [])) for c in coco_gt.dataset.get("categories", [])}
    counts.discard(0)
    if sigmas is None:
        sigmas = COCO_PERSON_OKS_SIGMAS
    if counts and counts != {len(sigmas)}:
        raise ValueError(
            f"oks_sigmas has {len(sigmas)} values but the ground truth's categories have "
            f"{sorted(counts)} keypoints: give one sigma per keypoint (evaluate.oks_sigmas)"
        )
    return np.asarray(sigmas, dtype=np.float64)


# COCO's per-keypoint sigmas for its 17 person keypoints (cocoapi's defaults).
COCO_PERSON_OKS_SIGMAS = tuple(
    v / 10.0
    for v in (0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07)
    + (0.87, 0.87, 0.89, 0.89)
)


def _run_pycocotools(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    iou_type: str,
    ids: list[int],
    oks_sigmas: np.ndarray | None = None,
) -> tuple[COCOeval, str]:
    """pycocotools' evaluate, accumulate, summarize -> the evaluator and its summary table."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):  # pycocotools prints its progress
        ev = COCOeval(coco_gt, load_results(coco_gt, results, COCO), iouType=iou_type)
        ev.params.imgIds = ids
        if oks_sigmas is not None:
            ev.params.kpt_oks_sigmas = oks_sigmas
        ev.evaluate()
        ev.accumulate()
        summary_start = text.tell()
        ev.summarize()
    return ev, text.getvalue()[summary_start:].rstrip()


def _run_faster(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    iou_type: str,
    ids: list[int],
    oks_sigmas: np.ndarray | None = None,
) -> tuple[Any, str]:
    """faster-coco-eval's evaluate, accumulate, summarize -> the evaluator and its summary."""
    import faster_coco_eval

    gt = faster_ground_truth(coco_gt)
    lines: list[str] = []
    ev = faster_coco_eval.COCOeval_faster(
        gt,
        results_index(gt, results, iou_type),
        iouType=iou_type,
        print_function=lambda *a: None,
    )
    ev.params.imgIds = ids
    if oks_sigmas is not None:
        ev.params.kpt_oks_sigmas = oks_sigmas
    ev.evaluate()
    ev.accumulate()
    ev.print_function = lines.append
    ev.summarize()
    return ev, "\n".join(str(line) for line in lines)


def ground_truth_results(
    coco_gt: COCO, image_ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """The ground truth written as COCO results (score 1, RLE masks, crowd regions left out, and
    keypoints where an annotation has labelled ones): what a perfect detector returns."""
    ids = coco_gt.getImgIds() if image_ids is None else list(image_ids)
    out = []
    for ann in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=ids, iscrowd=False)):
        mask = coco_gt.annToMask(ann).astype(bool)
        out.append(
            {
                "image_id": int(ann["image_id"]),
                "category_id": int(ann["category_id"]),
                "bbox": [float(v) for v in ann["bbox"]],
                "score": 1.0,
                "segmentation": encode_masks(mask[None])[0],
            }
        )
        if ann.get("num_keypoints", 0) > 0:
            out[-1]["keypoints"] = [float(v) for v in ann["keypoints"]]
    return out


def pr_curves(scores: CocoScores) -> dict[str, dict[str, np.ndarray]]:
    """Precision at each recall threshold, averaged over the categories with ground truth (area
    all, 100 detections) -> {iou_type: {"iou50", "iou75", "iou50_95": float [R]}}; "iou50_95"
    is the mean of the ten IoU thresholds' curves (its mean over recall is the AP). NaN where
    no category has ground truth."""
    iou = np.round(scores.iou_thresholds, 2)
    out = {}
    for iou_type, p in scores.precision.items():
        p = p[:, :, :, 0, -1]  # [T, R, K]
        valid = p > -1
        count = valid.sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_t = np.where(valid, p, 0).sum(axis=2) / count  # [T, R], NaN where count = 0
        out[iou_type] = {
            "iou50": per_t[int(np.flatnonzero(iou == 0.5)[0])],
            "iou75": per_t[int(np.flatnonzero(iou == 0.75)[0])],
            "iou50_95": per_t.mean(axis=0),
        }
    return out
