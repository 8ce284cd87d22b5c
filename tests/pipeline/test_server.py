"""The team tracking server (`python -m pipeline.server`): its command line, and the real thing
on a throwaway PostgreSQL with artifacts in S3 (tests/services.py), logged to over HTTP by
several processes at once, then a registered model pulled by alias through it."""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from pipeline import server
from tests import services

PG = "postgresql://mlflow:s3cret@db.lan:5432/mlflow"


def _command(argv: list[str], environ: dict[str, str]) -> server.ServerCommand:
    return server.build_command(server.parser().parse_args(argv), environ)


def test_command_binds_locally_and_keeps_the_password_out_of_argv():
    cmd = _command(["--artifacts-destination", "s3://team/mlflow"], {server.BACKEND_ENV: PG})
    assert cmd.argv[1:] == [
        "-m",
        "mlflow",
        "server",
        "--serve-artifacts",
        "--artifacts-destination",
        "s3://team/mlflow",
        "--host",
        "127.0.0.1",
        "--port",
        "5000",
        "--workers",
        "4",
        "--uvicorn-opts",
        "--timeout-worker-healthcheck 60",
    ]
    assert "s3cret" not in " ".join(cmd.argv)
    assert cmd.env == {server.BACKEND_ENV: PG} and cmd.auth_config is None


def test_command_for_a_team(tmp_path):
    cmd = _command(
        [
            "--backend-store-uri",
            PG,
            "--artifacts-destination",
            str(tmp_path / "art"),
            "--host",
            "0.0.0.0",
            "--port",
            "5005",
            "--workers",
            "8",
            "--allowed-hosts",
            "mlflow.team.lan,10.0.0.5:5005",
            "--auth",
            "--auth-dir",
            str(tmp_path / "auth"),
        ],
        {"MLFLOW_AUTH_ADMIN_PASSWORD": "first-password"},
    )
    i = cmd.argv.index("--artifacts-destination")
    assert cmd.argv[i + 1] == str(tmp_path / "art")
    assert cmd.argv[cmd.argv.index("--workers") + 1] == "8"
    assert cmd.argv[-4:] == [
        "--allowed-hosts",
        "mlflow.team.lan,10.0.0.5:5005",
        "--app-name",
        "basic-auth",
    ]
    ini = cmd.auth_config
    assert cmd.env["MLFLOW_AUTH_CONFIG_PATH"] == str(ini)
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600  # it holds the database password
    assert f"database_uri = {PG}\n" in ini.read_text()
    assert "default_permission = NO_PERMISSIONS\n" in ini.read_text()  # secure by default
    assert "auth_cache_ttl_seconds = 0\n" in ini.read_text()  # a changed password counts at once
    assert ini.parent == tmp_path / "auth" and stat.S_IMODE(ini.parent.stat().st_mode) == 0o700
    # The Flask secret key: generated once into a 0600 file beside the config, handed to MLflow
    # through the environment; never argv.
    key_file = tmp_path / "auth" / server.SECRET_FILE
    key = cmd.env[server.SECRET_ENV]
    assert len(key) >= 32 and key_file.read_text().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key not in " ".join(cmd.argv) and key not in cmd.secret_source
    assert cmd.secret_source == f"{key_file} (generated now)"


def test_secret_key_from_the_environment_or_kept_across_starts(tmp_path):
    argv = ["--artifacts-destination", "/a", "--auth", "--auth-dir", str(tmp_path / "auth")]
    environ = {server.BACKEND_ENV: PG, "MLFLOW_AUTH_ADMIN_PASSWORD": "first-password"}
    first = _command(argv, environ)
    again = _command(argv, environ)  # a restart: the same key, so sessions and forms survive
    assert again.env[server.SECRET_ENV] == first.env[server.SECRET_ENV]
    assert again.secret_source == str(tmp_path / "auth" / server.SECRET_FILE)
    given = _command(argv, {**environ, server.SECRET_ENV: "from-the-vault"})
    assert given.env[server.SECRET_ENV] == "from-the-vault"
    assert given.secret_source == server.SECRET_ENV
    (tmp_path / "auth" / server.SECRET_FILE).chmod(0o644)
    with pytest.raises(server.ServerConfigError, match="readable by other users"):
        _command(argv, environ)
    (tmp_path / "auth").chmod(0o755)
    with pytest.raises(server.ServerConfigError, match="open to other users"):
        _command(argv, environ)


