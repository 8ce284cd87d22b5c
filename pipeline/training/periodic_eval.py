"""Periodic validation during training: val AP of the first `train.eval_images` val images.

Run by rank 0 every `train.eval_every` iterations (sweeps compare trials on it); the same
`mrcnn.evaluation.predict_dataset` + `mrcnn.evaluation.coco_eval.coco_evaluate` path as the evaluate
stage, so the same fast path (masks encoded from the mask grid, the faster-coco-eval backend), in
this process (a few dozen images: worker processes would cost more than they save).

Rank 0 may run on any node, so it reads everything itself from where the driver says, never
from the driver's disk: the val shards (a folder every node sees, or a URL) and the val COCO
annotations (`mrcnn.evaluation.ground_truth.val_annotations`: the split's own `annotations.json`
when it has one, as a split written by `pipeline.shards --out s3://...` does, else the file its
manifest records), checked against the manifest's sha256 (annotations edited after the shards
were built give wrong AP).
"""

from __future__ import annotations

import logging
from typing import Any

from mrcnn.config import Config
from mrcnn.data import ShardDataset, storage
from mrcnn.evaluation.coco_eval import COCO_PERSON_OKS_SIGMAS, coco_evaluate
from mrcnn.evaluation.ground_truth import load_ground_truth
from mrcnn.evaluation.predict import predict_dataset
from pipeline.tracking import active, names
from pipeline.train_params import TrainParams

logger = logging.getLogger(__name__)


class PeriodicEval:
    """`evaluate(model, iteration) -> {"<iou type>_AP": AP}` for each of `iou_types` (bbox,
    segm with a mask head, keypoints with a keypoint head: `iou_types_of`), also logged to
    MLflow as `val/<iou type>_AP`."""

    def __init__(
        self, config: dict[str, Any], p: TrainParams, iou_types: tuple[str, ...] = ("bbox", "segm")
    ) -> None:
        self.iou_types = iou_types
        self.val = ShardDataset(
            storage.join(config["shards"], "val"), cache_dir=p.shard_cache or None
        )
        self.gt = load_ground_truth(config["val_annotations"], self.val.manifest)
        n = min(p.eval_images, len(self.val))
        self.image_ids = [int(self.val.read_meta(i)["image_id"]) for i in range(n)]
        self.batch_size = p.batch_size

    def __call__(self, model, iteration: int) -> dict[str, float]:
        results = predict_dataset(
            model, self.val, self.batch_size, max_images=len(self.image_ids), progress=False
        )
        scores = coco_evaluate(self.gt, results, self.iou_types, image_ids=self.image_ids)
        metrics = {f"{t}_AP": scores.metrics[t]["AP"] for t in self.iou_types}
        active.log_metrics_if_active(names.prefixed(names.VAL, metrics), step=iteration)
        # the driver's progress line shows it (not a Ray worker line)
        logger.debug("iteration %d: val %s", iteration, metrics)
        return metrics


def iou_types_of(cfg: Config) -> tuple[str, ...]:
    """What a model is validated on: bbox, segm with a mask head, keypoints with a keypoint
    head of COCO's 17 person keypoints (the OKS sigmas periodic validation knows; other
    keypoint sets are scored by the evaluate stage with `evaluate.oks_sigmas`)."""
    return (
        ("bbox",)
        + (("segm",) if cfg.roi_heads.masks else ())
        + (("keypoints",) if cfg.keypoints.count == len(COCO_PERSON_OKS_SIGMAS) else ())
    )
