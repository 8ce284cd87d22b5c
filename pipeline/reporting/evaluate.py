"""Evaluate reports: the pictures, the DVC plots file and the COCO results, written as one
folder (`reports/evaluate/`, built beside it and swapped in, so a failed run keeps the last
complete one).

    per_category_ap.png   bbox and segm AP of each category
    pr_curve.png          precision / recall at IoU .50, .75 and .50:.95, mean over categories
    overlays.png          prediction next to ground truth for a few val images
    pr.csv                the curves as rows (`dvc plots`)
    summary.json          per-category AP, images, detections, the score threshold used (the
                          evaluate stage's; metrics/eval.json keeps COCOeval's six APs only)
    results.json          every detection in COCO results format (only when asked)
    steps/                the model step by step on a few val images (`draw_steps`)
    errors/ worst/ confusion/ errors.json image_errors.csv   the error analysis
                          (`pipeline.reporting.errors`)
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mrcnn.evaluation.coco_eval import CocoScores, pr_curves
from mrcnn.fileio import replace_dir

if TYPE_CHECKING:
    from pycocotools.coco import COCO

    from mrcnn.data import ShardDataset

PICTURES = ("per_category_ap.png", "pr_curve.png", "overlays.png")
PR_FILE = "pr.csv"
SUMMARY_FILE = "summary.json"  # per_category, num_images, num_detections, score_thresh
STEPS_DIR = "steps"  # the model step by step on a few val images (`draw_steps`)
RESULTS_FILE = "results.json"
# An extra file of `write_reports`: a picture uint8 [H, W, 3] (PNG), text, or a function that
# writes the file at the path it is given; None for a folder (its name ends with "/").
FileContent = np.ndarray | str | Callable[[Path], Any] | None
OVERLAY_MAX_DETECTIONS = 15  # drawn per image, best scores first (all are evaluated)


def pr_rows(scores: CocoScores) -> list[dict[str, Any]]:
    """The curves of `pr_curves` as rows for `pr.csv`: recall, then one precision column per
    curve (`bbox_iou50`, ..., `segm_iou50_95`); empty cells where undefined."""
    curves = pr_curves(scores)
    rows = []
    for r, recall in enumerate(scores.recall_thresholds):
        row: dict[str, Any] = {"recall": round(float(recall), 2)}
        for iou_type, series in curves.items():
            for key, values in series.items():
                v = float(values[r])
                row[f"{iou_type}_{key}"] = "" if math.isnan(v) else round(v, 6)
        rows.append(row)
    return rows


def draw_overlays(
    dataset: ShardDataset,
    indices: Sequence[int],
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    category_ids: Mapping[int, int],
    keypoint_thresh: float = 0.0,
) -> np.ndarray:
    """Prediction next to ground truth for dataset samples `indices` -> uint8 [H, W, 3].

    Both are drawn on the image in its original size (`original_image`): predictions from
    `results` (at most `OVERLAY_MAX_DETECTIONS`, best first, with scores; of their keypoints
    those scoring above `keypoint_thresh`), ground truth from `coco_gt`'s annotations (its
    labelled keypoints).
    """
    from mrcnn import visualize as vis

    labels_of = {cat: label for label, cat in category_ids.items()}
    names = list(dataset.class_names)
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for r in results:
        by_image.setdefault(int(r["image_id"]), []).append(r)
    cols = 2 if len(indices) <= 2 else 4
    rows = -(-2 * len(indices) // cols)
    fig = vis.new_figure(3.4 * cols, 3.6 * rows)
    for k, i in enumerate(indices):
        x = dataset[int(i)]
        h, w = x.original_size
        image = original_image(x)
        factor = zoom_factor(h, w)
        big = vis.zoom(image, factor)

        found = sorted(by_image.get(x.image_id, []), key=lambda r: -float(r["score"]))
        shown = found[:OVERLAY_MAX_DETECTIONS]
        pred = draw_predictions(big, factor, shown, labels_of, names, keypoint_thresh)
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[x.image_id]))
        objects = [a for a in anns if not a.get("iscrowd")]
        regions = list({tuple(_xyxy(a["bbox"])): a for a in anns if a.get("iscrowd")}.values())
        big_gt = big
        if regions:  # ignored regions (one per region, not per category), grey, unlabelled
            masks = np.array([coco_gt.annToMask(a) for a in regions], bool).reshape(-1, h, w)
            big_gt = vis.draw_instances(
                big,
                masks=_zoom_masks(masks, factor),
                instance_colors=np.full((len(regions), 3), 128, np.uint8),
                show_text=False,
            )
        gt_masks = np.array([coco_gt.annToMask(a) for a in objects], bool).reshape(-1, h, w)
        gt_boxes = np.array([_xyxy(a["bbox"]) for a in objects], np.float32).reshape(-1, 4)
        gt = vis.draw_instances(
            big_gt,
            gt_boxes * factor,
            _zoom_masks(gt_masks, factor),
            [labels_of.get(int(a["category_id"]), 0) for a in objects],
            names,
            keypoints=_keypoints(objects, factor),
        )
        more = f", {len(shown)} drawn" if len(found) > len(shown) else ""
        titles = (
            f"image {x.image_id}: {len(found)} detections{more}",
            ground_truth_title(anns),
        )
        for j, (picture, title) in enumerate(zip((pred, gt), titles, strict=True)):
            ax = fig.add_subplot(rows, cols, 2 * k + j + 1)
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    fig.tight_layout()
    return vis.figure_to_array(fig)


def ground_truth_title(anns: Sequence[Mapping[str, Any]]) -> str:
    """'ground truth: 6 instances, 1 ignored region' for one image's annotations: crowd
    annotations are ignored regions, the per-category copies of one counted once."""
    from mrcnn.data.coco import count_annotations

    c = count_annotations(anns)
    regions = c["ignored_regions"]
    more = f", {regions} ignored region{'s' if regions != 1 else ''}" if regions else ""
    return f"ground truth: {c['instances']} instances{more}"


def draw_predictions(
    image: np.ndarray,
    factor: int,
    shown: Sequence[Mapping[str, Any]],
    labels_of: Mapping[int, int],
    names: Sequence[str],
    keypoint_thresh: float = 0.0,
) -> np.ndarray:
    """COCO results of one image drawn on it, enlarged `factor` times (`image` is): boxes, masks
    when every result has one, class and score, and the keypoints scoring above
    `keypoint_thresh` -> uint8 [H, W, 3]. labels_of: category id -> label (index of names)."""
    from mrcnn import visualize as vis
    from mrcnn.evaluation.coco_results import decode_masks

    h, w = image.shape[0] // factor, image.shape[1] // factor
    boxes = np.array([_xyxy(r["bbox"]) for r in shown], np.float32).reshape(-1, 4)
    masks = None
    if all("segmentation" in r for r in shown):
        masks = _zoom_masks(decode_masks([r["segmentation"] for r in shown], (h, w)), factor)
    return vis.draw_instances(
        image,
        boxes * factor,
        masks,
        [labels_of.get(int(r["category_id"]), 0) for r in shown],
        names,
        [float(r["score"]) for r in shown],
        keypoints=_keypoints(shown, factor),
        keypoint_thresh=keypoint_thresh,
    )


def original_image(sample: Any) -> np.ndarray:
    """A shard sample's image in its original size: cut to its window, resized back (uint8
    [h, w, 3], the frame of the COCO annotations and results)."""
    from PIL import Image

    h, w = sample.original_size
    y1, x1, y2, x2 = sample.window
    crop = np.ascontiguousarray(sample.image[y1:y2, x1:x2])
    return np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR))


def zoom_factor(h: int, w: int, target: int = 256) -> int:
    """Small images are enlarged (nearest) to about `target` px so that captions stay readable."""
    return max(1, target // max(h, w))


def _keypoints(entries: Sequence[Mapping[str, Any]], factor: int) -> np.ndarray | None:
    """COCO "keypoints" [x, y, v] * K of results or annotations -> float [N, K, 3] with x, y
    zoomed by `factor`; None when they have none."""
    if not entries or not all("keypoints" in e for e in entries):
        return None
    kps = np.array([e["keypoints"] for e in entries], np.float32).reshape(len(entries), -1, 3)
    kps[..., :2] *= factor  # continuous pixel coordinates, as the boxes
    return kps


def _xyxy(bbox: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def _zoom_masks(masks: np.ndarray, factor: int) -> np.ndarray:
    """bool [N, H, W] -> [N, H * factor, W * factor] (nearest)."""
    return masks.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else masks


def overlay_indices(num_images: int, num_overlays: int) -> list[int]:
    """`num_overlays` sample indices spread evenly over the first `num_images` (fixed)."""
    k = min(num_overlays, num_images)
    return sorted({int(v) for v in np.linspace(0, num_images - 1, k).round()}) if k else []


def draw_steps(model: Any, dataset: ShardDataset, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """The model step by step (`mrcnn.visualize.steps`) on the val samples at `indices` ->
    {"<image id>_1_rpn": image, "<image id>_2_detections": ..., "<image id>_3_masks": ...}."""
    from torch.utils.data import Subset

    from mrcnn.data import eval_batches
    from mrcnn.visualize.steps import step_pictures

    out: dict[str, np.ndarray] = {}
    if not indices:
        return out
    for batch in eval_batches(Subset(dataset, list(indices)), len(indices)):
        # The model sees the images only; the ground truth gives the mask targets drawn.
        pictures = step_pictures(model, batch.to(model.device), dataset.class_names or None)
        for image_id, pics in zip(batch.image_ids.tolist(), pictures, strict=True):
            out.update({f"{image_id}_{name}": picture for name, picture in pics.items()})
    return out


def write_reports(
    out_dir: Path,
    scores: CocoScores,
    overlays: np.ndarray,
    results: Sequence[Mapping[str, Any]] | None,
    steps: Mapping[str, np.ndarray] | None = None,
    extra: Mapping[str, FileContent] | None = None,
) -> None:
    """Write `out_dir` as a whole (built beside it, then swapped in): the three pictures,
    `pr.csv`, when `results` is given `results.json`, the `steps/` pictures ({file stem:
    image}, `draw_steps`) and `extra` files ({path relative to out_dir: `FileContent`}, e.g.
    `pipeline.reporting.errors.error_files`)."""
    from PIL import Image

    from mrcnn import visualize as vis

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    names = list(scores.per_category)
    fig = vis.new_figure(max(5.0, 0.5 * len(names) + 2.5), 4.0 if len(names) <= 8 else 5.5)
    vis.plot_per_category_ap(fig.add_subplot(1, 1, 1), scores.per_category, list(scores.metrics))
    fig.tight_layout()
    Image.fromarray(vis.figure_to_array(fig)).save(tmp / "per_category_ap.png")

    curves = pr_curves(scores)
    fig = vis.new_figure(5.0 * len(curves), 4.2)
    for k, (iou_type, series) in enumerate(curves.items()):
        m = scores.metrics[iou_type]
        labelled = {
            f"IoU .50 (AP50 {m['AP50']:.3f})": series["iou50"],
            f"IoU .75 (AP75 {m['AP75']:.3f})": series["iou75"],
            f"mean IoU .50:.95 (AP {m['AP']:.3f})": series["iou50_95"],
        }
        vis.plot_pr_curves(
            fig.add_subplot(1, len(curves), k + 1),
            scores.recall_thresholds,
            labelled,
            title=f"{iou_type}: mean over categories",
        )
    fig.tight_layout()
    Image.fromarray(vis.figure_to_array(fig)).save(tmp / "pr_curve.png")

    Image.fromarray(overlays).save(tmp / "overlays.png")

    rows = pr_rows(scores)
    with open(tmp / PR_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["recall"])
        writer.writeheader()
        writer.writerows(rows)
    if results is not None:
        (tmp / RESULTS_FILE).write_text(json.dumps(list(results)) + "\n")
    (tmp / STEPS_DIR).mkdir()
    for stem, picture in (steps or {}).items():
        Image.fromarray(picture).save(tmp / STEPS_DIR / f"{stem}.png")
    for name, content in (extra or {}).items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(exist_ok=True)  # declared in dvc.yaml, so there even when empty
        elif isinstance(content, str):
            path.write_text(content)
        elif callable(content):
            content(path)
        else:
            Image.fromarray(content).save(path)

    replace_dir(tmp, out_dir)