@pytest.mark.parametrize(
    "argv, environ, message",
    [
        (["--artifacts-destination", "/a"], {}, "no backend store: set MLFLOW_BACKEND_STORE_URI"),
        (
            ["--backend-store-uri", "http://x:5000", "--artifacts-destination", "/a"],
            {},
            "is not a database URL",
        ),
        ([], {server.BACKEND_ENV: PG}, "no artifact store"),
        (
            ["--artifacts-destination", "/a", "--host", "0.0.0.0"],
            {server.BACKEND_ENV: PG},
            "also pass --allowed-hosts",
        ),
        (
            ["--artifacts-destination", "/a", "--auth"],
            {server.BACKEND_ENV: PG},
            "MLFLOW_AUTH_ADMIN_PASSWORD",
        ),
        (
            ["--artifacts-destination", "/a", "--auth"],
            {server.BACKEND_ENV: PG, "MLFLOW_AUTH_ADMIN_PASSWORD": "short"},
            "shorter than 12 characters",
        ),
    ],
)
def test_command_errors_say_what_to_set(argv, environ, message):
    with pytest.raises(server.ServerConfigError, match=message):
        _command(argv, environ)


TRIAL = textwrap.dedent(
    """
    import sys, mlflow
    uri, experiment_id, parent, k, steps = sys.argv[1:6]
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"trial-{k}",
                          parent_run_id=parent) as run:
        mlflow.log_param("lr", 0.01 * (int(k) + 1))
        for step in range(int(steps)):  # one HTTP request per value, as training logs them
            mlflow.log_metric("loss", 1.0 / (step + 1) + int(k), step=step)
        mlflow.log_text(f"trial {k}", "notes/trial.txt")
        print("RUN_ID=" + run.info.run_id)
    """
)


@pytest.fixture(scope="module")
def tracking_server(postgres, s3_server, tmp_path_factory):
    """`python -m pipeline.server` on the PostgreSQL fixture, artifacts to s3://mlflow-art."""
    bucket = s3_server.make_bucket("mlflow-art")
    mlflow_server = services.start_mlflow_server(
        postgres.url, f"{bucket}/mlflow", tmp_path_factory.mktemp("mlflow-server")
    )
    try:
        yield mlflow_server.uri, bucket
    finally:
        mlflow_server.stop()


