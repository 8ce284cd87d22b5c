"""The whole stages with a login, against the team tracking server started with `--auth` on
PostgreSQL (tests/pipeline/auth_server.py): what a team member runs (docs/cluster.md, section 4),
with the login only in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.

One chain for the module (`chain`): bob (EDIT on experiment `team`) runs `python -m
pipeline.train`, `evaluate`, `export` and `predict --model models:/NAME@champion` in a tiny
project. Training joins a Ray started before any login was set (the session's Ray, through
RAY_ADDRESS, as a driver joins a cluster), so rank 0 logs to MLflow only if the driver hands it
the login; every process's argv is sampled meanwhile. The refusals run in this process, each
before Ray is reached.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline import predict
from pipeline.stages import train
from pipeline.training import driver
from tests import REPO_ROOT
from tests.pipeline.auth_server import (
    ADMIN,
    BOB,
    CAROL,
    DAVE,
    LOGIN_VARIABLES,
    WRONG,
    ArgvSampler,
    assert_no_secret,
    grant,
    login_env,
    ok,
)
from tests.pipeline.tiny_model import TINY_MODEL

pytestmark = pytest.mark.slow

MODEL = "mrcnn-team"  # the registered model bob's export creates
STAGES = ("train", "evaluate", "export", "predict")
TINY = {
    "data": {
        "shapes": {"num_train": 16, "num_val": 6, "image_size": 64, "min_size": 6, "max_size": 14}
    },
    "model": {"preset": "shapes_small", **TINY_MODEL, "inference": {"score_thresh": 0.0}},
    "train": {
        "num_workers": 1,
        "cpus_per_worker": 1,
        "iterations": 4,
        "batch_size": 2,
        "reference_batch": 2,
        "warmup_iters": 1,
        "checkpoint_every": 4,
        "log_every": 2,
        "max_gt": 8,
        "run_name": "team",
    },
    "evaluate": {"num_overlays": 1},
    "export": {
        "registered_model": MODEL,
        "portable": False,  # the ONNX file is not what this file tests
        "champion_floor": -1.0,  # four iterations' AP may well be 0.0
    },
}


@pytest.fixture(scope="module")
def project(tiny_shards, auth_server, tmp_path_factory) -> Path:
    """A project on the tiny dataset whose params.yaml logs to experiment `team` of the auth
    server (secret.yaml to experiment `secret`, reader.yaml to `team` under another Ray run
    name); no login anywhere in it."""
    root = tmp_path_factory.mktemp("team_project")
    (root / "data").symlink_to(tiny_shards.parent)  # data/raw/shapes, data/shards
    for name, experiment in (("params", "team"), ("secret", "secret"), ("reader", "team")):
        doc = {**TINY, "mlflow": {"tracking_uri": auth_server.uri, "experiment": experiment}}
        doc["train"] = {**TINY["train"], "run_name": name}
        (root / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def dave(auth_server, team) -> tuple[str, str]:
    """A plain user the first admin makes, whom carol grants READ on experiment `team`: a
    teammate who reads the team's runs and models but does not train."""
    new_user = {"username": DAVE[0], "password": DAVE[1]}
    ok(auth_server.uri, "/api/2.0/mlflow/users/create", ADMIN, "POST", new_user)
    grant(auth_server.uri, "dave", "experiment", team["team"], "READ")
    return DAVE


@dataclass
class Chain:
    root: Path
    output: dict[str, str]  # stage -> its stdout + stderr
    argv: ArgvSampler  # every process's argv while the stages ran
    train_run: dict  # metrics/train_run.json
    started: float  # time.time() before the first stage


def _stage_commands(root: Path) -> dict[str, list[str]]:
    python = [sys.executable, "-m"]
    return {
        "train": [*python, "pipeline.train", "--params", "params.yaml"],
        "evaluate": [*python, "pipeline.evaluate", "--params", "params.yaml"],
        "export": [*python, "pipeline.export", "--params", "params.yaml"],
        "predict": [
            *python,
            "pipeline.predict",
            "--model",
            f"models:/{MODEL}@champion",
            "--input",
            "data/raw/shapes/val",
            "--out",
            "predictions",
        ],
    }


@pytest.fixture(scope="module")
def chain(project, auth_server, team, ray_session) -> Chain:
    """bob runs the four stages as commands, one after the other (each must succeed).

    Ray: the session's, started before any login was set, joined through RAY_ADDRESS, with Ray
    Train's run state on (RAY_TRAIN_ENABLE_STATE_TRACKING: its dashboard then shows each run's
    `train_loop_config`)."""
    env = login_env(BOB)
    env |= {
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO_ROOT), env.get("PYTHONPATH")))),
    }
    output, seconds, started = {}, {}, time.time()
    with ArgvSampler() as argv:
        for stage, command in _stage_commands(project).items():
            t0 = time.time()
            done = subprocess.run(
                command, cwd=project, env=env, capture_output=True, text=True, timeout=900
            )
            output[stage], seconds[stage] = done.stdout + done.stderr, time.time() - t0
            assert done.returncode == 0, f"{stage}:\n{output[stage][-4000:]}"
    train_run = json.loads((project / "metrics/train_run.json").read_text())
    print("stage seconds:", {k: round(v, 1) for k, v in seconds.items()})  # shown with -s
    return Chain(project, output, argv, train_run, started)


