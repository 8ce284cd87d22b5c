"""Detections and ground truth side by side, image by image: the scene every error analysis
reads (`prepare_scene`), its IoU matrices a chunk of images at a time (`iter_chunks`), and
COCOeval's greedy matching for all images of a chunk at once (`greedy_match`).

IoUs are pycocotools' (`mask.iou` on xywh boxes or RLE masks, crowd regions with
intersection / detection area), the numbers COCOeval computes.

Shape shorthand: I images, D detections kept (top `max_dets` per image: image by image, highest
score first, ties in results order), G non-crowd ground-truth objects (image by image, in
annotation order). Per chunk of C images: Dc / Gc the most of any of its images.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

log = logging.getLogger(__name__)

CHUNK_IMAGES = 256  # images matched at once: bounds the [C, Dc, Gc] IoU arrays


def greedy_match(iou: np.ndarray, thresh: float, taken: np.ndarray | None = None):
    """COCOeval's greedy matching, all images of a chunk at once: detection r of every image (in
    rank order) takes the free object with the highest IoU >= thresh (the first on ties).

    iou:   float [C, Dc, Gc], 0 for pairs that may not match (other class, padding)
    taken: bool [C, Gc] objects already taken (default none); not modified
    -> match int [C, Dc] (object index or -1), taken bool [C, Gc] after the matching
    The loop runs over the Dc ranks, not over images or detections: the greedy order is
    inherently sequential within an image, but the images are independent.
    """
    c_n, d_n, g_n = iou.shape
    match = np.full((c_n, d_n), -1, np.int64)
    taken = np.zeros((c_n, g_n), bool) if taken is None else taken.copy()
    if g_n == 0:
        return match, taken
    rows = np.arange(c_n)
    for r in range(d_n):
        cand = np.where(taken, 0.0, iou[:, r, :])
        j = cand.argmax(1)
        ok = cand[rows, j] >= thresh
        match[ok, r] = j[ok]
        taken[rows[ok], j[ok]] = True
    return match, taken


@dataclass
class Scene:
    """Detections and objects of the evaluated images, grouped by image, with their geometry
    (`prepare_scene`). det_* [D] as in `ErrorTypes`; det_geom / gt_geom / crowd_geom: float
    [N, 4] xywh boxes ("bbox") or lists of RLEs ("segm"); det_start / gt_start / crowd_start
    int [I + 1]: image i's rows are [start[i], start[i + 1])."""

    iou_type: str
    image_ids: np.ndarray
    det_result: np.ndarray
    det_image: np.ndarray
    det_rank: np.ndarray
    det_category: np.ndarray
    det_score: np.ndarray
    det_box: np.ndarray
    det_geom: Any
    det_start: np.ndarray
    gt_ann: np.ndarray
    gt_image: np.ndarray
    gt_category: np.ndarray
    gt_box: np.ndarray
    gt_geom: Any
    gt_start: np.ndarray
    crowd_category: np.ndarray
    crowd_geom: Any
    crowd_start: np.ndarray
    category_ids: np.ndarray
    category_names: list[str]


