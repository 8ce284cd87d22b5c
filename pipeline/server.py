"""`make tracking-server`: a team MLflow tracking server on PostgreSQL, artifacts in S3 or a folder.

    export MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:PASSWORD@db-host:5432/mlflow
    python -m pipeline.server --artifacts-destination s3://team-bucket/mlflow \\
        [--host 127.0.0.1] [--port 5000] [--workers 4] [--allowed-hosts mlflow.team.lan] [--auth]

Runs `mlflow server` with:
- the backend store (runs, metrics, the model registry) in a database, normally PostgreSQL,
  from `--backend-store-uri` or, better, the environment variable `MLFLOW_BACKEND_STORE_URI`
  (the password then stays out of `ps`); the server creates MLflow's tables in an empty
  database, `--upgrade-db` migrates an older one first (`mlflow db upgrade`);
- artifacts proxied by the server (`--serve-artifacts`) to `--artifacts-destination`: an
  `s3://bucket/prefix` (the server's S3 credentials from its environment: `AWS_ACCESS_KEY_ID`,
  `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` / `MLFLOW_S3_ENDPOINT_URL` for a non-AWS store,
  or an instance role) or a folder; clients then need only HTTP, no bucket credentials;
- `--host 127.0.0.1` by default: only this machine connects (tunnel with
  `ssh -N -L 5000:127.0.0.1:5000 server`). To serve a team, `--host 0.0.0.0` together with
  `--allowed-hosts` (the Host names clients use: MLflow refuses others, against DNS rebinding)
  and `--auth`, behind a TLS proxy;
- `--workers N` request-handling processes (uvicorn), for many clients logging at once
  (`--worker-timeout`: seconds a worker may take to answer uvicorn's health check);
- `--auth`: MLflow's basic-auth app (needs Flask-WTF: the `cloud` extra installs
  `mlflow[auth]`). Users and permissions live in `--auth-db-uri` (default: the backend
  database; its tables are separate); the first start creates the admin user from
  `MLFLOW_AUTH_ADMIN_USERNAME` (default admin) and `MLFLOW_AUTH_ADMIN_PASSWORD`. A signed-in
  user gets `--default-permission` (default NO_PERMISSIONS: none) on experiments and models
  they neither created nor were granted. Clients set `MLFLOW_TRACKING_USERNAME` /
  `MLFLOW_TRACKING_PASSWORD`.
  The Flask secret key (signs the sign-up form's CSRF token; every worker and every server
  behind one name must share it) comes from `MLFLOW_FLASK_SERVER_SECRET_KEY`; without it the
  first start generates one into `--auth-dir`/flask_secret_key (0600) and later starts reuse
  it. It reaches MLflow through the environment, never argv, and is never logged.
  `--auth-dir` (default `~/.config/mrcnn/mlflow-server`, 0700) also holds the auth config
  `basic_auth.ini` (0600, rewritten at each start: it may hold the database password).

docs/cluster.md walks through a team setup; tests/pipeline/test_server.py starts exactly this
command on a throwaway PostgreSQL with S3 artifacts.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.tracking.store import check_tracking_uri, redact

log = logging.getLogger(__name__)

BACKEND_ENV = "MLFLOW_BACKEND_STORE_URI"
ARTIFACTS_ENV = "MLFLOW_ARTIFACTS_DESTINATION"
DATABASE_SCHEMES = ("postgresql", "postgres", "mysql", "mssql", "sqlite")
SECRET_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
SECRET_FILE = "flask_secret_key"
AUTH_CONFIG_FILE = "basic_auth.ini"
MIN_PASSWORD = 12  # MLflow's rule for every password, the admin's first one included


def default_auth_dir() -> Path:
    """`$XDG_CONFIG_HOME/mrcnn/mlflow-server` (default `~/.config/...`)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mrcnn" / "mlflow-server"


class ServerConfigError(ValueError):
    """A server setting is missing or wrong; the message says how to fix it."""


