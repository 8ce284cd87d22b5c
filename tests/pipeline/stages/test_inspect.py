"""End to end on tiny data: download -> shards -> inspect through the stage CLIs."""

from __future__ import annotations

import json
import re

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from mrcnn import presets
from mrcnn.data import ShardDataset, TrainLoader
from pipeline.stages import download, inspect, shards
from pipeline.stages.inspect import label_anchors
from tests.pipeline.registry_helpers import fresh_store

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PARAMS = """
data:
  source: shapes
  shapes: {num_train: 12, num_val: 5, image_size: 96, min_size: 8, max_size: 20}
shards:
  image_size: 96
  mini_mask_shape: 28
  samples_per_shard: 5
  num_workers: 2
inspect:
  num_samples: 4
"""


def test_stages_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(PARAMS)
    uri = fresh_store(tmp_path)  # the default store, sqlite:///mlflow.db, made in milliseconds
    download.main([])
    shards.main(["--params", "params.yaml"])
    inspect.main([])
    out = capsys.readouterr().out
    assert '"images": 12' in out

    # the pictures are in MLflow too, in a run named after the data
    run_id = re.search(r'"mlflow_run_id": "(\w+)"', out).group(1)
    client = mlflow.MlflowClient(uri)
    assert client.get_run(run_id).info.run_name == "inspect-shapes"
    logged = sorted(a.path for a in client.list_artifacts(run_id, "inspect"))
    assert "inspect/samples.png" in logged and "inspect/anchors.png" in logged
    assert len(logged) == 6  # five pictures and summary.json

    for split, n in (("train", 12), ("val", 5)):
        manifest = json.loads((tmp_path / "data/shards" / split / "manifest.json").read_text())
        assert manifest["counts"]["images"] == n and manifest["counts"]["shards"] == -(-n // 5)
        assert manifest["num_classes"] == 4
        assert manifest["class_names"] == ["background", "square", "circle", "triangle"]
        assert (manifest["image_size"], manifest["mini_mask_shape"]) == (96, 28)
        assert manifest["resize_mode"] == "square"
        assert manifest["params"]["num_workers"] == 2
    ds = ShardDataset(tmp_path / "data/shards/train")
    batch = next(iter(TrainLoader(ds, 4, seed=0, max_gt=10)))
    assert batch.images.shape == (4, 3, 96, 96) and batch.gt_valid.any()

    pictures = sorted(p.name for p in (tmp_path / "reports/inspect").glob("*.png"))
    assert pictures == [
        "anchors.png",
        "anchors_per_level.png",
        "class_distribution.png",
        "mini_mask_round_trip.png",
        "samples.png",
    ]
    for name in pictures:
        with Image.open(tmp_path / "reports/inspect" / name) as im:
            assert im.size[0] > 100 and im.mode == "RGB"
    summary = json.loads((tmp_path / "reports/inspect/summary.json").read_text())
    assert summary["mini_mask"]["iou"] > 0.9
    assert summary["anchors"]["positive"] >= 1
    # the model section's anchors (shapes_small at 96 px), not a second definition
    expected = presets.shapes_small(image_size=96).anchors.sizes
    assert summary["anchors"]["sizes"] == list(expected)

    # a source without a train split: the old train shards must not outlive it
    (tmp_path / "data/raw/shapes/annotations/instances_train.json").unlink()
    shards.main([])
    assert not (tmp_path / "data/shards/train").exists()
    assert (tmp_path / "data/shards/val/manifest.json").is_file()


def test_label_anchors_thresholds_and_best_anchor():
    anchors = torch.tensor(
        [[0, 0, 10, 10], [0, 0, 10, 12], [0, 0, 20, 20], [50, 50, 60, 60], [100, 100, 105, 140]],
        dtype=torch.float32,
    )
    gt = torch.tensor([[0, 0, 10, 10], [100, 100, 130, 130]], dtype=torch.float32)
    cfg = presets.shapes_small()  # rpn.fg_iou_thresh 0.7, bg_iou_thresh 0.3
    assert (cfg.rpn.fg_iou_thresh, cfg.rpn.bg_iou_thresh) == (0.7, 0.3)
    labels = label_anchors(anchors, gt, cfg)
    # IoU with gt0: 1, 0.83, 0.25, 0; gt1's best anchor has IoU 150/1050 < 0.3 but is positive
    assert labels.tolist() == [1, 1, 0, 0, 1]
    assert label_anchors(anchors, torch.zeros((0, 4)), cfg).tolist() == [0] * 5
    # The thresholds are the model section's: at fg 0.9 the 0.83 anchor is no longer positive.
    strict = cfg.replace(rpn={"fg_iou_thresh": 0.9})
    assert label_anchors(anchors, gt, strict).tolist() == [1, -1, 0, 0, 1]
    np.testing.assert_array_equal(labels.numpy().dtype, np.int8)
