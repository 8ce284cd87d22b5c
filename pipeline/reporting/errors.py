"""Why the AP is what it is: the evaluate stage's error analysis of one results set, for bbox and
segm (keypoints are not typed), from `mrcnn.evaluation`'s analyses (docs/evaluate.md "Error
analysis"), and the files it leaves under reports/evaluate/.

    analysis = analyze_errors(coco_gt, results, ("bbox", "segm"), image_ids, confusion_thresh=0.3)
    write_json(errors_file, analysis.summary())   # metrics/eval_errors.json: {"bbox": {"AP50",
                                                  #   "dAP", "fp", "fn"}, "segm": ...}
    for line in analysis.lines(): log.info(line)           # the breakdown and what to try
    files = error_files(analysis, dataset, coco_gt, results, num_images=8)

`files` ({path: picture or text}, for `pipeline.reporting.evaluate.write_reports`):

    errors/tide.png                TIDE's dAP per error type, bbox beside segm
    errors/confusion_<t>.png       the confusion matrix, row-normalised, counts in the cells
    errors/pr_breakdown_<t>.png    COCO analyze()'s PR breakdown (evaluate.pr_breakdown)
    confusion/<t>.csv              actual,predicted rows: DVC's confusion template
    worst/<rank>_<image id>.png    the images with the most weighted errors: ground truth beside
                                   the detections, coloured by error type (the primary type)
    image_errors.csv               every image's error counts, most weighted first
    errors.json                    the whole breakdowns (counts, per category, settings),
                                   confusion counts, analyze()'s AP per curve and size, advice

The primary IoU type (what the images are ranked and drawn by) is segm when there is one.
Everything but `tide.png` and `errors.json` is per IoU type, so it lives in a folder DVC can
declare whatever the model evaluates.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.reporting.evaluate import FileContent, original_image, zoom_factor

if TYPE_CHECKING:
    from pycocotools.coco import COCO

    from mrcnn.data import ShardDataset
    from mrcnn.evaluation import ConfusionMatrix, ErrorTypes, PrBreakdown

log = logging.getLogger(__name__)

ANALYSED = ("bbox", "segm")  # what TIDE's typing takes (`mrcnn.evaluation.error_types`)
SUMMARY_KEYS = ("AP50", "dAP", "fp", "fn")  # what metrics/eval_errors.json keeps of a breakdown
IMAGE_COLUMNS = ("weighted", "tp", "cls", "loc", "both", "dupe", "bkg", "ignored", "miss", "gt")
FOLDERS = ("errors/", "confusion/", "worst/")  # dvc.yaml declares them as plots
MAX_DRAWN = 30  # detections drawn per worst image, best scores first
WORST_SIZE = 384  # px: smaller images are enlarged to about this, so their captions fit

# What to try when an error type costs the most (its dAP); keys are params.yaml's.
ADVICE = {
    "cls": "right place, wrong class: more examples of the classes that mix "
    "(errors/confusion_<t>.png shows which), class balance, a longer schedule",
    "loc": "right class, badly placed: higher box / mask resolution (model.roi_heads."
    "box_pool_size / mask_pool_size, shards.image_size) or an IoU-weighted box loss",
    "both": "wrong class and badly placed: often crowded, occluded or mislabelled objects "
    "(look at worst/); the cls and loc remedies",
    "dupe": "duplicates: a lower NMS threshold (model.inference.nms_thresh)",
    "bkg": "detections of background: more negatives (shards.keep_negatives_train, "
    "model.roi_heads.positive_fraction) or a higher score threshold (model.inference.score_thresh)",
    "miss": "missed objects: anchors that fit them (model.anchors.sizes / ratios), a larger "
    "shards.image_size, more proposals (model.rpn.post_nms_top_n_test)",
}
DOMINANT_SHARE = 0.5  # an error type "dominates" at >= half the largest dAP of its IoU type ..
MIN_DAP = 1.0  # .. and >= 1 AP50 point (smaller differences are noise on a small val set)


@dataclass
class ErrorAnalysis:
    """The analyses of one results set, per IoU type (`analyze_errors`)."""

    types: dict[str, ErrorTypes]  # every detection's and object's outcome
    breakdowns: dict[str, dict[str, Any]]  # `error_breakdown`'s dict
    confusion: dict[str, ConfusionMatrix]
    pr: dict[str, PrBreakdown] = field(default_factory=dict)  # empty: evaluate.pr_breakdown off
    confusion_thresh: float = 0.5
    seconds: float = 0.0

    @property
    def primary(self) -> str:
        """The IoU type the images are ranked and drawn by: segm when there is one."""
        return "segm" if "segm" in self.types else next(iter(self.types), "bbox")

    def summary(self) -> dict[str, dict[str, Any]]:
        """metrics/eval_errors.json: per IoU type AP50, dAP per error type, fp, fn (AP points)."""
        return {
            t: {k: dict(b[k]) if k == "dAP" else b[k] for k in SUMMARY_KEYS}
            for t, b in self.breakdowns.items()
        }

    def lines(self) -> list[str]:
        """The log's account: per IoU type the breakdown, then what to try per dominant type."""
        return [summary_line(t, b) for t, b in self.breakdowns.items()] + advice(self.breakdowns)


