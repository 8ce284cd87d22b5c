"""Stage `evaluate`: COCO bbox + segm AP (+ keypoint AP for keypoint models) of the final model
on the val shards.

    python -m pipeline.evaluate [--params params.yaml] [--model DIR] [--shards DIR] ...

1. Batched detection over the val shards (`mrcnn.evaluation.predict_dataset`): detections in
   original-image pixels, model labels mapped to COCO category ids through the val manifest's
   class map, masks RLE-encoded.
2. COCOeval for bbox and segm against the *original* annotations
   `data/raw/<data.source>/annotations/instances_val.json` (not the shards' mini-masks); with
   `--shards s3://bucket/prefix`, the copy `pipeline.shards --out` put beside the val shards
   (`<shards>/val/annotations.json`, checked against the manifest's sha256: no local raw
   folder is read), as periodic validation reads it (`mrcnn.evaluation.ground_truth`).
3. The error analysis of bbox and segm (`pipeline.reporting.errors`): TIDE's error types and
   what each costs (dAP), the confusion matrix, COCO analyze()'s PR breakdown, the images with
   the most weighted errors; the log says what to try against the costliest error types.
4. Writes `metrics/eval.json`: exactly `{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"},
   "segm": {...}}` straight from `COCOeval.stats` (COCO writes -1 where an area range has no
   ground truth; a keypoint model adds `"keypoints": {"AP", "AP50", "AP75", "APm", "APl"}`, OKS
   with `evaluate.oks_sigmas`; a model without a mask head has no "segm"): what `dvc metrics
   diff` and `dvc exp show` compare. Beside it `metrics/eval_errors.json`, the error analysis'
   numbers, also compared by DVC: `{"bbox": {"AP50", "dAP": {"cls", "loc", "both", "dupe",
   "bkg", "miss"}, "fp", "fn"}, "segm": ...}` (TIDE's AP points 0..100; keypoints are not
   typed). The rest goes to `reports/evaluate/summary.json`: `per_category` AP, `num_images`,
   `num_detections`, `score_thresh`.
5. Writes `reports/evaluate/` (`pipeline.reporting.evaluate`; `steps/`: the model step by
   step on `evaluate.num_step_images` val images, `mrcnn.visualize.steps`; the error analysis'
   files) and logs the numbers and pictures into the training's MLflow run
   (`pipeline.tracking.runs`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrcnn.data import category_ids as label_to_category
from mrcnn.data import retries, storage
from mrcnn.data.layout import annotation_file
from mrcnn.evaluation.coco_eval import EvaluationInputError, coco_evaluate
from mrcnn.evaluation.ground_truth import load_ground_truth, val_annotations
from mrcnn.evaluation.predict import predict_dataset
from mrcnn.fileio import file_digest, write_json_atomic
from pipeline import cli, layout
from pipeline.device import resolve_device
from pipeline.paramfile import worker_processes
from pipeline.params import EvaluateParams, Params, load
from pipeline.reporting.errors import ErrorAnalysis, analyze_errors, error_files
from pipeline.reporting.evaluate import (
    SUMMARY_FILE,
    draw_overlays,
    draw_steps,
    overlay_indices,
    write_reports,
)
from pipeline.tracking import runs, store
from pipeline.tracking.store import Tracking, TrackingError

log = logging.getLogger(__name__)

ERRORS_FILE = "eval_errors.json"  # default name of the error numbers, beside eval.json


class EvaluateError(ValueError):
    """The stage's inputs do not belong together; the message says which and what to do."""


@dataclass(frozen=True)
class EvaluatePaths:
    """What evaluate reads and writes."""

    model_dir: Path
    shards_dir: Path | str  # the val split: a folder, or a URL (s3://bucket/prefix/val)
    annotations: Path | str  # original COCO instances_val.json, or the split's copy at a URL
    train_run: Path  # train_run.json: the MLflow run to log into
    metrics_out: Path  # eval.json
    reports_dir: Path
    tracking: Tracking | None = None  # the MLflow store; None: nothing is logged
    errors_out: Path | None = None  # eval_errors.json; None: beside metrics_out

    @property
    def errors_file(self) -> Path:
        return self.errors_out or self.metrics_out.with_name(ERRORS_FILE)


