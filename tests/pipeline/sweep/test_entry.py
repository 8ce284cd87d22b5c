"""pipeline.sweep (`python -m pipeline.tune`): real sweeps of tiny trials (Ray Tune + Ray Train
+ MLflow) on the tiny shards."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import yaml

from mrcnn.data import ShardDataset
from pipeline.params import MlflowParams
from pipeline.sweep.config import load_sweep
from pipeline.sweep.entry import run
from tests.pipeline.tiny_model import TINY_MODEL

pytestmark = pytest.mark.slow

MODEL = {"preset": "shapes_small", **TINY_MODEL}
TRAIN = {
    "num_workers": 1,
    "cpus_per_worker": 1,
    "batch_size": 2,
    "reference_batch": 2,
    "warmup_iters": 0,
    "max_gt": 8,
    "log_every": 2,
}


@pytest.fixture(scope="module")
def ray_state_api(fault_file):
    """A local Ray with its dashboard, as `pipeline.tune` starts it: Ray Train V2 frees the
    workers of a trial that ASHA stopped through the state API. Replaces a session Ray started
    without it (the ray_session fixture's)."""
    ray = pytest.importorskip("ray")
    from pipeline.training.runtime import check_state_api, init_ray

    if ray.is_initialized():
        try:
            check_state_api()
        except RuntimeError:
            ray.shutdown()
    init_ray(num_cpus=2)
    yield ray


def _sweep(tmp_path: Path, shards: Path, tune_section: dict, name: str = "t"):
    doc = {"model": MODEL, "train": TRAIN, "tune": {"name": name, **tune_section}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    manifest = ShardDataset(shards / "train").manifest
    dataset = {
        "num_classes": manifest["num_classes"],
        "image_size": manifest["image_size"],
        "class_names": tuple(manifest["class_names"]),
    }
    tp, sweep = load_sweep(path, dataset)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = replace(sweep, shards=str(shards), tracking_uri=uri)
    summary = run(
        tp,
        sweep,
        MlflowParams(experiment="sweeps"),
        storage=tmp_path / "runs",
        out_dir=tmp_path / "sweeps",
        params_doc=doc,
    )
    return summary, uri, sweep


def _runs(uri: str, parent_id: str):
    client = mlflow.MlflowClient(uri)
    parent = client.get_run(parent_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
    )
    return client, parent, {r.data.tags["trial_id"]: r for r in children}


def test_asha_sweep_of_four_trials_stops_the_bad_ones(tmp_path, tiny_shards, ray_state_api):
    # lr 1e-9 cannot learn in 12 iterations, 3e-3 can: grid x 2 samples = good, bad, good, bad,
    # two at a time on the 2-CPU Ray; the score threshold (inference only) leaves the losses of
    # equal-lr trials equal. ASHA's rung at iteration 6 (reduction factor 2: below the median
    # stops) has recorded trials 0 and 1 when trial 3 (bad) reaches it, whatever the timing, so
    # at least trial 3 stops. Single-batch loss is the metric here because the val AP of
    # 12-iteration models is 0 for all of them (a tie stops nothing).
    section = {
        "num_samples": 2,
        "metric": "loss",
        "mode": "min",
        "grace_period": 6,
        "iterations": 12,
        "eval_every": 3,
        "eval_images": 2,
        "space": {
            "train.lr": {"grid": [3.0e-3, 1.0e-9]},
            "model.inference.score_thresh": {"uniform": [0.05, 0.5]},
        },
    }
    summary, uri, sweep = _sweep(tmp_path, tiny_shards, section)

    trials = summary["trials"]
    assert len(trials) == 4 and summary["failed"] == []
    stopped = [t for t in trials if t["status"] == "stopped_early"]
    assert stopped, trials
    for t in stopped:
        assert t["iteration"] < t["planned_iterations"] == 12
        assert t["values"]["train.lr"] == 1.0e-9
    assert all(t["iteration"] == 12 for t in trials if t["status"] == "completed")
    assert summary["best"]["params"]["train.lr"] == 3.0e-3

    # MLflow: the parent and 4 nested runs with their params, curves and status.
    client, parent, children = _runs(uri, summary["parent_run_id"])
    assert parent.info.run_name == "sweep-t" and parent.info.status == "FINISHED"
    assert sorted(children) == sorted(t["trial_id"] for t in trials)
    for t in trials:
        run = children[t["trial_id"]]
        assert float(run.data.params["train.lr"]) == t["values"]["train.lr"]
        assert run.data.params["train.iterations"] == "12"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert steps and max(steps) >= t["iteration"]  # a stopped trial runs on till killed
        assert "val/segm_AP" in run.data.metrics and "train/summary/loss" in run.data.metrics
        assert run.data.tags["tune.status"] == t["status"]
        want = {"completed": "FINISHED", "stopped_early": "KILLED"}[t["status"]]
        assert run.info.status == want
    assert parent.data.tags["best.trial_id"] == summary["best"]["trial_id"]
    assert parent.data.metrics["sweep/stopped_early"] == len(stopped)
    artifacts = {f.path for f in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/best_params.yaml", "sweep/sweep.png", "sweep/trials.csv"} <= artifacts

    # The best config file: only the swept keys, nested as in params.yaml, inside the space.
    out = tmp_path / "sweeps" / "t"
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    score = best["model"]["inference"]["score_thresh"]
    assert best == {"train": {"lr": 3.0e-3}, "model": {"inference": {"score_thresh": score}}}
    values = {"train.lr": best["train"]["lr"], "model.inference.score_thresh": score}
    assert sweep.space.contains(values)
    assert values == summary["best"]["params"]
    command = summary["dvc_command"]  # keys the params lack are added: ++
    assert command.startswith("dvc exp run -S ") and "-S ++train.lr=0.003" in command
    assert f"-S ++model.inference.score_thresh={score!r}" in command
    assert command in (out / "best_params.yaml").read_text()
    assert len((out / "trials.csv").read_text().splitlines()) == 1 + 4
    assert (out / "sweep.png").stat().st_size > 10_000


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_shards, ray_state_api):
    # Each value is valid alone (checked when the sweep starts); fg 0.5 with bg 0.6 is not,
    # and only the trial that draws it can tell.
    section = {
        "scheduler": "fifo",
        "num_samples": 1,
        "iterations": 2,
        "eval_every": 2,
        "eval_images": 2,
        "space": {
            "model.rpn.fg_iou_thresh": {"grid": [0.5]},
            "model.rpn.bg_iou_thresh": {"grid": [0.3, 0.6]},
        },
    }
    summary, uri, _ = _sweep(tmp_path, tiny_shards, section, name="f")
    by_status = {t["status"]: t for t in summary["trials"]}
    assert sorted(by_status) == ["completed", "failed"]
    failed = by_status["failed"]
    assert summary["failed"] == [failed["trial_id"]]
    assert failed["values"]["model.rpn.bg_iou_thresh"] == 0.6
    assert "bg_iou_thresh" in failed["error"]
    assert summary["best"]["trial_id"] == by_status["completed"]["trial_id"]

    client, _, children = _runs(uri, summary["parent_run_id"])
    assert children[failed["trial_id"]].info.status == "FAILED"
    assert "bg_iou_thresh" in children[failed["trial_id"]].data.tags["tune.error"]
    assert children[by_status["completed"]["trial_id"]].info.status == "FINISHED"
    trials_md = (tmp_path / "sweeps" / "f" / "trials.md").read_text()
    assert "| failed |" in trials_md

    # The same command again restores the finished experiment: nothing reruns, same parent.
    again, _, _ = _sweep(tmp_path, tiny_shards, section, name="f")
    assert again["parent_run_id"] == summary["parent_run_id"]
    assert [t["trial_id"] for t in again["trials"]] == [t["trial_id"] for t in summary["trials"]]
    assert len(_runs(uri, summary["parent_run_id"])[2]) == 2
    # Other settings under the same name are refused rather than mixed in.
    section["iterations"] = 4
    with pytest.raises(ValueError, match="--fresh"):
        _sweep(tmp_path, tiny_shards, section, name="f")
