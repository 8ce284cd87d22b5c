"""Real services for the scale-out tests, started on 127.0.0.1 on free ports, stopped by pid.

    S3Server     moto's standalone server (`moto[server]`, what DVC and s3fs test against);
                 clients get credentials and the endpoint from the environment
                 (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`), as in
                 production
    Postgres     a throwaway PostgreSQL cluster (`initdb` + `postgres`) in a temp dir, run as an
                 unprivileged user when we are root (initdb refuses root); never the system
                 service. `pg_ctl("restart")`, `pg_ctl("stop")` / `pg_ctl("start")` fault it
    MlflowServer `python -m pipeline.server` on a database of it; `kill()` SIGKILLs it,
                 `start()` starts it again on the same port
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
    options: list[str] = field(default_factory=list)  # the postmaster's -p / -c options
    run_as: dict = field(default_factory=dict)  # user/group when we are root
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)  # SIGINT = "fast" shutdown of the postmaster
        # A postmaster `pg_ctl` started (restart, start) is not our child: its pid is on file.
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and self.postmaster_pid() == pid:
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (its postmaster.pid file), or None."""
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pg_ctl(self, action: str, timeout: float = 60.0) -> None:
        """`pg_ctl <action>` on this cluster, as its owner, waiting until it is done: `stop` and
        `restart` shut down "fast" (clients are disconnected, as a service restart does);
        `start` and `restart` bring it back on the same port with the same options."""
        bindir = postgres_bindir()
        assert bindir is not None  # the cluster runs
        argv = [str(bindir / "pg_ctl"), action, "-D", str(self.datadir), "-w"]
        argv += ["-t", str(int(timeout)), "-l", str(self.datadir.parent / "pg_ctl.log")]
        if action in ("stop", "restart"):
            argv += ["-m", "fast"]
        if action == "start":
            argv += ["-o", " ".join(self.options)]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=self.datadir.parent,
            env=self.env,
            timeout=timeout + 30,
            **self.run_as,
        )
        if done.returncode != 0:
            raise ServiceUnavailable(f"pg_ctl {action} failed: {done.stdout}{done.stderr}"[-1500:])

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
    options = ["-p", str(port), "-c", f"listen_addresses={HOST}"]
    options += ["-c", f"unix_socket_directories={root}", "-c", "fsync=off"]
    options += ["-c", "max_connections=60"]
    proc = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(datadir), *options],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=root,
        env=env,
        start_new_session=True,
        **run_as,
    )
    wait_until("postgres", lambda: port_open(port), proc, log, timeout)
    server = Postgres("", port, user, password, dbname, datadir, proc, log, options, run_as, env)
    try:
        server.url = server.create_database(dbname, timeout)
    except ServiceUnavailable:
        stop_process(proc, signal.SIGINT)
        raise
    return server


# ---------------------------------------------------------------------------------------------
# MLflow tracking server


@dataclass
class MlflowServer:
    """`python -m pipeline.server` on 127.0.0.1:`port` (`uri`), started in its own session."""

    uri: str
    port: int
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        """Start it (again: the same port, database and artifacts) and wait until healthy."""
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        healthy = lambda: http_ok(f"{self.uri}/health")  # noqa: E731
        wait_until("mlflow server", healthy, self.proc, self.log, timeout)

    def kill(self) -> None:
        """SIGKILL the server: its pid's process group, which is the MLflow CLI, uvicorn and
        its workers (a kill -9 of the parent alone leaves the workers serving the port)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(20)
        deadline = time.monotonic() + 20
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def start_mlflow_server(
    backend_url: str,
    artifacts: str,
    workdir: Path,
    *,
    workers: int = 2,
    env: dict[str, str] | None = None,
    timeout: float = 180.0,
) -> MlflowServer:
    """`python -m pipeline.server` on a free port of 127.0.0.1, the database at `backend_url`
    (its password reaches the server through the environment, as in production), artifacts
    proxied to `artifacts`; its log is `workdir/server.log`."""
    from pipeline import server

    port = free_port()
    argv = [sys.executable, "-m", "pipeline.server", "--artifacts-destination", artifacts]
    argv += ["--port", str(port), "--workers", str(workers)]
    environ = {**os.environ, **(env or {}), server.BACKEND_ENV: backend_url}
    mlflow_server = MlflowServer(
        f"http://{HOST}:{port}", port, argv, environ, Path(workdir) / "server.log"
    )
    mlflow_server.start(timeout)
    return mlflow_server
