"""Periodic validation during training: val AP of the first `train.eval_images` val images.

Run by rank 0 every `train.eval_every` iterations (sweeps compare trials on it); the same
`mrcnn.evaluation.predict_dataset` + `mrcnn.coco_eval.coco_evaluate` path as the evaluate stage.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

from mrcnn.coco_eval import coco_evaluate
from mrcnn.data import ShardDataset
from mrcnn.evaluation import predict_dataset
from pipeline.params import TrainParams

logger = logging.getLogger(__name__)


class PeriodicEval:
    """`evaluate(model, iteration) -> {"bbox_AP", "segm_AP"}`, also logged to MLflow."""

    def __init__(self, config: dict[str, Any], p: TrainParams) -> None:
        from pycocotools.coco import COCO

        self.val = ShardDataset(Path(config["shards"]) / "val")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints
            self.gt = COCO(config["val_annotations"])
        n = min(p.eval_images, len(self.val))
        self.image_ids = [int(self.val.read_meta(i)["image_id"]) for i in range(n)]
        self.batch_size = p.batch_size

    def __call__(self, model, iteration: int) -> dict[str, float]:
        import mlflow

        results = predict_dataset(
            model, self.val, self.batch_size, max_images=len(self.image_ids), progress=False
        )
        scores = coco_evaluate(self.gt, results, image_ids=self.image_ids)
        metrics = {"bbox_AP": scores.metrics["bbox"]["AP"], "segm_AP": scores.metrics["segm"]["AP"]}
        if mlflow.active_run() is not None:
            mlflow.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=iteration)
        logger.info(
            "iteration %d: val bbox AP %.3f, segm AP %.3f",
            iteration,
            metrics["bbox_AP"],
            metrics["segm_AP"],
        )
        return metrics


def val_annotations(shards: Path) -> Path:
    """The val split's original COCO annotations, as recorded in its shard manifest."""
    manifest = ShardDataset(shards / "val").manifest
    path = Path(manifest["source"]["annotations"])
    if not path.is_absolute():  # recorded relative to the project root (shards = root/data/shards)
        path = shards.resolve().parent.parent / path
    if not path.is_file():
        raise FileNotFoundError(
            f"train.eval_every needs the val annotations {path} (run the download stage)"
        )
    return path