@pytest.mark.slow
def test_concurrent_trials_over_http_lose_nothing(tracking_server, s3_server):
    import mlflow
    from mlflow import MlflowClient

    uri, bucket = tracking_server
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("sweep-concurrency")
    parent = client.create_run(experiment_id, run_name="sweep").info.run_id
    steps = 30
    started = time.monotonic()
    trials = [
        subprocess.Popen(
            [sys.executable, "-c", TRIAL, uri, experiment_id, parent, str(k), str(steps)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    run_ids = []
    for p in trials:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        run_ids.append(next(x[7:] for x in out.splitlines() if x.startswith("RUN_ID=")))
    client.set_terminated(parent)
    print(f"4 trials x {steps} metric requests in {time.monotonic() - started:.1f} s")

    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_id for r in children) == sorted(run_ids)
    for k, run_id in enumerate(run_ids):
        history = client.get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(steps))  # none lost, none doubled
        assert {m.step: m.value for m in history}[steps - 1] == pytest.approx(1 / steps + k)
        run = client.get_run(run_id)
        assert run.data.params == {"lr": str(0.01 * (k + 1))}
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/notes/trial.txt")
        assert text == f"trial {k}"
    # ... and the artifacts are objects in the bucket, under the server's prefix.
    listed = s3_server.client().list_objects_v2(Bucket=bucket.removeprefix("s3://"))
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert sum(k.endswith("/notes/trial.txt") for k in keys) == 4
    assert all(k.startswith("mlflow/") for k in keys)


@pytest.mark.slow
def test_registered_model_pulled_by_alias_through_the_server(tracking_server, tmp_path):
    import mlflow

    from mrcnn import weights
    from pipeline import predict_model
    from pipeline.tracking import registry
    from tests.pipeline.registry_helpers import save_model, tiny_model

    uri, _ = tracking_server
    mlflow.set_tracking_uri(uri)
    model = tiny_model(seed=3)
    saved = save_model(model, tmp_path / "final")
    mlflow.set_experiment("registry-over-http")
    with mlflow.start_run():
        info = registry.log_model(saved)
    version = registry.register("tiny-http", info.model_uri, {"metrics.segm_AP": "0.5"})
    alias, previous = registry.assign_alias("tiny-http", version, "segm_AP", 0.5)
    assert (alias, previous) == ("champion", None)

    pulled, source = predict_model.resolve_model("models:/tiny-http@champion", uri, tmp_path / "dl")
    assert source["version"] == int(version) and source["alias"] == "champion"
    again = weights.load(pulled)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert Path(pulled).is_relative_to(tmp_path / "dl")


@pytest.mark.slow
def test_a_ray_tune_sweep_logs_every_trial_over_http(
    tracking_server, tiny_shards, ray_s3, tmp_path
):
    """A real 4-trial Ray Tune sweep (`pipeline.sweep.entry.run`, 2 trials at a time) whose
    trials' rank-0 workers log to the server concurrently: each trial's MLflow history holds
    exactly what the trial reported to Tune (its result.json), under the sweep's parent run."""
    import json
    from dataclasses import replace

    import yaml
    from mlflow import MlflowClient

    from mrcnn.data import ShardDataset
    from pipeline.params import MlflowParams
    from pipeline.sweep.config import load_sweep
    from pipeline.sweep.entry import run
    from tests.pipeline.sweep.test_entry import MODEL, TRAIN

    uri, _ = tracking_server
    iterations = 4
    section = {
        "name": "http",
        "scheduler": "fifo",
        "num_samples": 2,
        "metric": "loss",
        "mode": "min",
        "iterations": iterations,
        "eval_every": 2,
        "eval_images": 2,
        "space": {"train.lr": {"grid": [3.0e-3, 1.0e-3]}},
    }
    doc = {"model": MODEL, "train": {**TRAIN, "log_every": 1}, "tune": section}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    manifest = ShardDataset(tiny_shards / "train").manifest
    dataset = {
        "num_classes": manifest["num_classes"],
        "image_size": manifest["image_size"],
        "class_names": tuple(manifest["class_names"]),
    }
    tp, sweep = load_sweep(tmp_path / "params.yaml", dataset)
    sweep = replace(sweep, shards=str(tiny_shards), tracking_uri=uri)
    summary = run(
        tp,
        sweep,
        MlflowParams(experiment="sweep-over-http"),
        storage=tmp_path / "tune",
        out_dir=tmp_path / "sweeps",
        params_doc=doc,
    )

    trials = summary["trials"]
    assert len(trials) == 4 and summary["failed"] == []
    client = MlflowClient(uri)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    by_trial = {r.data.tags["trial_id"]: r for r in children}
    assert sorted(by_trial) == sorted(t["trial_id"] for t in trials)
    for t in trials:
        run_id = by_trial[t["trial_id"]].info.run_id
        assert run_id == t["mlflow_run_id"] and t["iteration"] == iterations
        # What the trial reported to Tune, one JSON line per report, written by Ray.
        result = tmp_path / "tune" / "http" / f"trial-{t['trial_id']}" / "result.json"
        reports = [json.loads(line) for line in result.read_text().splitlines()]
        reported = {r["iteration"]: r["segm_AP"] for r in reports}
        assert sorted(reported) == [2, 4]
        logged = client.get_metric_history(run_id, "val/segm_AP")
        assert {m.step: m.value for m in logged} == reported and len(logged) == len(reported)
        losses = client.get_metric_history(run_id, "train/loss")  # every iteration (log_every 1)
        assert sorted(m.step for m in losses) == list(range(1, iterations + 1))
