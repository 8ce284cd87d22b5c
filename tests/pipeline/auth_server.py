"""The team tracking server with `--auth` for the tests that sign in (test_server_auth.py,
test_stages_auth.py): `python -m pipeline.server --auth` started for real on a throwaway
PostgreSQL (tests/services.py), the users and grants of docs/cluster.md's walkthrough made
through MLflow's auth REST API, and the checks that no secret leaks.

    status, body = call(uri, "/api/2.0/mlflow/runs/get?run_id=...", CAROL)
    with ArgvSampler() as argv:           # `ps -ww -eo args` every 0.3 s while a stage runs
        subprocess.run([...])
    assert_no_secret(server.secrets(), ps=argv.text(), log=...)

The fixtures (`auth_server`, `team`: one server and one set of users per test session) are in
tests/pipeline/conftest.py.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline import server
from tests import services

ADMIN_PASSWORD = "adm1n-Pa55-first"
ADMIN = ("admin", ADMIN_PASSWORD)
CAROL = ("carol", "carol-Pa55-w0rd")  # made an admin by the first one
BOB = ("bob", "bob-Pa55-w0rd-x")  # a plain user
WRONG = ("bob", "not-bobs-password")
DAVE = ("dave", "dave-Pa55-w0rd-y")  # a plain user test_stages_auth.py makes
PASSWORDS = (ADMIN_PASSWORD, CAROL[1], BOB[1], WRONG[1], DAVE[1])
LOGIN_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


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
        with urllib.request.urlopen(request, timeout=120) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def ok(uri: str, path: str, auth: tuple[str, str], method: str = "GET", body=None) -> dict:
    """`call` that must answer 200 -> the JSON body."""
    status, answer = call(uri, path, auth, method, body)
    assert status == 200, (path, status, answer)
    return answer


def grant(uri: str, user: str, resource_type: str, resource_id: str, permission: str) -> None:
    """Carol (an admin) gives `user` `permission` on one experiment or registered model, through
    MLflow's auth API (docs/cluster.md); a later grant replaces the earlier one."""
    body = {
        "username": user,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "permission": permission,
    }
    ok(uri, "/api/3.0/mlflow/users/permissions/grant", CAROL, "POST", body)


@dataclass
class AuthServer:
    uri: str
    log: Path
    auth_dir: Path
    proc: subprocess.Popen
    db_password: str

    def secrets(self) -> list[str]:
        """Every secret of this setup: none may show up in a log, an error, argv or MLflow."""
        key = (self.auth_dir / server.SECRET_FILE).read_text().strip()
        return [*PASSWORDS, key, self.db_password]


def start_auth_server(backend: str, work: Path, db_password: str) -> AuthServer:
    """`python -m pipeline.server --auth` on the database `backend`, artifacts in a folder, no
    MLFLOW_FLASK_SERVER_SECRET_KEY (generated into --auth-dir) -> `AuthServer` (healthy)."""
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
            # Each request's password is checked with a slow hash (PBKDF2): on a busy 2-core CI
            # machine tens of seconds of CPU over a session. Refusals are never cached.
            "--auth-cache-seconds",
            "600",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        services.wait_until(
            "mlflow server --auth", lambda: services.http_ok(f"{uri}/health"), proc, log, 240
        )
    except BaseException:
        services.stop_process(proc)
        raise
    return AuthServer(uri, log, work / "auth", proc, db_password)


def make_team(uri: str) -> dict[str, str]:
    """What the walkthrough in docs/cluster.md does, through MLflow's auth REST API: the first
    admin makes carol an admin and bob a plain user; carol creates experiments `team` (bob
    granted EDIT) and `secret` (bob explicitly denied), with one run in `secret`
    -> {"team": id, "secret": id, "secret_run": run id}."""
    for name, password in (CAROL, BOB):
        new_user = {"username": name, "password": password}
        ok(uri, "/api/2.0/mlflow/users/create", ADMIN, "POST", new_user)
    carol_admin = {"username": "carol", "is_admin": True}
    ok(uri, "/api/2.0/mlflow/users/update-admin", ADMIN, "PATCH", carol_admin)
    ids = {}
    for name in ("team", "secret"):
        body = ok(uri, "/api/2.0/mlflow/experiments/create", CAROL, "POST", {"name": name})
        ids[name] = body["experiment_id"]
    grant(uri, "bob", "experiment", ids["team"], "EDIT")
    grant(uri, "bob", "experiment", ids["secret"], "DENY")
    body = ok(uri, "/api/2.0/mlflow/runs/create", CAROL, "POST", {"experiment_id": ids["secret"]})
    ids["secret_run"] = body["run"]["info"]["run_id"]
    return ids


def login_env(user: tuple[str, str] | None) -> dict[str, str]:
    """This process's environment signed in as `user` (None: no login at all)."""
    env = {k: v for k, v in os.environ.items() if k not in LOGIN_VARIABLES}
    if user is not None:
        env |= {"MLFLOW_TRACKING_USERNAME": user[0], "MLFLOW_TRACKING_PASSWORD": user[1]}
    return env


class ArgvSampler:
    """Every process's command line (`ps -ww -eo args`), sampled every `every_s` seconds on a
    thread while the `with` block runs (and once at each end)."""

    def __init__(self, every_s: float = 0.3) -> None:
        self.every_s, self.lines, self.samples = every_s, set(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True)
        self.lines.update(ps.stdout.splitlines())
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> ArgvSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._sample()

    def text(self) -> str:
        return "\n".join(sorted(self.lines))


def assert_no_secret(secrets: list[str], **places: str) -> None:
    """No secret in any of `places` (name -> text); the message names the place, never the
    secret."""
    for secret in secrets:
        assert secret, "an empty secret would match everything"
        for where, text in places.items():
            assert secret not in text, f"a secret in {where}"