def analyze_errors(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    iou_types: Sequence[str],
    image_ids: Sequence[int],
    *,
    confusion_thresh: float,
    pr: bool = True,
    backend: str = "faster",
) -> ErrorAnalysis:
    """TIDE's error types and breakdown, the confusion matrix at `confusion_thresh` (IoU 0.5)
    and, with `pr`, analyze()'s PR breakdown, for each of `iou_types` TIDE types (bbox, segm;
    others are skipped, and the log says so)."""
    from mrcnn.evaluation import (
        assign_error_types,
        confusion_matrix,
        pr_breakdown,
        tide_breakdown,
    )

    skipped = [t for t in iou_types if t not in ANALYSED]
    if skipped:
        log.info("no error analysis for %s (TIDE types boxes and masks only)", ", ".join(skipped))
    start = time.perf_counter()
    out = ErrorAnalysis({}, {}, {}, confusion_thresh=confusion_thresh)
    for t in (t for t in iou_types if t in ANALYSED):
        out.types[t] = assign_error_types(coco_gt, results, t, image_ids=image_ids)
        out.breakdowns[t] = tide_breakdown(out.types[t])
        out.confusion[t] = confusion_matrix(
            coco_gt, results, t, score_thresh=confusion_thresh, image_ids=image_ids
        )
    tide_s = time.perf_counter() - start
    if pr:
        for t in out.types:
            out.pr[t] = pr_breakdown(coco_gt, results, t, image_ids=image_ids, backend=backend)
    out.seconds = time.perf_counter() - start
    log.info(
        "error analysis of %s: TIDE + confusion %.1f s, PR breakdown %s",
        " + ".join(out.types) or "nothing",
        tide_s,
        f"{out.seconds - tide_s:.1f} s" if pr else "off (evaluate.pr_breakdown)",
    )
    return out


def summary_line(iou_type: str, b: Mapping[str, Any]) -> str:
    ranked = sorted(b["dAP"].items(), key=lambda kv: -kv[1])
    costs = ", ".join(f"{e} {v:.2f}" for e, v in ranked)
    return (
        f"{iou_type} errors (TIDE, AP50 points): AP50 {b['AP50']:.2f}; dAP {costs}; "
        f"fp {b['fp']:.2f}, fn {b['fn']:.2f}"
    )