def prepare_scene(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    iou_type: str,
    *,
    image_ids: Sequence[int] | None = None,
    max_dets: int | None = 100,
) -> Scene:
    """Group `results` and the ground truth by image, detections sorted by score (stable) and
    cut to `max_dets` per image (None: all). Raises `EvaluationInputError` for results of images
    the ground truth does not have."""
    from mrcnn.evaluation.coco_eval import EvaluationInputError

    known = coco_gt.getImgIds()
    ids = np.asarray(known if image_ids is None else [int(i) for i in image_ids], np.int64)
    strangers = sorted({int(r["image_id"]) for r in results} - set(known))
    if strangers:
        raise EvaluationInputError(
            f"image ids {strangers[:5]} ({len(strangers)} in all) are not in the ground truth: "
            "the predictions and the annotations do not belong together"
        )
    index = {int(i): k for k, i in enumerate(ids)}
    n = len(results)
    img = np.fromiter((index.get(int(r["image_id"]), -1) for r in results), np.int64, n)
    key = "segm_score" if iou_type == "segm" else "score"
    score = np.fromiter((r.get(key, r["score"]) for r in results), np.float64, n)
    cat = np.fromiter((r["category_id"] for r in results), np.int64, n)
    order = np.lexsort((np.arange(n), -score, img))
    order = order[img[order] >= 0]
    det_start = np.searchsorted(img[order], np.arange(len(ids) + 1))
    rank = np.arange(len(order)) - det_start[img[order]]
    if max_dets is not None:
        order, rank = order[rank < max_dets], rank[rank < max_dets]
        det_start = np.searchsorted(img[order], np.arange(len(ids) + 1))
    sizes = {int(i): (coco_gt.imgs[int(i)]["height"], coco_gt.imgs[int(i)]["width"]) for i in ids}
    rles = [_result_rle(results[k], sizes) for k in order] if iou_type == "segm" else None
    boxes = [_result_box(results[k], rles[j] if rles else None) for j, k in enumerate(order)]
    det_box = np.asarray(boxes, np.float64).reshape(-1, 4)
    gts, crowds = [], []
    for i in ids:
        for ann in coco_gt.imgToAnns.get(int(i), []):
            (crowds if ann.get("iscrowd", 0) else gts).append(ann)
    rle = gt_rles(coco_gt) if iou_type == "segm" else None
    gt_box = np.asarray([a["bbox"] for a in gts], np.float64).reshape(-1, 4)
    crowd_box = np.asarray([a["bbox"] for a in crowds], np.float64).reshape(-1, 4)
    gt_image = np.asarray([index[a["image_id"]] for a in gts], np.int64)
    crowd_image = np.asarray([index[a["image_id"]] for a in crowds], np.int64)
    cats = [int(c) for c in coco_gt.getCatIds()]
    names = [str(coco_gt.cats[c]["name"]) for c in cats]
    extra = sorted(set(cat[order].tolist()) - set(cats))
    if extra:
        log.warning("detections of category ids %s that the ground truth does not have", extra)
    return Scene(
        iou_type=iou_type,
        image_ids=ids,
        det_result=order,
        det_image=img[order],
        det_rank=rank,
        det_category=cat[order],
        det_score=score[order],
        det_box=det_box,
        det_geom=rles if iou_type == "segm" else det_box,
        det_start=det_start,
        gt_ann=np.asarray([a["id"] for a in gts], np.int64),
        gt_image=gt_image,
        gt_category=np.asarray([a["category_id"] for a in gts], np.int64),
        gt_box=gt_box,
        gt_geom=[rle(a) for a in gts] if rle else gt_box,
        gt_start=np.searchsorted(gt_image, np.arange(len(ids) + 1)),
        crowd_category=np.asarray([a["category_id"] for a in crowds], np.int64),
        crowd_geom=[rle(a) for a in crowds] if rle else crowd_box,
        crowd_start=np.searchsorted(crowd_image, np.arange(len(ids) + 1)),
        category_ids=np.asarray(cats + extra, np.int64),
        category_names=names + [f"unknown ({c})" for c in extra],
    )


@dataclass
class Chunk:
    """C images' detections and objects padded to [C, Dc] / [C, Gc] (`iter_chunks`).

    iou      float [C, Dc, Gc]  pycocotools IoU (0 for padding)
    in_crowd bool [C, Dc]       crowd IoU >= the threshold with a crowd region of its class
    det_cat / gt_cat int        category ids, -1 / -2 for padding
    det_index / gt_index int    rows of the scene's arrays (-1 padding)
    """

    images: np.ndarray
    iou: np.ndarray
    in_crowd: np.ndarray
    det_cat: np.ndarray
    gt_cat: np.ndarray
    det_valid: np.ndarray
    gt_valid: np.ndarray
    det_index: np.ndarray
    gt_index: np.ndarray
    missed: np.ndarray | None = None


