"""What went wrong with each detection and each object: the error types of TIDE (Bolya et al.,
"TIDE: A General Toolbox for Identifying Object Detection Errors", ECCV 2020, section 2.2).

    types = assign_error_types(COCO("instances_val.json"), results, "segm")
    types.det_type          # int8 [D]: DET_TYPES index of each detection
    types.gt_missed         # bool [G]: objects nothing explains

Detections are matched as COCOeval does at one IoU threshold (foreground, t_f = 0.5): per image,
highest score first (top `max_dets` of the image), each takes the unmatched ground truth of its
class with the highest IoU >= t_f. A detection left unmatched that overlaps a crowd region of its
class (crowd IoU = intersection / detection area >= t_f, as COCOeval) is ignored: neither a true
positive nor an error. Every other unmatched detection gets exactly one type, tried in this
order (TIDE's), with t_b = 0.1 the background threshold:

    loc   its best IoU with an object of its class is in [t_b, t_f]: the right class, badly
          placed (the object may be matched already)
    cls   IoU >= t_f with an object of another class: the right place, the wrong class
    dupe  IoU >= t_f with an object of its class that a higher-scored detection matched
    bkg   IoU <= t_b with every object (or the image has none): it detected background
    both  anything else: the wrong class and badly placed (IoU in (t_b, t_f) with an object of
          another class)

An object no detection matched is missed ("miss") unless a cls or loc error points at it: then
that error is what went wrong, and fixing it (TIDE's oracle) would have found the object.

IoUs are pycocotools' (`mask.iou` on xywh boxes or RLE masks), the numbers COCOeval uses
(`mrcnn.evaluation.matching`, which also holds the shape shorthand: I images, D detections in
TIDE's order, G objects).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from mrcnn.evaluation.matching import Chunk, greedy_match, iter_chunks, prepare_scene

DET_TYPES = ("tp", "cls", "loc", "both", "dupe", "bkg", "ignored")
TP, CLS, LOC, BOTH, DUPE, BKG, IGNORED = range(len(DET_TYPES))
ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "miss")  # TIDE's six main errors
IOU_TYPES = ("bbox", "segm")


@dataclass
class ErrorTypes:
    """Every detection's and every object's outcome (`assign_error_types`).

    image_ids    int [I]   the images, in the ground truth's order
    det_result   int [D]   index of the detection in `results`
    det_image    int [D]   index into image_ids;  det_rank int [D]: 0 = the image's best score
    det_category int [D]   category id;  det_score float [D]
    det_box      float [D, 4] the result's xywh box (from its mask when it has no "bbox")
    det_type     int8 [D]  index into DET_TYPES
    det_gt       int [D]   index into the gt arrays: the object matched (tp), the one it would
                           have matched (cls, loc), the one it duplicates (dupe), the one it
                           overlaps most (both); -1 for bkg and ignored
    det_iou      float [D] IoU with det_gt (0 where det_gt is -1)
    det_fixes    bool [D]  a cls / loc error that TIDE's oracle turns into a true positive (its
                           object is unmatched and no higher-scored cls / loc error points at it)
    gt_ann       int [G]   annotation ids;  gt_image int [G];  gt_category int [G]
    gt_box       float [G, 4] xywh
    gt_det       int [G]   index of the detection that matched it, -1 if none
    gt_missed    bool [G]  unmatched and no cls / loc error points at it
    category_ids int [K]   the ground truth's categories, then any other id detections use
    category_names list[str] [K]
    """

    iou_type: str
    pos_thresh: float
    bg_thresh: float
    max_dets: int
    image_ids: np.ndarray
    det_result: np.ndarray
    det_image: np.ndarray
    det_rank: np.ndarray
    det_category: np.ndarray
    det_score: np.ndarray
    det_box: np.ndarray
    det_type: np.ndarray
    det_gt: np.ndarray
    det_iou: np.ndarray
    det_fixes: np.ndarray
    gt_ann: np.ndarray
    gt_image: np.ndarray
    gt_category: np.ndarray
    gt_box: np.ndarray
    gt_det: np.ndarray
    gt_missed: np.ndarray
    category_ids: np.ndarray
    category_names: list[str]


def assign_error_types(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    iou_type: str = "bbox",
    *,
    image_ids: Sequence[int] | None = None,
    pos_thresh: float = 0.5,
    bg_thresh: float = 0.1,
    max_dets: int = 100,
) -> ErrorTypes:
    """Type every detection and every object of `results` against `coco_gt` (module docstring).

    results:   COCO results [{"image_id", "category_id", "score", "bbox" and / or
               "segmentation"}]; "segm" ranks a result by its "segm_score" where it has one
               (as `coco_evaluate`)
    image_ids: the images typed (default all of coco_gt); other images' results are dropped
    pos_thresh / bg_thresh: TIDE's foreground / background IoU thresholds
    max_dets:  detections kept per image, highest scores first (COCO's 100)
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(
            f"iou_type must be one of {IOU_TYPES} (keypoints are not typed), got {iou_type!r}"
        )
    if not 0 < bg_thresh <= pos_thresh:
        raise ValueError(f"need 0 < bg_thresh <= pos_thresh, got {bg_thresh}, {pos_thresh}")
    scene = prepare_scene(coco_gt, results, iou_type, image_ids=image_ids, max_dets=max_dets)
    d, g = len(scene.det_result), len(scene.gt_ann)
    det_type = np.full(d, TP, np.int8)
    det_gt = np.full(d, -1, np.int64)
    det_iou = np.zeros(d)
    det_fixes = np.zeros(d, bool)
    gt_det = np.full(g, -1, np.int64)
    gt_missed = np.zeros(g, bool)
    for ch in iter_chunks(scene, pos_thresh):
        _type_chunk(ch, pos_thresh, bg_thresh, det_type, det_gt, det_iou, det_fixes, gt_det)
        gt_missed[ch.gt_index[ch.gt_valid]] = ch.missed[ch.gt_valid]
    return ErrorTypes(
        iou_type=iou_type,
        pos_thresh=pos_thresh,
        bg_thresh=bg_thresh,
        max_dets=max_dets,
        image_ids=scene.image_ids,
        det_result=scene.det_result,
        det_image=scene.det_image,
        det_rank=scene.det_rank,
        det_category=scene.det_category,
        det_score=scene.det_score,
        det_box=scene.det_box,
        det_type=det_type,
        det_gt=det_gt,
        det_iou=det_iou,
        det_fixes=det_fixes,
        gt_ann=scene.gt_ann,
        gt_image=scene.gt_image,
        gt_category=scene.gt_category,
        gt_box=scene.gt_box,
        gt_det=gt_det,
        gt_missed=gt_missed,
        category_ids=scene.category_ids,
        category_names=scene.category_names,
    )


def _type_chunk(ch: Chunk, pos, bg, det_type, det_gt, det_iou, det_fixes, gt_det) -> None:
    """Match and type the detections of one chunk; writes into the global arrays."""
    c_n, d_n, g_n = ch.iou.shape
    rows = np.arange(c_n)[:, None]
    same = ch.det_cat[:, :, None] == ch.gt_cat[:, None, :]  # [C, Dc, Gc]; padding never equal
    cls_iou = np.where(same, ch.iou, 0.0)
    match, used = greedy_match(cls_iou, pos)
    unmatched = ch.det_valid & (match < 0)
    ignored = unmatched & ch.in_crowd
    fp = unmatched & ~ignored
    if g_n == 0:
        t = np.full((c_n, d_n), BKG, np.int8)
        target = np.full((c_n, d_n), -1)
    else:
        same_max, same_arg = cls_iou.max(2), cls_iou.argmax(2)
        other = np.where(same, 0.0, ch.iou)
        other_max, other_arg = other.max(2), other.argmax(2)
        dup = np.where(used[:, None, :], cls_iou, 0.0)
        dup_max, dup_arg = dup.max(2), dup.argmax(2)
        any_max, any_arg = ch.iou.max(2), ch.iou.argmax(2)
        no_gt = (ch.gt_valid.sum(1) == 0)[:, None]
        conds = [no_gt, (same_max >= bg) & (same_max <= pos), other_max >= pos, dup_max >= pos]
        conds.append(any_max <= bg)
        t = np.select(conds, [BKG, LOC, CLS, DUPE, BKG], default=BOTH).astype(np.int8)
        target = np.select(conds, [-1, same_arg, other_arg, dup_arg, -1], default=any_arg)
    t = np.where(match >= 0, TP, np.where(ignored, IGNORED, t)).astype(np.int8)
    target = np.where(match >= 0, match, np.where(fp, target, -1))
    # TIDE's oracle fixes, per unmatched object, the highest-scored cls / loc error at it (the
    # lowest rank: detections are sorted by score); the others are suppressed.
    safe = np.maximum(target, 0)
    free = fp & ((t == CLS) | (t == LOC))
    if g_n:
        free &= ~used[rows, safe]
    best = np.full((c_n, max(g_n, 1)), d_n)
    cc, rr = np.nonzero(free)
    np.minimum.at(best, (cc, target[cc, rr]), rr)
    fixes = free & (best[rows, safe] == np.arange(d_n)[None, :])
    ch.missed = ch.gt_valid & ~used & (best[:, :g_n] == d_n)
    valid = ch.det_valid
    idx = ch.det_index[valid]
    det_type[idx] = t[valid]
    has = target[valid] >= 0
    det_gt[idx[has]] = ch.gt_index[rows.repeat(d_n, 1)[valid][has], target[valid][has]]
    iou_at = np.take_along_axis(ch.iou, safe[:, :, None], 2)[:, :, 0] if g_n else 0.0
    det_iou[idx] = np.where(target >= 0, iou_at, 0.0)[valid]
    det_fixes[idx] = fixes[valid]
    mc, mr = np.nonzero(match >= 0)
    gt_det[ch.gt_index[mc, match[mc, mr]]] = ch.det_index[mc, mr]