def dominant(breakdowns: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """{error type: {iou type: dAP}} of the types that dominate some IoU type (>= DOMINANT_SHARE
    of its largest dAP and >= MIN_DAP), the costliest first."""
    found: dict[str, dict[str, float]] = {}
    for t, b in breakdowns.items():
        top = max(b["dAP"].values(), default=0.0)
        for e, v in b["dAP"].items():
            if v >= MIN_DAP and v >= DOMINANT_SHARE * top:
                found.setdefault(e, {})[t] = float(v)
    return dict(sorted(found.items(), key=lambda kv: -max(kv[1].values())))


def advice(breakdowns: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One "what to try" line per dominant error type (`dominant`, `ADVICE`)."""
    lines = []
    for e, where in dominant(breakdowns).items():
        costs = ", ".join(f"{t} {v:.1f}" for t, v in where.items())
        lines.append(f"what to try for {e} (dAP {costs}): {ADVICE[e]}")
    if breakdowns and not lines:
        lines.append(f"no error type costs {MIN_DAP:g} AP50 point or more: nothing stands out")
    return lines


def error_files(
    analysis: ErrorAnalysis,
    dataset: ShardDataset,
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    *,
    num_images: int,
    num_evaluated: int | None = None,
) -> dict[str, FileContent]:
    """The pictures and tables of `analysis` (module docstring) -> {path under
    reports/evaluate/: picture, text or writer (`FileContent`)}. `dataset` gives the images of
    the worst ones (its first `num_evaluated` samples were evaluated)."""
    from mrcnn import visualize as vis
    from mrcnn.evaluation import write_confusion_csv
    from mrcnn.evaluation.image_errors import images_by_errors

    files: dict[str, FileContent] = dict.fromkeys(FOLDERS)  # there even when empty (DVC)
    if not analysis.types:
        return files
    files["errors/tide.png"] = vis.draw_error_breakdown(
        analysis.breakdowns, title="TIDE: AP50 points gained by fixing each error type"
    )
    for t, cm in analysis.confusion.items():
        files[f"errors/confusion_{t}.png"] = vis.draw_confusion_matrix(
            cm, title=f"{t}: share of each row (count)\nIoU {cm.iou_thresh:g}, "
            f"score >= {cm.score_thresh:g}"
        )  # fmt: skip
        files[f"confusion/{t}.csv"] = functools.partial(write_confusion_csv, cm)
    for t, bd in analysis.pr.items():
        files[f"errors/pr_breakdown_{t}.png"] = vis.draw_pr_breakdown(
            bd, title=f"{t}: COCO analyze() breakdown of precision / recall [AP]"
        )
    primary = analysis.primary
    ranked = images_by_errors(analysis.types[primary])
    files["image_errors.csv"] = _image_csv(ranked, coco_gt, primary)
    worst = [r for r in ranked[:num_images] if r["weighted"] > 0]
    n = len(dataset) if num_evaluated is None else num_evaluated
    index = {int(v): i for i, v in enumerate(dataset.index[:n, 1])}
    for rank, row in enumerate(worst, 1):
        picture = draw_worst(analysis, row, dataset[index[row["image_id"]]], coco_gt, results)
        files[f"worst/{rank:02d}_{row['image_id']}.png"] = picture
    files["errors.json"] = json.dumps(_numbers(analysis, worst), indent=1) + "\n"
    return files


def draw_worst(
    analysis: ErrorAnalysis,
    row: Mapping[str, Any],
    sample: Any,
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
) -> np.ndarray:
    """One of the worst images: a caption (its counts), then `mrcnn.visualize.draw_error_types`
    (ground truth | detections scoring >= the confusion threshold, coloured by type; masks for
    segm), enlarged when small."""
    from mrcnn import visualize as vis
    from mrcnn.evaluation.coco_results import decode_masks
    from mrcnn.evaluation.image_errors import image_detail

    t = analysis.primary
    detail = image_detail(analysis.types[t], row["image_id"])
    h, w = sample.original_size
    factor = zoom_factor(h, w, WORST_SIZE)
    dets, objs = detail["detections"], detail["objects"]
    det_masks = gt_masks = None
    if t == "segm":
        rles = [results[int(i)]["segmentation"] for i in dets["result_index"]]
        det_masks = _zoom(decode_masks(rles, (h, w)), factor)
        anns = coco_gt.loadAnns([int(a) for a in objs["ann_ids"]])
        gt_masks = _zoom(np.array([coco_gt.annToMask(a) for a in anns], bool), factor)
    scaled = {
        "detections": {**dets, "boxes": np.asarray(dets["boxes"]) * factor},
        "objects": {**objs, "boxes": np.asarray(objs["boxes"]) * factor},
    }
    names = {int(c): str(coco_gt.cats[c]["name"]) for c in coco_gt.cats}
    thresh = analysis.confusion_thresh
    picture = vis.draw_error_types(
        vis.zoom(original_image(sample), factor),
        scaled,
        names,
        det_masks=det_masks,
        gt_masks=gt_masks,
        score_thresh=thresh,
        max_detections=MAX_DRAWN,
    )
    shown = min(MAX_DRAWN, int((np.asarray(dets["scores"]) >= thresh).sum()))
    errors = [f"{row[e]} {e}" for e in ("cls", "loc", "both", "dupe", "bkg", "miss") if row[e]]
    caption = [
        f"image {row['image_id']} ({t}): {', '.join(errors) or 'no errors'}; "
        f"weighted {row['weighted']:.2f}",
        f"left: ground truth ({row['gt']}); right: {shown} of {len(dets['scores'])} "
        f"detections, score >= {thresh:g}",
    ]
    return _with_caption(picture, caption)


def _with_caption(picture: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """A white strip with `lines` above `picture` (font scaled to its width)."""
    from PIL import Image, ImageDraw

    from mrcnn.visualize import label_font

    w = picture.shape[1]
    font = label_font(max(10, min(16, w // 45)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = probe.textbbox((0, 0), "Ag", font=font)[3] + 4
    strip = Image.new("RGB", (w, line_h * len(lines) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for k, text in enumerate(lines):
        while len(text) > 8 and draw.textlength(text, font=font) > w - 8:
            text = text[: len(text) - 4] + "…"  # cut from the end until it fits
        draw.text((4, 2 + k * line_h), text, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(strip), picture], axis=0)


def _zoom(masks: np.ndarray, factor: int) -> np.ndarray:
    return masks.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else masks


def _image_csv(ranked: Sequence[Mapping[str, Any]], coco_gt: COCO, iou_type: str) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["rank", "image_id", "file_name", "iou_type", *IMAGE_COLUMNS])
    for rank, r in enumerate(ranked, 1):
        name = coco_gt.imgs.get(r["image_id"], {}).get("file_name", "")
        counts = [round(r[c], 4) if c == "weighted" else r[c] for c in IMAGE_COLUMNS]
        writer.writerow([rank, r["image_id"], name, iou_type, *counts])
    return text.getvalue()


def _numbers(analysis: ErrorAnalysis, worst: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """errors.json: everything the pictures show, as numbers."""
    out: dict[str, Any] = {
        "primary": analysis.primary,
        "confusion_thresh": analysis.confusion_thresh,
        "advice": advice(analysis.breakdowns),
        "worst_images": list(worst),
    }
    for t, b in analysis.breakdowns.items():
        cm = analysis.confusion[t]
        out[t] = {
            "breakdown": b,
            "confusion": {"names": cm.names, "counts": cm.counts.tolist()},
        }
        if t in analysis.pr:
            out[t]["pr_breakdown_ap"] = analysis.pr[t].ap()
    return out
