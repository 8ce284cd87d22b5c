"""Real services for the scale-out tests, started on 127.0.0.1 on free ports, stopped by pid.

    S3Server     moto's standalone server (`moto[server]`, what DVC and s3fs test against);
                 clients get credentials and the endpoint from the environment
                 (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`), as in
                 production
    Postgres     a throwaway PostgreSQL cluster (`initdb` + `postgres`) in a temp dir, run as an
                 unprivileged user when we are root (initdb refuses root); never the system
                 service
    Ray          a two-node Ray cluster on this machine: `tests.ray_services`

Every process is started in its own session and stopped by its pid (SIGTERM, then SIGKILL of its
process group), so a failed test leaves nothing running. A service that cannot start raises
`ServiceUnavailable`; the fixtures turn that into a skip naming the cause.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


class ServiceUnavailable(RuntimeError):
    """A service could not start on this machine (missing program, refused, timed out)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Stop `proc` (started with `start_new_session=True`) by its pid: `sig`, wait, then SIGKILL
    its whole process group (children it left behind)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # its group id is its pid (own session)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def http_ok(url: str) -> bool:
    """Whether GET `url` answers 200 now (a server's health check for `wait_until`)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def wait_until(what: str, ready, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            raise ServiceUnavailable(f"{what} exited ({proc.returncode}): {log_tail(log)}")
        time.sleep(0.1)
    stop_process(proc)
    raise ServiceUnavailable(f"{what} not ready after {timeout:.0f} s: {log_tail(log)}")


def log_tail(log: Path, n: int = 1500) -> str:
    """The end of a service's log, for the error that says why it did not start."""
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------------------------
# S3


@dataclass
class S3Server:
    """moto's S3 on `endpoint`; `env` holds the variables a client needs (set by the fixture)."""

    endpoint: str
    proc: subprocess.Popen
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` (fresh) -> "s3://name"."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        stop_process(self.proc)


def start_s3(workdir: Path, timeout: float = 60.0) -> S3Server:
    """moto's standalone S3 server on a free port of 127.0.0.1."""
    try:
        import moto.server  # noqa: F401
    except ImportError as e:  # pragma: no cover - CI installs the dev extra
        raise ServiceUnavailable(f"moto[server] is not installed ({e})") from e
    port = free_port()
    log = Path(workdir) / "moto.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    endpoint = f"http://{HOST}:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return True
        except OSError:
            return False

    wait_until("moto server", ready, proc, log, timeout)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        # MLflow's S3 artifact store reads its own variable (boto3 honours AWS_ENDPOINT_URL).
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        # No user's ~/.aws profile may leak into the tests.
        "AWS_CONFIG_FILE": str(Path(workdir) / "aws-config-none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(Path(workdir) / "aws-credentials-none"),
    }
    return S3Server(endpoint, proc, log, env)


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin holding initdb (Debian's layout), else the
    folder of an `initdb` on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


@dataclass
class Postgres:
    """A running throwaway cluster; `url` is a SQLAlchemy URL to database `dbname`."""

    url: str
    port: int
    user: str
    password: str
    dbname: str
    datadir: Path
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)  # SIGINT = "fast" shutdown of the postmaster

    def create_database(self, dbname: str, timeout: float = 60.0) -> str:
        """A new empty database `dbname` in this cluster (for a server that must not share
        tables with another test's) -> its URL. Retried while the cluster is still starting
        (it accepts connections before it accepts logins)."""
        bindir = postgres_bindir()
        assert bindir is not None  # the cluster runs
        deadline = time.monotonic() + timeout
        while True:
            created = subprocess.run(
                [str(bindir / "createdb"), "-h", HOST, "-p", str(self.port), "-U", self.user]
                + [dbname],
                capture_output=True,
                text=True,
                env={**os.environ, "PGPASSWORD": self.password},
            )
            if created.returncode == 0:
                return f"postgresql://{self.user}:{self.password}@{HOST}:{self.port}/{dbname}"
            if "starting up" not in created.stderr or time.monotonic() > deadline:
                raise ServiceUnavailable(f"createdb {dbname} failed: {created.stderr[-1500:]}")
            time.sleep(0.5)


def start_postgres(dbname: str = "mlflow", user: str = "mlflow", timeout: float = 60.0) -> Postgres:
    """initdb a cluster in a fresh temp dir and run `postgres` on a free port of 127.0.0.1 with
    password (scram-sha-256) authentication; as root, both run as the user `nobody`."""
    bindir = postgres_bindir()
    if bindir is None:
        raise ServiceUnavailable(
            "PostgreSQL is not installed (no initdb): `apt-get install -y postgresql`"
        )
    run_as: dict = {}
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError as e:
            raise ServiceUnavailable("running as root and there is no user `nobody`") from e
        run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    # Not under pytest's tmp dir: that is 0700 root's, and the server may run as `nobody`.
    root = Path(tempfile.mkdtemp(prefix="mrcnn-pg-"))
    if run_as:
        os.chown(root, run_as["user"], run_as["group"])
    password = "mlflow-test-pw"
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if run_as:
        os.chown(pwfile, run_as["user"], run_as["group"])
    datadir = root / "data"
    env = {**os.environ, "HOME": str(root), "LC_ALL": "C", "LANG": "C"}
    log = root / "postgres.log"
    init = subprocess.run(
        [
            str(bindir / "initdb"),
            "-D",
            str(datadir),
            "-U",
            user,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        **run_as,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise ServiceUnavailable(f"initdb failed: {init.stderr[-1500:]}")
    port = free_port()
    proc = subprocess.Popen(
        [
            str(bindir / "postgres"),
            "-D",
            str(datadir),
            "-p",
            str(port),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            f"unix_socket_directories={root}",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=60",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=root,
        env=env,
        start_new_session=True,
        **run_as,
    )
    wait_until("postgres", lambda: port_open(port), proc, log, timeout)
    server = Postgres("", port, user, password, dbname, datadir, proc, log)
    try:
        server.url = server.create_database(dbname, timeout)
    except ServiceUnavailable:
        stop_process(proc, signal.SIGINT)
        raise
    return server