def test_bob_trains_evaluates_exports_and_pulls_the_champion(chain, auth_server, team):
    uri, run_id = auth_server.uri, chain.train_run["mlflow_run_id"]
    # carol (an admin) reads what bob's stages logged, through the API.
    run = ok(uri, f"/api/2.0/mlflow/runs/get?run_id={run_id}", CAROL)["run"]
    assert run["info"]["experiment_id"] == team["team"] and run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["train.status"] == "finished" and tags["ray_run"] == chain.train_run["run_name"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["train.iterations"] == "4"
    metrics = {m["key"] for m in run["data"]["metrics"]}
    assert {"train/summary/wall_s", "val/final/segm_AP", "val/final/bbox_AP"} <= metrics
    # rank 0 logged the loss on its Ray worker, signed in with the login the driver gave it
    history = ok(
        uri, f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=train/loss", CAROL
    )
    assert sorted(m["step"] for m in history["metrics"]) == [2, 4]
    for folder, expected in (("train", "train/losses.png"), ("evaluate", "evaluate/overlays.png")):
        listing = ok(uri, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path={folder}", CAROL)
        assert expected in {f["path"] for f in listing["files"]}, listing
    # export registered the model from bob's run and made it the champion ...
    champion = ok(
        uri, f"/api/2.0/mlflow/registered-models/alias?name={MODEL}&alias=champion", CAROL
    )
    assert champion["model_version"]["run_id"] == run_id
    exported = json.loads((chain.root / "models/export/export.json").read_text())
    assert exported["alias_uri"] == f"models:/{MODEL}@champion"
    assert exported["logged_into_training_run"] is True
    # ... which predict pulled by alias: one result file, an overlay per val image.
    results = json.loads((chain.root / "predictions/results.json").read_text())
    assert isinstance(results, list)
    overlays = list((chain.root / "predictions/overlays").rglob("*.png"))
    assert len(overlays) == len(list((chain.root / "data/raw/shapes/val").glob("*.*")))


def _ray_views(since: float) -> dict[str, str]:
    """What Ray shows of the jobs and the Ray Train runs of its session (its job list, with
    each job's entrypoint and runtime_env, and its dashboard's Ray Train run state with each
    run's `train_loop_config`), and every file of its session's log folder written since
    `since`."""
    import urllib.request

    import ray
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )
    from ray.util.state import list_jobs

    jobs = list_jobs(detail=True, raise_on_missing_output=False)
    dashboard = os.environ["RAY_API_SERVER_ADDRESS"]  # set by pipeline.training.runtime.init_ray
    request = urllib.request.Request(
        f"{dashboard}/api/train/v2/runs/v1", headers=get_auth_headers_if_auth_enabled({})
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        train_runs = r.read().decode()
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    files = [p for p in sorted(logs.rglob("*")) if p.is_file() and p.stat().st_mtime >= since]
    assert any(p.name.startswith("worker-") for p in files), "no Ray worker log of the run"
    text = "\n".join(p.read_bytes().decode(errors="replace") for p in files)
    return {"ray jobs": "\n".join(map(repr, jobs)), "ray train runs": train_runs, "ray logs": text}


def test_no_secret_in_argv_outputs_ray_or_mlflow(chain, auth_server):
    secrets = auth_server.secrets()
    seen = chain.argv.text()
    for stage in STAGES:  # the sampler saw every stage's process ...
        assert f"-m pipeline.{stage}" in seen, stage
    assert "RayTrainWorker" in seen  # ... and the Ray Train worker
    views = _ray_views(chain.started)
    train_state = json.loads(views["ray train runs"])
    ours = [r for r in train_state["train_runs"] if r["name"] == chain.train_run["run_name"]]
    assert ours, "Ray Train's run state lacks the run"
    assert "pipeline.train" in views["ray jobs"]  # the driver's job, with its runtime_env
    run_id = chain.train_run["mlflow_run_id"]
    stored = json.dumps(ok(auth_server.uri, f"/api/2.0/mlflow/runs/get?run_id={run_id}", CAROL))
    written = {  # the stages' files: Ray Train's run folder, metrics, reports, predictions
        str(p.relative_to(chain.root)): p.read_bytes().decode(errors="replace")
        for folder in ("runs", "metrics", "reports", "models", "predictions")
        for p in (chain.root / folder).rglob("*")
        if p.is_file()
    }
    assert_no_secret(
        secrets,
        argv=seen,
        **{f"{stage} output": text for stage, text in chain.output.items()},
        **views,
        **{"mlflow run (params, tags)": stored},
        **{"server log": auth_server.log.read_text(errors="replace")},
        **written,
    )
    shown = ours[0]["run_settings"]["train_loop_config"]["mlflow"]  # what Ray shows of it
    assert shown["tracking_uri"] == auth_server.uri and shown["login"] == "Sealed"


@pytest.mark.parametrize(
    "user, params, message",
    [
        (
            None,
            "params.yaml",
            "needs a login (HTTP 401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
        ),
        (WRONG, "params.yaml", "refused the login of user 'bob' (HTTP 401)"),
        (BOB, "secret.yaml", "bob may not use MLflow experiment 'secret' (HTTP 403)"),
    ],
    ids=["missing", "wrong", "forbidden"],
)
def test_train_refuses_the_login_in_one_line_before_ray(
    project, auth_server, team, user, params, message, monkeypatch, caplog
):
    for key in LOGIN_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    if user is not None:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])

    def no_ray(*args, **kwargs):
        raise AssertionError("the train stage reached Ray before the login was refused")

    monkeypatch.setattr(driver, "check_cluster", no_ray)
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stopped:
        train.main(["--params", str(project / params)])
    assert stopped.value.code == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0].getMessage(), caplog.text
    assert "\n" not in errors[0].getMessage() and errors[0].exc_info is None
    assert_no_secret(auth_server.secrets(), log=caplog.text)
    search = {"experiment_ids": [team["secret"]], "max_results": 10}
    found = ok(auth_server.uri, "/api/2.0/mlflow/runs/search", CAROL, "POST", search)
    assert len(found["runs"]) == 1  # no run was opened in `secret` (the one is the fixture's)