@dataclass
class ServerCommand:
    """What to run: `argv`, with `env` (secrets travel here, not in argv), the auth config
    file written for `--auth` (None without) and where its Flask secret key came from (the
    variable's name or the file's path; never the key)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    auth_config: Path | None = None
    secret_source: str = ""


def build_command(args: argparse.Namespace, environ: dict[str, str] | None = None) -> ServerCommand:
    """`mlflow server` argv + environment for the parsed flags of this module (pure: no process
    is started; `--auth` writes its config file). Raises `ServerConfigError`."""
    environ = dict(os.environ if environ is None else environ)
    backend = args.backend_store_uri or environ.get(BACKEND_ENV, "")
    if not backend:
        raise ServerConfigError(
            f"no backend store: set {BACKEND_ENV}=postgresql://USER:PASSWORD@HOST:5432/DB "
            "(or pass --backend-store-uri)"
        )
    scheme = backend.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in DATABASE_SCHEMES:
        raise ServerConfigError(
            f"backend store {redact(backend)} is not a database URL: a team server needs "
            "postgresql://USER:PASSWORD@HOST:5432/DB (or mysql://, sqlite:/// for a trial)"
        )
    artifacts = args.artifacts_destination or environ.get(ARTIFACTS_ENV, "")
    if not artifacts:
        raise ServerConfigError(
            "no artifact store: pass --artifacts-destination s3://BUCKET/PREFIX (or a folder), "
            f"or set {ARTIFACTS_ENV}"
        )
    if "://" not in artifacts:  # a folder: absolute, so the server's cwd does not matter
        artifacts = str(Path(artifacts).expanduser().resolve())
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allowed_hosts:
        raise ServerConfigError(
            f"--host {args.host} serves other machines: also pass --allowed-hosts with the "
            "names clients use (e.g. mlflow.team.lan,10.0.0.5:5000), and --auth"
        )
    env = {BACKEND_ENV: backend}
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
        # uvicorn restarts a worker that misses a 5 s health check: on a busy machine a worker
        # still importing MLflow does, and they are restarted forever.
        "--uvicorn-opts",
        f"--timeout-worker-healthcheck {args.worker_timeout}",
    ]
    if args.allowed_hosts:
        argv += ["--allowed-hosts", args.allowed_hosts]
    if not args.auth:
        return ServerCommand(argv, env)
    if not environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise ServerConfigError(
            "--auth needs the admin's first password in MLFLOW_AUTH_ADMIN_PASSWORD "
            "(MLflow has no default; it is only read while the user table is empty)"
        )
    if len(environ["MLFLOW_AUTH_ADMIN_PASSWORD"]) < MIN_PASSWORD:
        raise ServerConfigError(
            f"MLFLOW_AUTH_ADMIN_PASSWORD is shorter than {MIN_PASSWORD} characters "
            "(MLflow refuses it)"
        )
    folder = Path(args.auth_dir).expanduser() if args.auth_dir else default_auth_dir()
    _private_dir(folder)
    auth_config = _write_auth_config(
        folder / AUTH_CONFIG_FILE,
        args.auth_db_uri or backend,
        args.default_permission,
        args.auth_cache_seconds,
    )
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config)
    if environ.get(SECRET_ENV):
        env[SECRET_ENV], source = environ[SECRET_ENV], SECRET_ENV
    else:
        env[SECRET_ENV], source = _stored_secret(folder / SECRET_FILE)
    argv += ["--app-name", "basic-auth"]
    return ServerCommand(argv, env, auth_config, source)


def _private_dir(folder: Path) -> None:
    """Create `folder` 0700 if missing; refuse one that others may write or read."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(folder.stat().st_mode)
    if mode & 0o077:
        raise ServerConfigError(
            f"--auth-dir {folder} is open to other users (mode {mode:o}); "
            f"`chmod 700 {folder}` (it holds the server's secret key and auth config)"
        )


def _write_private(path: Path, text: str, exclusive: bool = False) -> None:
    """Write `text` to `path`, readable by us only (0600) from the first byte."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode through O_TRUNC
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _write_auth_config(
    path: Path, database_uri: str, default_permission: str, cache_seconds: int = 0
) -> Path:
    """MLflow's basic-auth ini, readable only by us (it may hold the database password)."""
    _write_private(
        path,
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {database_uri}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {cache_seconds}\n",
    )
    return path


