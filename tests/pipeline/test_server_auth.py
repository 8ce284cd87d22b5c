"""The team tracking server with `--auth`, started for real (`python -m pipeline.server --auth`)
on a throwaway PostgreSQL (tests/services.py) and used the way docs/cluster.md tells a team to:
the admin signs in, creates users through MLflow's auth REST API, grants and denies
experiments; the pipeline logs with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.

One server for the test session (tests/pipeline/conftest.py, `auth_server` and `team`), shared
with test_stages_auth.py (the whole stages with a login)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline import predict, server
from pipeline.tracking import store
from tests.pipeline.auth_server import ADMIN_PASSWORD, BOB, CAROL, WRONG, assert_no_secret, call


@pytest.mark.slow
def test_the_admin_signs_in(auth_server, team):
    uri = auth_server.uri
    for who in (("admin", ADMIN_PASSWORD), CAROL):
        status, body = call(uri, f"/api/2.0/mlflow/users/get?username={who[0]}", who)
        assert status == 200, body
        assert body["user"]["username"] == who[0] and body["user"]["is_admin"] is True
    status, body = call(uri, "/api/2.0/mlflow/users/get?username=bob", CAROL)
    assert status == 200 and body["user"]["is_admin"] is False
    # The secret key was generated on this first start, 0600 beside the auth config.
    key_file = auth_server.auth_dir / server.SECRET_FILE
    assert oct(key_file.stat().st_mode & 0o777) == oct(0o600)
    assert (auth_server.auth_dir / server.AUTH_CONFIG_FILE).is_file()


@pytest.mark.slow
def test_anonymous_and_wrong_password_are_refused(auth_server, team):
    uri = auth_server.uri
    for path in (
        "/api/2.0/mlflow/experiments/search?max_results=1",
        f"/api/2.0/mlflow/experiments/get?experiment_id={team['team']}",
        "/api/2.0/mlflow/users/get?username=admin",
    ):
        assert call(uri, path)[0] == 401
        assert call(uri, path, WRONG)[0] == 401
        assert call(uri, path, ("nobody", BOB[1]))[0] == 401
    create = {"experiment_id": team["team"]}
    assert call(uri, "/api/2.0/mlflow/runs/create", None, "POST", create)[0] == 401
    assert call(uri, "/api/2.0/mlflow/runs/create", WRONG, "POST", create)[0] == 401
    # A plain user is no admin: no users made, none listed.
    new_user = {"username": "mallory", "password": "mallory-Pa55-x"}
    assert call(uri, "/api/2.0/mlflow/users/create", BOB, "POST", new_user)[0] == 403


@pytest.mark.slow
def test_a_denied_user_can_neither_read_nor_write_the_experiment(auth_server, team):
    uri = auth_server.uri
    secret, run_id = team["secret"], team["secret_run"]
    reads = [
        f"/api/2.0/mlflow/experiments/get?experiment_id={secret}",
        "/api/2.0/mlflow/experiments/get-by-name?experiment_name=secret",
        f"/api/2.0/mlflow/runs/get?run_id={run_id}",
        f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=loss",
    ]
    for path in reads:
        assert call(uri, path, BOB)[0] == 403, path
        assert call(uri, path, CAROL)[0] == 200, path  # the owner can
    writes = [
        ("/api/2.0/mlflow/runs/create", {"experiment_id": secret}),
        (
            "/api/2.0/mlflow/runs/log-metric",
            {"run_id": run_id, "key": "loss", "value": 1.0, "timestamp": 0, "step": 0},
        ),
        ("/api/2.0/mlflow/runs/set-tag", {"run_id": run_id, "key": "k", "value": "v"}),
        ("/api/2.0/mlflow/experiments/update", {"experiment_id": secret, "new_name": "mine"}),
        ("/api/2.0/mlflow/experiments/delete", {"experiment_id": secret}),
    ]
    for path, body in writes:
        assert call(uri, path, BOB, "POST", body)[0] == 403, path
    status, body = call(uri, "/api/2.0/mlflow/experiments/search?max_results=50", BOB)
    assert status == 200 and {e["name"] for e in body["experiments"]} == {"team"}
    status, body = call(uri, f"/api/2.0/mlflow/runs/get?run_id={run_id}", CAROL)
    data = body["run"]["data"]
    assert "metrics" not in data and "k" not in {t["key"] for t in data["tags"]}  # untouched
    # ... and the pipeline says so in one line.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", BOB[0])
        mp.setenv("MLFLOW_TRACKING_PASSWORD", BOB[1])
        import mlflow

        mlflow.set_tracking_uri(uri)
        with pytest.raises(store.TrackingError, match="bob may not use MLflow experiment 'secret'"):
            store.ensure_experiment("secret")


CLIENT = textwrap.dedent(
    """
    import sys, time, mlflow
    from pipeline.tracking import store
    uri, experiment = sys.argv[1:3]
    store.check_tracking_uri(uri)
    with store.start_run(uri, experiment, run_name="bob-train", tags={"stage": "train"}) as run:
        mlflow.log_params(store.flatten({"train": {"lr": 0.01, "iterations": 3}}))
        for step in range(3):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_text("weights would go here", "model/notes.txt")
        time.sleep(1.0)  # long enough for `ps` to see this process
        print("RUN_ID=" + run.info.run_id)
    """
)


@pytest.mark.slow
def test_the_pipeline_logs_with_credentials_from_the_environment(auth_server, team):
    uri = auth_server.uri
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": BOB[0], "MLFLOW_TRACKING_PASSWORD": BOB[1]}
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, uri, "team"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # Every process's argv while the client and the server run: no secret in it.
    seen = ""
    while client.poll() is None:
        seen += subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
        time.sleep(0.2)
    out, err = client.communicate(timeout=120)
    assert client.returncode == 0, err[-3000:]
    port = uri.rsplit(":", 1)[1]
    assert "mlflow server --serve-artifacts" in seen and f"--port {port}" in seen  # the server
    assert CLIENT.strip().splitlines()[0] in seen  # ... and the client
    run_id = next(x[7:] for x in out.splitlines() if x.startswith("RUN_ID="))

    status, body = call(uri, f"/api/2.0/mlflow/runs/get?run_id={run_id}", CAROL)
    assert status == 200, body
    run = body["run"]
    assert run["info"]["experiment_id"] == team["team"] and run["info"]["status"] == "FINISHED"
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == {
        "train.lr": "0.01",
        "train.iterations": "3",
    }
    status, body = call(
        uri, f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=loss", BOB
    )
    assert sorted(m["step"] for m in body["metrics"]) == [0, 1, 2]
    status, body = call(uri, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=model", BOB)
    assert status == 200 and [f["path"] for f in body["files"]] == ["model/notes.txt"]

    # No secret in argv, in the client's output, in the server's log, or in what MLflow stores.
    stored = json.dumps(run)
    server_log = auth_server.log.read_text(errors="replace")
    assert_no_secret(
        auth_server.secrets(), ps=seen, client=out + err, server_log=server_log, run=stored
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "login, message",
    [
        ({}, "needs a login (HTTP 401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        (
            {"MLFLOW_TRACKING_USERNAME": WRONG[0], "MLFLOW_TRACKING_PASSWORD": WRONG[1]},
            "refused the login of user 'bob' (HTTP 401)",
        ),
    ],
    ids=["missing", "wrong"],
)
def test_missing_or_wrong_credentials_fail_in_one_line(
    auth_server, team, login, message, monkeypatch, caplog, tmp_path
):
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in login.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(store.TrackingError, match=re.escape(message)):
        store.check_tracking_uri(auth_server.uri)
    # A user command: `pipeline.predict --model models:/NAME@champion` stops before any work,
    # with that one line and no traceback.
    image = tmp_path / "in"
    image.mkdir()
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stopped:
        predict.main(
            [
                "--model",
                "models:/tiny@champion",
                "--tracking-uri",
                auth_server.uri,
                "--input",
                str(image),
                "--out",
                str(tmp_path / "out"),
            ]
        )
    assert stopped.value.code == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0].getMessage()
    assert "\n" not in errors[0].getMessage() and errors[0].exc_info is None
    assert WRONG[1] not in caplog.text
