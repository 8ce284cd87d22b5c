"""Evaluation: detections over a dataset, COCO results, COCOeval scores.

    predict       `predict_dataset`: batched detection over shards -> COCO results
    coco_results  `Detections` <-> COCO results (RLE masks), encoded in worker processes
    coco_eval     `coco_evaluate` -> `CocoScores` (bbox, segm, keypoints; PR arrays kept)
    ground_truth  `val_annotations` (where the val split's COCO annotations are, also
                  beside shards in S3), `load_ground_truth` (checked against the manifest)

Error analysis (bbox and segm; docs/evaluate.md "Error analysis"):
    matching      detections and ground truth image by image, pycocotools IoUs, COCOeval's
                  greedy matching for a chunk of images at once
    error_types   `assign_error_types` -> `ErrorTypes`: TIDE's type of every detection / object
    tide          `error_breakdown` -> {"AP50", "dAP": {cls, loc, both, dupe, bkg, miss}, "fp",
                  "fn", counts, per category}: TIDE's fixing oracles
    analyze       `pr_breakdown` -> `PrBreakdown`: COCO analyze()'s C75 .. FN curves per size
    confusion     `confusion_matrix` -> `ConfusionMatrix`; `write_confusion_csv` (DVC's plot)
    image_errors  `images_by_errors` (the images that fail most), `image_detail` (one image's
                  outcomes, for `mrcnn.visualize.draw_error_types`)

Names are imported on first use (PEP 562): scoring results needs no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrcnn.lazy import lazy_names

if TYPE_CHECKING:
    from mrcnn.evaluation.analyze import PrBreakdown, pr_breakdown
    from mrcnn.evaluation.coco_eval import CocoScores, EvaluationInputError, coco_evaluate
    from mrcnn.evaluation.coco_results import to_coco_results
    from mrcnn.evaluation.confusion import ConfusionMatrix, confusion_matrix, write_confusion_csv
    from mrcnn.evaluation.error_types import ErrorTypes, assign_error_types
    from mrcnn.evaluation.image_errors import image_detail, images_by_errors
    from mrcnn.evaluation.predict import predict_dataset
    from mrcnn.evaluation.tide import error_breakdown, tide_breakdown

_MODULES = {
    "mrcnn.evaluation.analyze": ("PrBreakdown", "pr_breakdown"),
    "mrcnn.evaluation.coco_eval": ("CocoScores", "EvaluationInputError", "coco_evaluate"),
    "mrcnn.evaluation.coco_results": ("to_coco_results",),
    "mrcnn.evaluation.confusion": ("ConfusionMatrix", "confusion_matrix", "write_confusion_csv"),
    "mrcnn.evaluation.error_types": ("ErrorTypes", "assign_error_types"),
    "mrcnn.evaluation.image_errors": ("image_detail", "images_by_errors"),
    "mrcnn.evaluation.predict": ("predict_dataset",),
    "mrcnn.evaluation.tide": ("error_breakdown", "tide_breakdown"),
}
__all__ = [
    "CocoScores",
    "ConfusionMatrix",
    "ErrorTypes",
    "EvaluationInputError",
    "PrBreakdown",
    "assign_error_types",
    "coco_evaluate",
    "confusion_matrix",
    "error_breakdown",
    "image_detail",
    "images_by_errors",
    "pr_breakdown",
    "predict_dataset",
    "tide_breakdown",
    "to_coco_results",
    "write_confusion_csv",
]

__getattr__, __dir__ = lazy_names(__name__, _MODULES)