def run(params: Params, paths: EvaluatePaths) -> dict[str, Any]:
    """Detect, evaluate (`evaluate` section), write `metrics/eval.json`,
    `metrics/eval_errors.json` and `reports/evaluate/`, log to MLflow (unless `paths.tracking`
    is None) -> eval.json's sections, `errors` (eval_errors.json) and summary.json's keys."""
    p = params.evaluate
    model, dataset, category_ids = load_inputs(paths, p)
    coco_gt = ground_truth(paths.annotations, dataset)
    n = len(dataset) if p.max_images <= 0 else min(p.max_images, len(dataset))
    results, scores = detect_and_score(model, dataset, coco_gt, category_ids, n, p)
    errors, error_reports = explain_errors(
        model, dataset, coco_gt, results, tuple(scores.metrics), n, p
    )
    summary = {
        "per_category": scores.per_category,
        "num_images": n,
        "num_detections": len(results),
        "score_thresh": float(model.roi_heads.detection_layer.score_thresh),
    }
    overlays = draw_overlays(
        dataset,
        overlay_indices(n, p.num_overlays),
        coco_gt,
        results,
        category_ids,
        keypoint_thresh=p.keypoint_thresh,
    )
    steps = draw_steps(model, dataset, overlay_indices(n, p.num_step_images))
    kept = results if p.write_results else None
    extra = {SUMMARY_FILE: json.dumps(summary, indent=1) + "\n", **error_reports}
    write_reports(paths.reports_dir, scores, overlays, kept, steps, extra=extra)
    write_json_atomic(paths.metrics_out, scores.metrics)
    write_json_atomic(paths.errors_file, errors.summary())
    log.info("wrote %s, %s and %s/", paths.metrics_out, paths.errors_file, paths.reports_dir)
    metrics: dict[str, Any] = {**scores.metrics, "errors": errors.summary(), **summary}
    if paths.tracking is not None:
        t = paths.tracking
        runs.log_evaluation(
            paths.train_run,
            (paths.metrics_out, paths.errors_file),
            paths.reports_dir,
            metrics,
            p,
            tracking_uri=t.uri,
            experiment=t.experiment,
            artifact_location=t.artifact_location,
        )
    return metrics


def detect_and_score(
    model: Any, dataset: Any, coco_gt: Any, category_ids: dict[int, int], n: int, p: EvaluateParams
) -> tuple[list[dict[str, Any]], Any]:
    """Detections on the first `n` val images (COCO results) and their COCOeval scores."""
    workers = worker_processes(p.num_workers)
    start = time.perf_counter()
    results = predict_dataset(
        model,
        dataset,
        p.batch_size,
        category_ids=category_ids,
        max_images=n,
        num_workers=workers,
        encode_workers=workers,
    )
    predict_s = time.perf_counter() - start
    image_ids = [int(v) for v in dataset.index[:n, 1]]
    missing = len(set(coco_gt.getImgIds()) - set(image_ids))
    if missing:
        why = "evaluate.max_images" if n < len(dataset) else "see the shards' report.json"
        total = len(coco_gt.getImgIds())
        log.warning("%d of the %d annotated val images are not evaluated (%s)", missing, total, why)
    start = time.perf_counter()
    scores = coco_evaluate(
        coco_gt,
        results,
        iou_types(model),
        image_ids,
        oks_sigmas=p.oks_sigmas or None,
        backend=p.backend,
        processes=workers,
    )
    eval_s = time.perf_counter() - start
    for iou_type, text in scores.summary.items():
        log.info("%s:\n%s", iou_type, text)
    log.info(
        "%d images, %d detections: detection %.1f s (%.1f img/s on %s), COCOeval (%s) %.1f s",
        *(n, len(results), predict_s, n / max(predict_s, 1e-9), model.device, p.backend, eval_s),
    )
    return results, scores


def explain_errors(
    model: Any,
    dataset: Any,
    coco_gt: Any,
    results: list[dict[str, Any]],
    iou_types: tuple[str, ...],
    n: int,
    p: EvaluateParams,
) -> tuple[ErrorAnalysis, dict[str, Any]]:
    """Why the AP is what it is (`pipeline.reporting.errors`): TIDE's breakdown, the confusion
    matrix at `evaluate.confusion_thresh` (< 0: the model's own inference.score_thresh), the PR
    breakdown (`evaluate.pr_breakdown`), the `evaluate.num_error_images` worst images, logged
    with what to try -> (the analysis, its report files)."""
    thresh = p.confusion_thresh if p.confusion_thresh >= 0 else model.cfg.inference.score_thresh
    image_ids = [int(v) for v in dataset.index[:n, 1]]
    errors = analyze_errors(
        coco_gt,
        results,
        iou_types,
        image_ids,
        confusion_thresh=float(thresh),
        pr=p.pr_breakdown,
        backend=p.backend,
    )
    for line in errors.lines():
        log.info("%s", line)
    files = error_files(
        errors, dataset, coco_gt, results, num_images=p.num_error_images, num_evaluated=n
    )
    return errors, files


