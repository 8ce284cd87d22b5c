"""Alias for one release (listed in the README): COCO evaluation moved to
`mrcnn.evaluation.coco_eval` (`mrcnn.evaluation.coco_evaluate`)."""

from mrcnn.evaluation.coco_eval import (  # noqa: F401
    CocoScores,
    EvaluationInputError,
    coco_evaluate,
    ground_truth_results,
    pr_curves,
)
