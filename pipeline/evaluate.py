"""Stage `evaluate`: COCO bbox + segm AP of `models/final/` on the val shards.

    python -m pipeline.evaluate [--params params.yaml]

1. Batched detection over `data/shards/val/` (`mrcnn.data.eval_batches`, then
   `MaskRCNN.predict` + `postprocess`): detections in original-image pixels, model labels mapped
   to COCO category ids through the val manifest's `class_map`, masks RLE-encoded
   (`mrcnn.coco_results`).
2. `COCOeval` for bbox and segm against the *original* annotations
   `data/raw/<data.source>/annotations/instances_val.json` (not the shards' mini-masks).
3. Writes `metrics/eval.json`: `{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"},
   "segm": {...}}` straight from `COCOeval.stats` (COCO writes -1 where an area range has no
   ground truth), plus `per_category`, `num_images`, `num_detections`, `score_thresh`.
4. Writes `reports/evaluate/`: `per_category_ap.png`, `pr_curve.png`, `overlays.png`, `pr.csv`
   (DVC plots data) and, with `evaluate.write_results`, `results.json` (the COCO results).
5. Logs the numbers (`eval/bbox_AP`, ...), the pictures and eval.json (artifact path
   `evaluate/`) into the training's MLflow run (`mlflow_run_id` of `metrics/train.json`); when
   the store has no such run, into a new run named "evaluate", and the log says so.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pycocotools.coco import COCO
from tqdm import tqdm

from mrcnn.coco_eval import (
    IOU_TYPES,
    METRIC_NAMES,
    CocoScores,
    EvaluationInputError,
    coco_evaluate,
    ground_truth_results,
    pr_curves,
)
from mrcnn.fileio import write_json_atomic
from pipeline.params import (
    DataParams,
    EvaluateParams,
    MlflowParams,
    load_section,
    resolve_device,
    to_dict,
)

if TYPE_CHECKING:
    from mrcnn.data import ShardDataset
    from mrcnn.model import MaskRCNN

log = logging.getLogger(__name__)

__all__ = [
    "IOU_TYPES",
    "METRIC_NAMES",
    "CocoScores",
    "EvaluatePaths",
    "coco_evaluate",
    "ground_truth_results",
    "main",
    "predict_dataset",
    "run",
]
ARTIFACT_PATH = "evaluate"
PICTURES = ("per_category_ap.png", "pr_curve.png", "overlays.png")
PR_FILE = "pr.csv"
RESULTS_FILE = "results.json"
OVERLAY_MAX_DETECTIONS = 15  # drawn per image, best scores first (all are evaluated)


class EvaluateError(ValueError):
    """The stage's inputs do not belong together; the message says which and what to do."""


@dataclass(frozen=True)
class EvaluatePaths:
    """What evaluate reads and writes (absolute, or relative to the working directory)."""

    model_dir: Path
    shards_dir: Path  # the val split folder
    annotations: Path  # original COCO instances_val.json
    train_metrics: Path
    metrics_out: Path
    reports_dir: Path

    @classmethod
    def under(cls, root: Path, source: str, raw_dir: Path | None = None) -> EvaluatePaths:
        """The project layout; the raw folder is `data/raw/<data.source>` as for `shards` (for
        source `local`, `download` links `data.local_dir` there)."""
        raw = raw_dir if raw_dir is not None else root / "data" / "raw" / source
        return cls(
            model_dir=root / "models" / "final",
            shards_dir=root / "data" / "shards" / "val",
            annotations=raw / "annotations" / "instances_val.json",
            train_metrics=root / "metrics" / "train.json",
            metrics_out=root / "metrics" / "eval.json",
            reports_dir=root / "reports" / "evaluate",
        )


# --------------------------------------------------------------------------------------------
# Detection over the shards


def category_ids_from_manifest(manifest: Mapping[str, Any]) -> dict[int, int]:
    """The shard manifest's `class_map` ({"1": {"category_id": 18, "name": ..}}) -> {1: 18}."""
    raw = manifest.get("class_map")
    if not raw:
        raise EvaluateError("the shard manifest has no class_map (label -> COCO category id)")
    return {int(label): int(entry["category_id"]) for label, entry in raw.items()}