def load_inputs(paths: EvaluatePaths, p: EvaluateParams) -> tuple[Any, Any, dict[int, int]]:
    """The model (on `evaluate.device`, with `evaluate.score_thresh`), the val shards and their
    label -> category id map, after checking that they belong together."""
    from mrcnn import weights
    from mrcnn.data import ShardDataset

    for path, how in (
        (paths.model_dir, "train a model first (`dvc repro` or `python -m pipeline.train`)"),
        (paths.shards_dir, "run `python -m pipeline.shards`"),
        (paths.annotations, "run `python -m pipeline.download`"),
    ):
        if not storage.exists(path):
            raise FileNotFoundError(f"{path} does not exist; {how}")
    dataset = ShardDataset(paths.shards_dir)
    dataset.verify()  # a damaged shard: one line naming it, before the model runs
    model = weights.load(paths.model_dir, resolve_device(p.device, "evaluate.device"))
    if model.image_size != dataset.image_size:
        raise EvaluateError(
            f"the model takes {model.image_size} px images, the val shards are "
            f"{dataset.image_size} px (shards.image_size must match the trained model)"
        )
    if p.score_thresh >= 0:
        model.roi_heads.detection_layer.score_thresh = p.score_thresh
    if not dataset.class_map:
        raise EvaluateError("the val shard manifest has no class_map (label -> category id)")
    category_ids = label_to_category(dataset.class_map)
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
    return model, dataset, category_ids


def ground_truth(annotations: Path | str, dataset: Any) -> Any:
    """The original COCO annotations (pycocotools `COCO`), checked against the shards: a
    local file that differs from the one they were built from is warned about, a copy at a URL
    (beside shards in object storage) is refused (`mrcnn.evaluation.ground_truth`)."""
    from pycocotools.coco import COCO

    if storage.is_url(annotations):
        return load_ground_truth(annotations, dataset.manifest)
    check_annotations(Path(annotations), dataset.manifest)
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(annotations))


def iou_types(model: Any) -> tuple[str, ...]:
    """What a model is evaluated on: bbox, segm with a mask head, keypoints with a keypoint head."""
    heads = model.roi_heads
    return (
        ("bbox",)
        + (("segm",) if heads.mask_head is not None else ())
        + (("keypoints",) if heads.keypoint_head is not None else ())
    )


def check_annotations(annotations: Path, manifest: dict[str, Any]) -> None:
    """Warn when the shards were built from another version of the annotation file."""
    expected = manifest.get("source", {}).get("annotations_sha256")
    if expected and expected != file_digest(annotations):
        log.warning(
            "%s differs from the file the val shards were built from; rebuild the shards "
            "(`dvc repro shards`) if the images changed",
            annotations,
        )


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    errors = (EvaluateError, EvaluationInputError, TrackingError, retries.StorageUnavailableError)
    cli.run_main(args, lambda: run(*inputs(args)), errors)


def parser() -> argparse.ArgumentParser:
    ap = cli.parser(__doc__)
    ap.add_argument(
        "--raw", type=Path, help=f"raw COCO-layout folder (default {layout.RAW}/<source>)"
    )
    ap.add_argument(
        "--shards",
        default=str(layout.SHARDS),
        help="a folder or a URL (s3://bucket/prefix, as written by `pipeline.shards --out`: "
        "the val annotations are then read from beside the val shards, not --raw)",
    )
    ap.add_argument("--model", type=Path, default=layout.MODEL)
    ap.add_argument("--train-run", type=Path, default=layout.TRAIN_RUN)
    ap.add_argument("--metrics", type=Path, default=layout.EVAL_METRICS)
    ap.add_argument("--errors", type=Path, default=layout.EVAL_ERRORS, help="TIDE's numbers")
    ap.add_argument("--reports", type=Path, default=layout.EVAL_REPORTS)
    return ap


def inputs(args: argparse.Namespace) -> tuple[Params, EvaluatePaths]:
    """The params file and the command line's paths (relative ones from the project root); the
    tracking store is checked here, before any work."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    params = load(args.params)
    root = layout.project_root(args.params)
    raw = layout.under(root, args.raw) if args.raw else layout.raw_dir(root, params.data.source)
    tracking = store.locate(args.params, params.mlflow)
    store.check_tracking_uri(tracking.uri)
    shards = layout.place(root, args.shards)
    if storage.is_url(shards):  # nothing local: the annotations uploaded beside the val shards
        annotations: Path | str = val_annotations(shards, "pipeline.evaluate", "")
    else:
        annotations = annotation_file(raw, "val")
    return params, EvaluatePaths(
        model_dir=layout.under(root, args.model),
        shards_dir=storage.join(shards, "val"),
        annotations=annotations,
        train_run=layout.under(root, args.train_run),
        metrics_out=layout.under(root, args.metrics),
        reports_dir=layout.under(root, args.reports),
        tracking=tracking,
        errors_out=layout.under(root, args.errors),
    )


if __name__ == "__main__":
    main()