def _stored_secret(path: Path) -> tuple[str, str]:
    """The Flask secret key kept in `path`, generated there (0600) on the first start ->
    (key, a description of where it came from for the log)."""
    if not path.exists():
        try:
            _write_private(path, secrets.token_urlsafe(32) + "\n", exclusive=True)
            return path.read_text().strip(), f"{path} (generated now)"
        except FileExistsError:  # another start made it meanwhile
            pass
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ServerConfigError(
            f"the secret key file {path} is readable by other users (mode {mode:o}): "
            f"`chmod 600 {path}`, or delete it to generate a new one"
        )
    key = path.read_text().strip()
    if not key:
        raise ServerConfigError(f"the secret key file {path} is empty: delete it or fill it")
    return key, str(path)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--backend-store-uri",
        default="",
        help=f"database URL (default: ${BACKEND_ENV}; prefer the variable, argv is public)",
    )
    ap.add_argument(
        "--artifacts-destination",
        default="",
        help=f"s3://bucket/prefix or a folder (default: ${ARTIFACTS_ENV})",
    )
    ap.add_argument("--host", default="127.0.0.1", help="default: %(default)s (local only)")
    ap.add_argument("--port", type=int, default=5000, help="default: %(default)s")
    ap.add_argument("--workers", type=int, default=4, help="request workers (%(default)s)")
    ap.add_argument(
        "--worker-timeout", type=int, default=60, help="worker health check, s (%(default)s)"
    )
    ap.add_argument(
        "--allowed-hosts",
        default="",
        help="comma-separated Host headers to accept (required with a --host other than local)",
    )
    ap.add_argument("--auth", action="store_true", help="MLflow basic auth (users, permissions)")
    ap.add_argument("--auth-db-uri", default="", help="users database (default: the backend)")
    ap.add_argument(
        "--auth-dir",
        default="",
        help="folder of the auth config and the generated Flask secret key "
        "(default: ~/.config/mrcnn/mlflow-server)",
    )
    ap.add_argument(
        "--default-permission",
        default="NO_PERMISSIONS",
        choices=["NO_PERMISSIONS", "READ", "USE", "EDIT", "MANAGE"],
        help="what a signed-in user may do with experiments and models they neither created "
        "nor were granted (%(default)s: nothing; READ lets the team see each other's runs)",
    )
    ap.add_argument(
        "--auth-cache-seconds",
        type=int,
        default=0,
        help="remember an accepted login this long per worker (MLflow checks each request's "
        "password with a slow hash; a changed password may then work this long on other "
        "workers; default %(default)s: off)",
    )
    ap.add_argument(
        "--upgrade-db", action="store_true", help="run `mlflow db upgrade` first (after upgrades)"
    )
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.auth:
        try:
            import flask_wtf  # noqa: F401  (MLflow's basic-auth app imports it)
        except ImportError:
            sys.exit(
                "error: --auth needs Flask-WTF: pip install 'mrcnn-pipeline[cloud]' "
                "(or 'mlflow[auth]')"
            )
    try:
        command = build_command(args)
    except ServerConfigError as e:
        sys.exit(f"error: {e}")
    backend = command.env[BACKEND_ENV]
    if not backend.startswith("sqlite"):
        check_tracking_uri(backend)  # the database host answers, or a clear error now
    env = {**os.environ, **command.env}
    if args.upgrade_db:
        subprocess.run(
            [sys.executable, "-m", "mlflow", "db", "upgrade", backend], env=env, check=True
        )
    log.info(
        "MLflow server on http://%s:%d (backend %s, artifacts %s)%s",
        args.host,
        args.port,
        redact(backend),
        command.argv[command.argv.index("--artifacts-destination") + 1],
        " with basic auth" if args.auth else "",
    )
    if args.auth:
        log.info(
            "auth config %s, default permission %s, Flask secret key from %s",
            command.auth_config,
            args.default_permission,
            command.secret_source,
        )
    os.execve(command.argv[0], command.argv, env)


if __name__ == "__main__":
    main()
