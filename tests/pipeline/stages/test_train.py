"""The train stage under Ray Train: DDP agreement, worker death, restart by name, NaN stop."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from ray.train import TrainingFailedError

from mrcnn import presets, weights
from mrcnn.data import ShardDataset, read_class_map
from mrcnn.modeling.model import build_model
from pipeline.params import Params
from pipeline.stages.train import TrainPaths, run
from pipeline.tracking.store import Tracking
from pipeline.train_params import TrainParams
from pipeline.training.checkpoints import NonFiniteLossError, load_state
from tests.pipeline.tiny_model import TINY_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


MODEL = {"preset": "shapes_small", **TINY_MODEL}  # the model section


def _cfg():
    return presets.shapes_small(num_classes=4, image_size=64, **TINY_MODEL)


def _train(tmp_path: Path, shards: Path, **overrides):
    # The schedule is given at the global batch, so every test runs 6 iterations whatever the
    # worker count (a larger global batch would scale the iteration count down).
    workers = overrides.get("num_workers", 1)
    params = TrainParams(
        **{
            "num_workers": 1,
            "cpus_per_worker": 1,
            "batch_size": 2,
            "reference_batch": 2 * workers,
            "iterations": 6,
            "checkpoint_every": 3,
            "log_every": 2,
            "warmup_iters": 2,
            "max_gt": 8,
            "run_name": "t",
            "storage_path": str(tmp_path / "runs"),
            **overrides,
        }
    )
    paths = TrainPaths(
        shards=shards,
        model_dir=tmp_path / "models/final",
        metrics=tmp_path / "metrics/train.json",
        run_info=tmp_path / "metrics/train_run.json",
        reports=tmp_path / "reports/train",
        storage=tmp_path / "runs",
        tracking=Tracking(f"sqlite:///{tmp_path}/mlflow.db", "test"),
    )
    return run(Params(train=params, model=MODEL), paths), paths.tracking.uri


def test_two_workers_end_with_identical_weights(tmp_path, tiny_shards):
    summary, uri = _train(tmp_path, tiny_shards, num_workers=2)
    ckpt = Path(summary["checkpoint"])
    digests = {p.name: p.read_text() for p in ckpt.glob("weights_rank*.sha256")}
    assert sorted(digests) == ["weights_rank0.sha256", "weights_rank1.sha256"]
    assert len(set(digests.values())) == 1
    # ... and they moved away from the initial weights (same seed as the loop): training happened.
    state = load_state(ckpt / "state.pt")
    assert state["iteration"] == 6
    torch.manual_seed(TrainParams().seed)
    initial = build_model(_cfg()).state_dict()
    moved = [
        k
        for k, v in state["model"].items()
        if v.is_floating_point() and not torch.equal(v, initial[k])
    ]
    assert "roi_heads.mask_head.predictor.weight" in moved or len(moved) > len(initial) // 2
    # The outputs of the stage: metrics only in train.json, the run's identity beside it.
    metrics = json.loads((tmp_path / "metrics/train.json").read_text())
    assert metrics["iterations"] == 6 and "mlflow_run_id" not in metrics
    # the model folder records the preset the model section named (what export describes)
    assert weights.read_meta(tmp_path / "models/final")["preset"] == "shapes_small"
    run_file = json.loads((tmp_path / "metrics/train_run.json").read_text())
    assert run_file["mlflow_run_id"] == summary["mlflow_run_id"]
    assert (tmp_path / "models/final/model.safetensors").is_file()
    csv = (tmp_path / "reports/train/losses.csv").read_text().splitlines()
    assert csv[0].startswith("step,loss") and len(csv) == 1 + 3  # steps 2, 4, 6
    assert (tmp_path / "reports/train/losses.png").is_file()
    run_info = mlflow.MlflowClient(uri).get_run(summary["mlflow_run_id"])
    assert run_info.data.params["train.num_workers"] == "2"
    logged = run_info.data.metrics
    assert "train/loss_mask" in logged and "train/perf/images_per_s" in logged


def test_a_killed_worker_is_replaced_and_resumes_from_the_checkpoint(
    tmp_path, tiny_shards, inject_fault
):
    marker = tmp_path / "killed"
    inject_fault({"kill": {"rank": 1, "iteration": 4, "marker": str(marker)}})
    summary, _ = _train(tmp_path, tiny_shards, num_workers=2, max_failures=1)
    assert marker.exists()  # the worker really died at iteration 4
    assert summary["iterations"] == 6 and summary["resumes"] == 1


def test_restart_with_the_same_name_resumes_iterations_and_mlflow_run(
    tmp_path, tiny_shards, inject_fault
):
    marker = tmp_path / "killed"
    inject_fault({"kill": {"rank": 0, "iteration": 4, "marker": str(marker)}})
    with pytest.raises(TrainingFailedError):  # the only worker dies after checkpoint 3
        _train(tmp_path, tiny_shards, max_failures=0)
    assert marker.exists()
    first_run = json.loads(next((tmp_path / "runs").glob("t-*/mlflow_run.json")).read_text())
    summary, uri = _train(tmp_path, tiny_shards, max_failures=0)  # same params -> same name
    assert summary["resumes"] == 1 and summary["iterations"] == 6
    assert summary["mlflow_run_id"] == first_run["run_id"]
    steps = [
        m.step
        for m in mlflow.MlflowClient(uri).get_metric_history(first_run["run_id"], "train/loss")
    ]
    assert 2 in steps and 6 in steps  # one curve across both attempts
    # A different recipe is a different run, trained from scratch.
    other, _ = _train(tmp_path, tiny_shards, lr=2e-3)
    assert other["run_name"] != summary["run_name"] and other["resumes"] == 0


def test_non_finite_loss_stops_with_the_iteration_and_keeps_the_checkpoint(
    tmp_path, tiny_shards, inject_fault
):
    inject_fault({"nan_iteration": 4})
    with pytest.raises(NonFiniteLossError, match="iteration 4"):
        _train(tmp_path, tiny_shards)
    ckpts = [d for d in (tmp_path / "runs").glob("t-*/checkpoint_*") if d.is_dir()]
    assert len(ckpts) == 1
    assert load_state(ckpts[0] / "state.pt")["iteration"] == 3
    assert not (tmp_path / "models/final").exists()


def test_final_model_loads_and_detects(tmp_path, tiny_shards):
    from mrcnn.weights import load

    _train(tmp_path, tiny_shards, iterations=3)
    model = load(tmp_path / "models/final")
    sample = ShardDataset(tiny_shards / "val")[0]
    dets = model.detect([sample.image])
    assert dets[0].masks.shape[1:] == (64, 64)
    meta = json.loads((tmp_path / "models/final/config.json").read_text())
    assert read_class_map(meta["class_map"]) == ShardDataset(tiny_shards / "train").class_map
    assert meta["class_map"]["1"] == {"category_id": 1, "name": "square"}
    assert torch.is_tensor(next(iter(model.state_dict().values())))
