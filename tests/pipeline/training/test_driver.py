"""The training driver without training: resource checks, run names, attempts, MLflow run."""

from __future__ import annotations

import mlflow
import pytest

from mrcnn import presets
from mrcnn.data import ShardDataset
from pipeline.train_params import TrainParams
from pipeline.training import driver
from tests.pipeline.registry_helpers import fresh_store
from tests.pipeline.tiny_model import TINY_MODEL


def test_use_gpu_without_gpus_says_what_ray_sees():
    params = TrainParams(use_gpu=True, num_workers=2, cpus_per_worker=1)
    with pytest.raises(driver.ClusterResourceError) as e:
        driver.check_resources(params, {"CPU": 8.0, "memory": 1e9})
    assert "Ray sees 8 CPUs and 0 GPUs" in str(e.value)
    assert "train.use_gpu: false" in str(e.value)
    with pytest.raises(
        driver.ClusterResourceError, match="num_workers 2, but Ray sees 8 CPUs and 1"
    ):
        driver.check_resources(params, {"CPU": 8.0, "GPU": 1.0})
    driver.check_resources(params, {"CPU": 8.0, "GPU": 2.0})  # enough


def test_more_cpus_than_the_cluster_has_fails():
    params = TrainParams(num_workers=3, cpus_per_worker=2)
    with pytest.raises(driver.ClusterResourceError, match=r"= 6 CPUs, but Ray sees 4 CPUs"):
        driver.check_resources(params, {"CPU": 4.0})
    driver.check_resources(params, {"CPU": 6.0})


def test_run_label_follows_the_data_source_and_preset():
    manifest = {"source": {"images": "/p/data/raw/local/train"}}
    assert driver.data_source(manifest) == "local"
    assert driver.default_run_label(manifest, "torchvision_r50_fpn") == "local-torchvision-r50-fpn"
    assert driver.data_source({}) == "data"
    cfg = presets.shapes_small(num_classes=4, image_size=64, **TINY_MODEL)
    name = driver.run_name(TrainParams(run_name="local-shapes-small"), cfg, manifest)
    assert name.startswith("local-shapes-small-") and len(name) == len("local-shapes-small-") + 8


def test_attempts_add_up(tmp_path):
    assert driver.read_attempts(tmp_path) == []
    driver.record_attempt(tmp_path, 12.34, "failed")
    attempts = driver.record_attempt(tmp_path, 5.0, "finished")
    assert attempts == [{"wall_s": 12.3, "status": "failed"}, {"wall_s": 5.0, "status": "finished"}]
    assert driver.read_attempts(tmp_path) == attempts


def test_mlflow_run_is_named_after_the_dvc_experiment(tmp_path, tiny_shards, monkeypatch):
    uri = fresh_store(tmp_path)
    train_set = ShardDataset(tiny_shards / "train")
    cfg = presets.shapes_small(num_classes=4, image_size=64, **TINY_MODEL)
    params = TrainParams(run_name="shapes-shapes-small")
    name = driver.run_name(params, cfg, train_set.manifest)
    plain = driver.mlflow_run(tmp_path / "a", name, params, cfg, train_set, "e", uri)
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-lobe")
    in_exp = driver.mlflow_run(tmp_path / "b", name, params, cfg, train_set, "e", uri)
    client = mlflow.MlflowClient(uri)
    assert client.get_run(plain).info.run_name == name
    assert client.get_run(plain).data.tags["data.source"] == "shapes"
    assert "dvc.experiment" not in client.get_run(plain).data.tags
    assert client.get_run(in_exp).info.run_name == "bushy-lobe"
    assert client.get_run(in_exp).data.tags["dvc.experiment"] == "bushy-lobe"
