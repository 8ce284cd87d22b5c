"""The team tracking server with `--auth`, started for real (`python -m pipeline.server --auth`)
on a throwaway PostgreSQL (tests/services.py) and used the way docs/cluster.md tells a team to:
the admin signs in, creates users through MLflow's auth REST API, grants and denies
experiments; the pipeline logs with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.

One server for the whole module (starting one costs seconds of CPU)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests import services

ADMIN_PASSWORD = "adm1n-Pa55-first"


def call(
    uri: str,
    path: str,
    auth: tuple[str, str] | None = None,
    method: str = "GET",
    body: dict | None = None,
) -> tuple[int, dict | str]:
    """One HTTP request to the server -> (status, JSON body or text)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(uri + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


@pytest.fixture(scope="module")
def auth_server(postgres, tmp_path_factory):
    """`python -m pipeline.server --auth` on its own database of the PostgreSQL fixture,
    artifacts in a folder -> (uri, server log path)."""
    backend = postgres.create_database("mlflow_auth")
    work = tmp_path_factory.mktemp("auth-server")
    port = services.free_port()
    log = work / "server.log"
    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": backend,
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    env.pop("MLFLOW_FLASK_SERVER_SECRET_KEY", None)  # a first start, as a new team meets it
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.server",
            "--artifacts-destination",
            str(work / "artifacts"),
            "--port",
            str(port),
            "--workers",
            "1",  # each worker imports MLflow's auth app: seconds of CPU
            "--auth",
            "--auth-dir",
            str(work / "auth"),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        services.wait_until("mlflow server --auth", healthy, proc, log, timeout=240)
        yield uri, log
    finally:
        services.stop_process(proc)


@pytest.mark.slow
def test_the_admin_signs_in(auth_server):
    uri, _ = auth_server
    status, body = call(uri, "/api/2.0/mlflow/users/get?username=admin", ("admin", ADMIN_PASSWORD))
    assert status == 200, body
    assert body["user"]["username"] == "admin" and body["user"]["is_admin"] is True