def iter_chunks(scene: Scene, crowd_thresh: float, size: int = CHUNK_IMAGES) -> Iterator[Chunk]:
    """The scene's images, `size` at a time, with their IoU matrices (one pycocotools call per
    image and kind of object: the IoUs of one image's detections are one C call)."""
    n_img = len(scene.image_ids)
    for s in range(0, n_img, size):
        images = np.arange(s, min(s + size, n_img))
        d0, d1 = scene.det_start[images], scene.det_start[images + 1]
        g0, g1 = scene.gt_start[images], scene.gt_start[images + 1]
        nd, ng = d1 - d0, g1 - g0
        d_n, g_n = int(nd.max(initial=0)), int(ng.max(initial=0))
        det_valid = np.arange(d_n)[None, :] < nd[:, None]
        gt_valid = np.arange(g_n)[None, :] < ng[:, None]
        det_index = np.where(det_valid, d0[:, None] + np.arange(d_n)[None, :], -1)
        gt_index = np.where(gt_valid, g0[:, None] + np.arange(g_n)[None, :], -1)
        det_cat = np.where(det_valid, scene.det_category[np.maximum(det_index, 0)], -1)
        gt_cat = np.where(gt_valid, scene.gt_category[np.maximum(gt_index, 0)], -2)
        if len(scene.gt_category) == 0:
            gt_cat = np.full((len(images), g_n), -2)
        iou = np.zeros((len(images), d_n, g_n))
        in_crowd = np.zeros((len(images), d_n), bool)
        for c, i in enumerate(images):
            if nd[c] == 0:
                continue
            dets = scene.det_geom[d0[c] : d1[c]]
            if ng[c]:
                gts = scene.gt_geom[g0[c] : g1[c]]
                iou[c, : nd[c], : ng[c]] = mask_utils.iou(dets, gts, [0] * int(ng[c]))
            c0, c1 = scene.crowd_start[i], scene.crowd_start[i + 1]
            if c1 > c0:
                crowd_iou = np.asarray(
                    mask_utils.iou(dets, scene.crowd_geom[c0:c1], [1] * int(c1 - c0))
                )
                same = scene.det_category[d0[c] : d1[c], None] == scene.crowd_category[None, c0:c1]
                in_crowd[c, : nd[c]] = ((crowd_iou >= crowd_thresh) & same).any(1)
        yield Chunk(
            images, iou, in_crowd, det_cat, gt_cat, det_valid, gt_valid, det_index, gt_index
        )


def _result_rle(result: Mapping[str, Any], sizes: dict[int, tuple[int, int]]) -> dict:
    """A result's mask as a compressed RLE (polygons and uncompressed RLEs converted as
    pycocotools' `annToRLE` does)."""
    seg = result.get("segmentation")
    if seg is None:
        raise ValueError("segm error types need results with a 'segmentation'")
    if isinstance(seg, dict) and not isinstance(seg["counts"], list):
        return seg
    h, w = sizes[int(result["image_id"])]
    if isinstance(seg, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    return mask_utils.frPyObjects(seg, h, w)  # uncompressed RLE


def _result_box(result: Mapping[str, Any], rle: dict | None) -> list[float]:
    if "bbox" in result:
        return list(result["bbox"])
    if rle is None:
        raise ValueError("bbox error types need results with a 'bbox' (or a 'segmentation')")
    return mask_utils.toBbox(rle).tolist()


# The ground truth's RLEs (pycocotools' `annToRLE`), built once per `COCO` object: periodic
# validation and the several error analyses of one evaluation reuse them.
_GT_RLES: weakref.WeakKeyDictionary[COCO, dict[int, dict]] = weakref.WeakKeyDictionary()


def gt_rles(coco_gt: COCO) -> Callable[[Mapping[str, Any]], dict]:
    """-> a function from an annotation of `coco_gt` to its RLE, cached on `coco_gt`."""
    cache = _GT_RLES.setdefault(coco_gt, {})

    def rle(ann: Mapping[str, Any]) -> dict:
        out = cache.get(ann["id"])
        if out is None:
            out = cache[ann["id"]] = coco_gt.annToRLE(ann)
        return out

    return rle
