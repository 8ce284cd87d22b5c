"""Periodic validation (`train.eval_every`) with the val shards and annotations only in S3 (moto):
rank 0 reads both from the bucket, never from the driver's disk (the raw folder the manifest
names is deleted before anything is read)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from mrcnn import presets
from mrcnn.data import ShardDataset, storage
from mrcnn.evaluation.ground_truth import val_annotations
from mrcnn.evaluation.predict import predict_dataset
from mrcnn.modeling.model import build_model
from pipeline.train_params import TrainParams
from pipeline.training.periodic_eval import PeriodicEval
from tests.pipeline.tiny_model import TINY_MODEL

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _model():
    torch.manual_seed(0)
    # Every detection of the untrained model is kept (the default threshold leaves none).
    cfg = presets.shapes_small(
        num_classes=4, image_size=64, inference={"score_thresh": 0.0}, **TINY_MODEL
    )
    return build_model(cfg).eval()


def test_val_ap_from_s3_equals_val_ap_from_the_folder(s3_shards, tiny_shards):
    annotations = val_annotations(s3_shards)
    assert annotations == f"{s3_shards}/val/annotations.json"
    p = TrainParams(eval_images=4, batch_size=2)
    remote = PeriodicEval({"shards": s3_shards, "val_annotations": annotations}, p)
    local = PeriodicEval(
        {"shards": str(tiny_shards), "val_annotations": val_annotations(tiny_shards)}, p
    )
    assert remote.image_ids == local.image_ids and len(remote.image_ids) == 4
    assert remote.gt.dataset == local.gt.dataset
    model = _model()
    assert remote(model, 3) == local(model, 3)
    # The untrained model's AP is 0 either way; its detections show the images are the same.
    detections = [
        predict_dataset(model, ev.val, 2, max_images=4, progress=False) for ev in (remote, local)
    ]
    assert detections[0] == detections[1] and len(detections[0]) > 10


def test_s3_shards_without_their_annotations_say_how_to_write_them(tiny_shards, s3_bucket):
    url = f"{s3_bucket}/shards"
    storage.upload_split(tiny_shards / "val", f"{url}/val")  # shards only, no annotations.json
    with pytest.raises(FileNotFoundError, match=r"pipeline.shards --out s3://.*/shards"):
        val_annotations(url)


def test_annotations_that_are_not_the_ones_the_shards_were_built_from_are_refused(
    s3_shards,
):
    url = f"{s3_shards}/val/annotations.json"
    gt = json.loads(storage.read_text(url))
    gt["annotations"] = gt["annotations"][1:]
    storage.write_text(url, json.dumps(gt))
    with pytest.raises(ValueError, match="not the annotation file the val shards were built"):
        PeriodicEval({"shards": s3_shards, "val_annotations": url}, TrainParams())


@pytest.mark.slow
def test_training_validates_from_s3_shards(s3_shards, ray_s3, tmp_path: Path):
    """`pipeline.train` with `--shards s3://...` and `train.eval_every`: rank 0 (a Ray worker)
    logs val AP read from the bucket."""
    from pipeline.params import Params
    from pipeline.stages.train import TrainPaths, run
    from pipeline.tracking.store import Tracking

    params = TrainParams(
        num_workers=1,
        cpus_per_worker=1,
        batch_size=2,
        reference_batch=2,
        iterations=4,
        checkpoint_every=2,
        eval_every=2,
        eval_images=4,
        log_every=2,
        warmup_iters=1,
        max_gt=8,
        run_name="s3-eval",
        storage_path=str(tmp_path / "runs"),
    )
    paths = TrainPaths(
        shards=s3_shards,
        model_dir=tmp_path / "models/final",
        metrics=tmp_path / "metrics/train.json",
        run_info=tmp_path / "metrics/train_run.json",
        reports=tmp_path / "reports/train",
        storage=tmp_path / "runs",
        tracking=Tracking(f"sqlite:///{tmp_path}/mlflow.db", "test"),
    )
    run(Params(train=params, model={"preset": "shapes_small", **TINY_MODEL}), paths)
    uri = paths.tracking.uri

    run_id = json.loads(paths.run_info.read_text())["mlflow_run_id"]
    history = mlflow.MlflowClient(uri).get_metric_history(run_id, "val/segm_AP")
    assert [m.step for m in history] == [2, 4]
    assert ShardDataset(f"{s3_shards}/val").manifest["counts"]["images"] == 6
