"""A sweep on the two-node cluster (`tests/ray_services.py`, the session's `ray_cluster`) that
loses a node: `python -m pipeline.tune` joins through RAY_ADDRESS with the Tune storage, every
trial's checkpoints and the shards in S3 (moto) and the trials logging to an SQLite MLflow store
(one file of this machine, which every node here reaches; a real cluster uses the tracking
server of tests/pipeline/test_server.py). Two trials of one CPU each on two one-CPU nodes run
one per node; once each has a checkpoint in S3, the node that is not the head is SIGKILLed
(its whole process tree) and a replacement joins. The trial that lost its worker resumes from
its checkpoint (Ray Train's `train.max_failures`, or Tune's `tune.max_failures` when the trial's
driver died with the node) and the sweep completes.

Works whichever node joined last (the node-kill test of tests/pipeline/test_cluster.py leaves a
replacement): the node to kill is found by the node id its trial recorded."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from mrcnn.data import storage
from tests.pipeline.sweep.test_entry import MODEL, TRAIN

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
ITERATIONS = 16
INTERVAL = 2  # tune.eval_every: each trial's validation and checkpoint interval


def _project(tmp_path: Path, bucket: str) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    doc = {
        "model": MODEL,
        "train": {**TRAIN, "log_every": 1, "max_failures": 2},
        "tune": {
            "name": "cluster",
            "scheduler": "fifo",
            "num_samples": 1,
            "metric": "loss",
            "mode": "min",
            "iterations": ITERATIONS,
            "eval_every": INTERVAL,
            "eval_images": 2,
            "max_failures": 2,  # a trial whose driver died with the node is restarted
            "max_concurrent_trials": 2,
            "space": {"train.lr": {"grid": [3.0e-3, 1.0e-3]}},
            "storage_path": f"{bucket}/tune",
            "out_dir": "sweeps",
        },
        "mlflow": {"tracking_uri": f"sqlite:///{project}/mlflow.db", "experiment": "sweeps"},
    }
    (project / "params.yaml").write_text(yaml.safe_dump(doc))
    return project


CHECKPOINT_FILES = {"node_rank0.txt", "rng_rank0.pt", "state.pt"}  # one worker per trial


def _checkpoint_nodes(s3_server, bucket: str) -> dict[str, dict[str, str]]:
    """{trial dir: {checkpoint folder: node id of rank 0}} of the checkpoints wholly in S3 now
    (Ray uploads a checkpoint's files one by one)."""
    prefix = "tune/cluster/train/"
    client = s3_server.client()
    files: dict[tuple[str, str], set[str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            parts = o["Key"].removeprefix(prefix).split("/")
            if len(parts) == 3 and parts[1].startswith("checkpoint_"):
                files.setdefault((parts[0], parts[1]), set()).add(parts[2])
    found: dict[str, dict[str, str]] = {}
    for (trial, folder), names in files.items():
        if names >= CHECKPOINT_FILES:
            key = f"{prefix}{trial}/{folder}/node_rank0.txt"
            node = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            found.setdefault(trial, {})[folder] = node
    return found


def test_a_sweep_survives_a_lost_node(ray_cluster, s3_shards, s3_bucket, s3_server, tmp_path):
    started = time.monotonic()
    bucket = s3_bucket.removeprefix("s3://")
    project = _project(tmp_path, s3_bucket)
    log = project / "tune.log"
    env = {
        **os.environ,
        **ray_cluster.client_env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    argv = ["-m", "pipeline.tune", "--params", "params.yaml", "--shards", s3_shards]
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=project,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    head = ray_cluster.head.node_id()
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            before = _checkpoint_nodes(s3_server, bucket)
            if len(before) == 2:  # both trials have a checkpoint (with its node) in S3
                break
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint of both trials in S3: " + log.read_text()[-3000:])
        placed = {trial: next(iter(nodes.values())) for trial, nodes in before.items()}
        victim = next(n for n in ray_cluster.nodes if n.node_id() in placed.values())
        assert set(placed.values()) == {head, victim.node_id()}  # one trial on each node
        lost = next(t for t, node in placed.items() if node == victim.node_id())
        victim.kill()
        ray_cluster.nodes.remove(victim)
        ray_cluster.add_node({"node_b": 1})
        proc.wait(900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log.read_text()[-5000:]

    summary = json.loads((project / "sweeps" / "cluster" / "summary.json").read_text())
    trials = {f"trial-{t['trial_id']}": t for t in summary["trials"]}
    assert sorted(trials) == sorted(placed) and summary["failed"] == []
    assert all(t["status"] == "completed" and t["iteration"] == ITERATIONS for t in trials.values())

    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    retrained, resumes = {}, {}
    for name, trial in trials.items():
        checkpoints = _checkpoint_nodes(s3_server, bucket)[name]
        last = max(checkpoints)  # Ray names them by time
        url = f"{s3_bucket}/tune/cluster/train/{name}/{last}"
        state = torch.load(
            io.BytesIO(storage.read_bytes(f"{url}/state.pt")), map_location="cpu", weights_only=True
        )
        assert state["iteration"] == ITERATIONS
        if name == lost:  # resumed from its checkpoint on a live node
            assert state["resumes"] >= 1 and checkpoints[last] != victim.node_id()
        run_id = trial["mlflow_run_id"]
        run = client.get_run(run_id)  # ended by the sweep, with no error of a lost attempt
        assert run.info.status == "FINISHED" and run.data.tags["tune.status"] == "completed"
        assert "tune.error" not in run.data.tags
        steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
        assert sorted(set(steps)) == list(range(1, ITERATIONS + 1))
        val = [m.step for m in client.get_metric_history(run_id, "val/segm_AP")]
        assert sorted(set(val)) == list(range(INTERVAL, ITERATIONS + 1, INTERVAL))
        # Steps trained again after the restore (since its last checkpoint) are logged again:
        # at most one checkpoint interval of them, and one validation.
        retrained[name] = (len(steps) - ITERATIONS, len(val) - ITERATIONS // INTERVAL)
        assert retrained[name][0] <= INTERVAL and retrained[name][1] <= 1
        resumes[name] = state["resumes"]
    print(
        f"sweep on two nodes, node of {lost} killed: steps logged twice (train/loss, "
        f"val/segm_AP) {retrained}, resumes {resumes}, {time.monotonic() - started:.0f} s"
    )