def predict_dataset(
    model: MaskRCNN,
    dataset: ShardDataset,
    batch_size: int,
    *,
    category_ids: Mapping[int, int] | None = None,
    max_images: int = 0,
    num_workers: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Detect on every sample of `dataset` -> COCO results.

    Batches of `batch_size` images from `eval_batches` go through `model.predict` and
    `model.postprocess` (boxes and masks in original-image pixels) on the model's device.
    Each result is `{"image_id", "category_id", "bbox": [x, y, w, h], "score",
    "segmentation": RLE}` with `image_id` the source COCO id. `category_ids` maps model labels
    to dataset category ids (default: the dataset manifest's `class_map`). `max_images` > 0
    keeps the first that many samples.
    """
    from torch.utils.data import Subset

    from mrcnn.coco_results import to_coco_results
    from mrcnn.data import eval_batches

    if category_ids is None:
        category_ids = category_ids_from_manifest(dataset.manifest)
    n = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    source = dataset if n == len(dataset) else Subset(dataset, range(n))
    device = model.device
    results: list[dict[str, Any]] = []
    bar = tqdm(total=n, desc="evaluate", unit="img", disable=None if progress else True)
    with torch.no_grad():
        for batch in eval_batches(source, batch_size, num_workers=num_workers):
            # Ground truth is not needed for inference: only the image tensors travel.
            inputs = replace(
                batch, gt_boxes=None, gt_labels=None, gt_mini_masks=None, gt_valid=None
            ).to(device, non_blocking=True)
            detections = model.postprocess(model.predict(inputs), inputs)
            for image_id, det in zip(batch.image_ids.tolist(), detections, strict=True):
                results += to_coco_results(det, image_id, category_ids)
            bar.update(len(batch))
    bar.close()
    return results


# --------------------------------------------------------------------------------------------
# Pictures and the DVC plots file


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
) -> np.ndarray:
    """Prediction next to ground truth for dataset samples `indices` -> uint8 [H, W, 3].

    Both are drawn on the image in its original size (the shard's image cut to its window and
    resized back): predictions from `results` (at most `OVERLAY_MAX_DETECTIONS`, best first,
    with scores), ground truth from `coco_gt`'s annotations.
    """
    from PIL import Image

    from mrcnn import visualize as vis
    from mrcnn.coco_results import decode_masks

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
        y1, x1, y2, x2 = x.window
        crop = np.ascontiguousarray(x.image[y1:y2, x1:x2])
        image = np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR))
        factor = max(1, 256 // max(h, w))  # small images are enlarged so text stays readable
        big = vis.zoom(image, factor)

        found = sorted(by_image.get(x.image_id, []), key=lambda r: -float(r["score"]))
        shown = found[:OVERLAY_MAX_DETECTIONS]
        pred_boxes = np.array([_xyxy(r["bbox"]) for r in shown], np.float32).reshape(-1, 4)
        pred = vis.draw_instances(
            big,
            pred_boxes * factor,
            _zoom_masks(decode_masks([r["segmentation"] for r in shown], (h, w)), factor),
            [labels_of.get(int(r["category_id"]), 0) for r in shown],
            names,
            [float(r["score"]) for r in shown],
        )
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[x.image_id]))
        gt_masks = np.array([coco_gt.annToMask(a) for a in anns], bool).reshape(-1, h, w)
        gt_boxes = np.array([_xyxy(a["bbox"]) for a in anns], np.float32).reshape(-1, 4)
        gt = vis.draw_instances(
            big,
            gt_boxes * factor,
            _zoom_masks(gt_masks, factor),
            [labels_of.get(int(a["category_id"]), 0) for a in anns],
            names,
        )
        more = f", {len(shown)} drawn" if len(found) > len(shown) else ""
        titles = (
            f"image {x.image_id}: {len(found)} detections{more}",
            f"ground truth: {len(anns)} instances",
        )
        for j, (picture, title) in enumerate(zip((pred, gt), titles, strict=True)):
            ax = fig.add_subplot(rows, cols, 2 * k + j + 1)
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    fig.tight_layout()
    return vis.figure_to_array(fig)


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


# --------------------------------------------------------------------------------------------
# The stage


def run(
    paths: EvaluatePaths,
    params: EvaluateParams,
    *,
    tracking_uri: str | None,
    experiment: str = "mrcnn",
    artifact_location: str | None = None,
) -> dict[str, Any]:
    """Detect, evaluate, write `metrics/eval.json` and `reports/evaluate/`, log to MLflow
    (skipped when `tracking_uri` is None) -> what eval.json holds."""
    from mrcnn import weights
    from mrcnn.data import ShardDataset

    for path, how in (
        (paths.model_dir, "train a model first (`dvc repro` or `python -m pipeline.train`)"),
        (paths.shards_dir, "run `python -m pipeline.shards`"),
        (paths.annotations, "run `python -m pipeline.download`"),
    ):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; {how}")
    dataset = ShardDataset(paths.shards_dir)
    model = weights.load(paths.model_dir, resolve_device(params.device, "evaluate.device"))
    if model.image_size != dataset.image_size:
        raise EvaluateError(
            f"the model takes {model.image_size} px images, the val shards are "
            f"{dataset.image_size} px (shards.image_size must match the trained model)"
        )
    if params.score_thresh >= 0:
        model.roi_heads.score_thresh = params.score_thresh
    category_ids = category_ids_from_manifest(dataset.manifest)
    unmapped = sorted(set(range(1, model.num_classes)) - set(category_ids))
    if unmapped:
        raise EvaluateError(
            f"the model has {model.num_classes - 1} classes, the val shards' class_map has no "
            f"category for labels {unmapped}: model and shards come from different datasets"
        )
    if model.class_names and list(model.class_names) != list(dataset.class_names):
        log.warning(
            "the model's class names %s differ from the shards' %s; evaluating with the "
            "shards' class_map",
            list(model.class_names),
            dataset.class_names,
        )
    _check_annotations(paths.annotations, dataset.manifest)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(paths.annotations))

    n = len(dataset) if params.max_images <= 0 else min(params.max_images, len(dataset))
    start = time.perf_counter()
    results = predict_dataset(
        model,
        dataset,
        params.batch_size,
        category_ids=category_ids,
        max_images=n,
        num_workers=params.num_workers,
    )
    predict_s = time.perf_counter() - start
    image_ids = [int(v) for v in dataset.index[:n, 1]]
    missing = len(set(coco_gt.getImgIds()) - set(image_ids))
    if missing:
        why = "evaluate.max_images" if n < len(dataset) else "see the shards' report.json"
        total = len(coco_gt.getImgIds())
        log.warning("%d of the %d annotated val images are not evaluated (%s)", missing, total, why)
    start = time.perf_counter()
    scores = coco_evaluate(coco_gt, results, IOU_TYPES, image_ids)
    eval_s = time.perf_counter() - start
    for iou_type, text in scores.summary.items():
        log.info("%s:\n%s", iou_type, text)
    log.info("%d images, %d detections: detection %.1f s (%.1f img/s on %s), COCOeval %.1f s",
             n, len(results), predict_s, n / max(predict_s, 1e-9), model.device,
             eval_s)  # fmt: skip

    metrics: dict[str, Any] = {
        **scores.metrics,
        "per_category": scores.per_category,
        "num_images": n,
        "num_detections": len(results),
        "score_thresh": float(model.roi_heads.score_thresh),
    }
    write_reports(
        paths.reports_dir,
        scores,
        draw_overlays(
            dataset,
            overlay_indices(n, params.num_overlays),
            coco_gt,
            results,
            category_ids,
        ),
        results if params.write_results else None,
    )
    write_json_atomic(paths.metrics_out, metrics)
    log.info("wrote %s and %s/", paths.metrics_out, paths.reports_dir)
    if tracking_uri is not None:
        log_to_mlflow(
            paths,
            metrics,
            params,
            tracking_uri=tracking_uri,
            experiment=experiment,
            artifact_location=artifact_location,
        )
    return metrics


def write_reports(
    out_dir: Path,
    scores: CocoScores,
    overlays: np.ndarray,
    results: Sequence[Mapping[str, Any]] | None,
) -> None:
    """Write `out_dir` as a whole (built beside it, then swapped in): the three pictures,
    `pr.csv` and, when `results` is given, `results.json`."""
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
        vis.plot_pr_curves(fig.add_subplot(1, len(curves), k + 1), scores.recall_thresholds,
                           labelled, title=f"{iou_type}: mean over categories")  # fmt: skip
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

    old = out_dir.with_name(f".{out_dir.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def mlflow_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """eval.json -> MLflow metrics: `eval/bbox_AP`, ..., `eval/segm_APl` and
    `eval/per_category/<name>/{bbox,segm}_AP`. COCO's -1 (no ground truth in that area range)
    and per-category None are left out rather than logged as numbers."""
    out = {}
    for iou_type in IOU_TYPES:
        for name, value in metrics.get(iou_type, {}).items():
            if value >= 0:
                out[f"eval/{iou_type}_{name}"] = float(value)
    for name, entry in metrics.get("per_category", {}).items():
        safe = re.sub(r"[^\w.\- /]", "_", name)
        for iou_type in IOU_TYPES:
            value = entry.get(f"{iou_type}_AP")
            if value is not None:
                out[f"eval/per_category/{safe}/{iou_type}_AP"] = float(value)
    return out


def log_to_mlflow(
    paths: EvaluatePaths,
    metrics: Mapping[str, Any],
    params: EvaluateParams,
    *,
    tracking_uri: str,
    experiment: str,
    artifact_location: str | None = None,
) -> str:
    """Log into the training's run (`mlflow_run_id` of train.json) if the store has it, else a
    new run "evaluate" -> the run id. Settings go in as tags (`evaluate.*`): params of a run
    cannot change, and evaluate may run again on the same training run."""
    import mlflow

    from pipeline.tracking import flatten, start_run

    train = json.loads(paths.train_metrics.read_text()) if paths.train_metrics.is_file() else {}
    train_run = train.get("mlflow_run_id")
    if not train_run:
        log.warning("no mlflow_run_id in %s: evaluate logs into a new MLflow run 'evaluate'",
                    paths.train_metrics)  # fmt: skip
    with start_run(
        tracking_uri,
        experiment,
        run_name="evaluate",
        run_id=train_run,
        artifact_location=artifact_location,
    ) as active:
        run_id = active.info.run_id
        if train_run and run_id != train_run:
            log.warning("training run %s is not in the store: logged into new run %s "
                        "('evaluate')", train_run, run_id)  # fmt: skip
        mlflow.log_metrics(mlflow_metrics(metrics))
        mlflow.set_tags(
            {
                **flatten(to_dict(params), prefix="evaluate."),
                "evaluate.num_images": str(metrics["num_images"]),
                "evaluate.num_detections": str(metrics["num_detections"]),
            }
        )
        mlflow.log_artifact(str(paths.metrics_out), artifact_path=ARTIFACT_PATH)
        for name in (*PICTURES, PR_FILE, RESULTS_FILE):
            if (paths.reports_dir / name).is_file():
                mlflow.log_artifact(str(paths.reports_dir / name), artifact_path=ARTIFACT_PATH)
    log.info("logged to MLflow run %s (artifacts under %s/)", run_id, ARTIFACT_PATH)
    return run_id


def _check_annotations(annotations: Path, manifest: Mapping[str, Any]) -> None:
    """Warn when the shards were built from another version of the annotation file."""
    expected = manifest.get("source", {}).get("annotations_sha256")
    if expected and expected != hashlib.sha256(annotations.read_bytes()).hexdigest():
        log.warning("%s differs from the file the val shards were built from; rebuild the "
                    "shards (`dvc repro shards`) if the images changed", annotations)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    from pipeline.tracking import (
        TrackingError,
        check_tracking_uri,
        default_artifact_location,
        project_root,
        tracking_uri,
    )

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    ap.add_argument("--raw", type=Path, help="raw COCO-layout folder (default data/raw/<source>)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    data = load_section(args.params, "data", DataParams)
    params = load_section(args.params, "evaluate", EvaluateParams)
    mlflow_params = load_section(args.params, "mlflow", MlflowParams)
    uri = tracking_uri(args.params, mlflow_params.tracking_uri)
    try:
        check_tracking_uri(uri)
        run(
            EvaluatePaths.under(project_root(args.params), data.source, args.raw),
            params,
            tracking_uri=uri,
            experiment=mlflow_params.experiment,
            artifact_location=default_artifact_location(args.params, uri, mlflow_params),
        )
    except (EvaluateError, EvaluationInputError, FileNotFoundError, TrackingError) as e:
        log.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    main()
