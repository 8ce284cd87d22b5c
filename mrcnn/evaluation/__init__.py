"""Evaluation: detections over a dataset, COCO results, COCOeval scores.

    predict       `predict_dataset`: batched detection over shards -> COCO results
    coco_results  `Detections` <-> COCO results (RLE masks), encoded in worker processes
    coco_eval     `coco_evaluate` -> `CocoScores` (bbox, segm, keypoints; PR arrays kept)

Names are imported on first use (PEP 562): scoring results needs no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrcnn.lazy import lazy_names

if TYPE_CHECKING:
    from mrcnn.evaluation.coco_eval import CocoScores, EvaluationInputError, coco_evaluate
    from mrcnn.evaluation.coco_results import to_coco_results
    from mrcnn.evaluation.predict import predict_dataset

_MODULES = {
    "mrcnn.evaluation.coco_eval": ("CocoScores", "EvaluationInputError", "coco_evaluate"),
    "mrcnn.evaluation.coco_results": ("to_coco_results",),
    "mrcnn.evaluation.predict": ("predict_dataset",),
}
__all__ = [
    "CocoScores",
    "EvaluationInputError",
    "coco_evaluate",
    "predict_dataset",
    "to_coco_results",
]

__getattr__, __dir__ = lazy_names(__name__, _MODULES)