def _predict_as(user, monkeypatch, root: Path, out: Path, uri: str) -> None:
    for key in LOGIN_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])
    predict.main(
        [
            "--model",
            f"models:/{MODEL}@champion",
            "--tracking-uri",
            uri,
            "--input",
            str(root / "data/raw/shapes/val"),
            "--out",
            str(out),
        ]
    )


def test_a_teammate_pulls_the_champion_until_denied_on_the_model(
    chain, auth_server, dave, monkeypatch, caplog, tmp_path
):
    uri = auth_server.uri
    # READ on the registered model (and, `dave`, on the experiment its files were logged in).
    grant(uri, "dave", "registered_model", MODEL, "READ")
    _predict_as(DAVE, monkeypatch, chain.root, tmp_path / "allowed", uri)
    assert (tmp_path / "allowed/results.json").is_file()

    # carol turns the grant on the model into DENY: predict stops in one line.
    revoke = {"username": "dave", "resource_type": "registered_model", "resource_id": MODEL}
    ok(uri, "/api/3.0/mlflow/users/permissions/revoke", CAROL, "POST", revoke)
    grant(uri, "dave", "registered_model", MODEL, "DENY")
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stopped:
        _predict_as(DAVE, monkeypatch, chain.root, tmp_path / "denied", uri)
    assert stopped.value.code == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = f"dave may not read registered model '{MODEL}'"
    assert len(errors) == 1 and message in errors[0].getMessage(), caplog.text
    assert "(HTTP 403)" in errors[0].getMessage() and errors[0].exc_info is None
    assert not (tmp_path / "denied/overlays").exists()
    assert_no_secret(auth_server.secrets(), log=caplog.text)


@pytest.mark.usefixtures("ray_session")  # joined in this process: no Ray start to wait for
def test_train_with_a_read_only_login_stops_in_one_line(
    project, auth_server, team, dave, monkeypatch, caplog
):
    """READ on the experiment lets the login through the checks before Ray; opening the run is
    refused (HTTP 403), in one line, and no run is left behind."""
    for key in LOGIN_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", dave[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", dave[1])
    search = {"experiment_ids": [team["team"]], "max_results": 100}
    before = ok(auth_server.uri, "/api/2.0/mlflow/runs/search", CAROL, "POST", search)
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stopped:
        train.main(["--params", str(project / "reader.yaml")])
    assert stopped.value.code == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = "dave may not use MLflow experiment 'team' (HTTP 403)"
    assert len(errors) == 1 and message in errors[0].getMessage(), caplog.text
    assert errors[0].exc_info is None
    after = ok(auth_server.uri, "/api/2.0/mlflow/runs/search", CAROL, "POST", search)
    assert len(after.get("runs", [])) == len(before.get("runs", []))
