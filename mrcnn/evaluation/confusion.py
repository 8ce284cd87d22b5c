"""Which class is taken for which: the detection confusion matrix at one IoU and score threshold.

    cm = confusion_matrix(COCO("instances_val.json"), results, "bbox", score_thresh=0.5)
    cm.counts                 # int [K + 1, K + 1]: rows actual, columns predicted
    write_confusion_csv(cm, "reports/evaluate/confusion_bbox.csv")   # for DVC's confusion plot

Rows are the actual class of an object (the last row "background": detections of nothing),
columns the predicted class (the last column "background": objects nothing detected). Only
detections scoring >= score_thresh count (top `max_dets` per image). Per image:

1. Each detection, highest score first, takes the unmatched object of its own class with the
   highest IoU >= iou_thresh: COCOeval's matching, so the diagonal holds the true positives that
   AP counts at that IoU (and score).
2. A detection left unmatched that a crowd region of its class covers is ignored (as COCOeval).
3. Each remaining detection, highest score first, takes the still unmatched object of another
   class with the highest IoU >= iou_thresh: a confusion (actual, predicted).
4. Detections still unmatched (duplicates, background, badly placed) count as (background,
   predicted); objects still unmatched as (actual, background).

Every object is in exactly one cell of its row, every kept detection in one cell of its column.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from mrcnn.evaluation.matching import greedy_match, iter_chunks, prepare_scene

BACKGROUND = "background"


@dataclass
class ConfusionMatrix:
    """A detection confusion matrix (`confusion_matrix`).

    names        [K + 1] the ground truth's category names, then "background"
    category_ids [K] their COCO ids (detections of ids the ground truth lacks are left out)
    counts       int [K + 1, K + 1] rows actual, columns predicted; counts[-1, -1] is 0
    actual, predicted  int [N] the row and column of every counted object / detection: a
                 matched pair once, an unmatched object or detection once (the CSV's rows)
    score_thresh, iou_thresh: the thresholds used
    """

    names: list[str]
    category_ids: list[int]
    counts: np.ndarray
    actual: np.ndarray
    predicted: np.ndarray
    score_thresh: float
    iou_thresh: float

    @property
    def normalized(self) -> np.ndarray:
        """counts with each row divided by its sum (float [K + 1, K + 1]; NaN rows without any
        count): row k is where the objects of class k went."""
        rows = self.counts.sum(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(rows > 0, self.counts / rows, np.nan)


def confusion_matrix(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    iou_type: str = "bbox",
    *,
    score_thresh: float = 0.5,
    iou_thresh: float = 0.5,
    max_dets: int = 100,
    image_ids: Sequence[int] | None = None,
) -> ConfusionMatrix:
    """The confusion matrix of COCO `results` against `coco_gt` ("bbox" or "segm"), built as the
    module docstring says. `score_thresh` picks the operating point a user would deploy (0.5
    by default), unlike AP, which sweeps all scores."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    key = "segm_score" if iou_type == "segm" else "score"
    kept = [r for r in results if r.get(key, r["score"]) >= score_thresh]
    scene = prepare_scene(coco_gt, kept, iou_type, image_ids=image_ids, max_dets=max_dets)
    k_n = len(coco_gt.getCatIds())
    cat_ids = [int(c) for c in scene.category_ids[:k_n]]
    actual: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
    for ch in iter_chunks(scene, iou_thresh):
        same = ch.det_cat[:, :, None] == ch.gt_cat[:, None, :]
        match, taken = greedy_match(np.where(same, ch.iou, 0.0), iou_thresh)
        left = ch.det_valid & (match < 0) & ~ch.in_crowd
        # (~same is for the reader: step 1 left no free same-class object at IoU >= thresh)
        other = ~same & left[:, :, None] & ch.gt_valid[:, None, :]
        confused, taken2 = greedy_match(np.where(other, ch.iou, 0.0), iou_thresh, taken)
        pairs = np.where(match >= 0, match, confused)
        c, d = np.nonzero(pairs >= 0)
        actual.append(ch.gt_cat[c, pairs[c, d]])
        predicted.append(ch.det_cat[c, d])
        c, d = np.nonzero(left & (confused < 0))  # detections of nothing
        actual.append(np.full(len(c), -1))
        predicted.append(ch.det_cat[c, d])
        c, g = np.nonzero(ch.gt_valid & ~taken2)  # objects nothing detected
        actual.append(ch.gt_cat[c, g])
        predicted.append(np.full(len(c), -1))
    a = _rows(np.concatenate(actual) if actual else np.zeros(0, np.int64), cat_ids)
    p = _rows(np.concatenate(predicted) if predicted else np.zeros(0, np.int64), cat_ids)
    keep = (a >= 0) & (p >= 0)  # drop detections of ids the ground truth does not have
    counts = np.zeros((k_n + 1, k_n + 1), np.int64)
    np.add.at(counts, (a[keep], p[keep]), 1)
    names = [str(coco_gt.cats[c]["name"]) for c in cat_ids]
    names = [
        n if names.count(n) == 1 else f"{n} ({c})" for n, c in zip(names, cat_ids, strict=True)
    ]
    return ConfusionMatrix(
        names=[*names, BACKGROUND],
        category_ids=cat_ids,
        counts=counts,
        actual=a[keep],
        predicted=p[keep],
        score_thresh=score_thresh,
        iou_thresh=iou_thresh,
    )


def _rows(cat: np.ndarray, cat_ids: Sequence[int]) -> np.ndarray:
    """Category ids -> matrix rows: -1 (background) -> K, ids not in cat_ids -> -1."""
    ids = np.asarray(cat_ids, np.int64)
    order = np.argsort(ids)
    at = np.minimum(np.searchsorted(ids[order], cat), max(len(ids) - 1, 0))
    rows = np.where(ids[order][at] == cat, order[at], -1) if len(ids) else np.full(len(cat), -1)
    return np.where(cat == -1, len(ids), rows)


def write_confusion_csv(cm: ConfusionMatrix, path: str | os.PathLike) -> Path:
    """One `actual,predicted` row (class names) per matched pair, unmatched object and unmatched
    detection: the table DVC's confusion template counts (dvc.yaml: `template: confusion, x:
    actual, y: predicted`). Written atomically (a temporary file, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        pairs = zip(cm.actual.tolist(), cm.predicted.tolist(), strict=True)
        writer.writerows((cm.names[a], cm.names[p]) for a, p in pairs)
    os.replace(tmp, path)
    return path
