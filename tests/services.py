"""Real services for the scale-out tests, started on 127.0.0.1 on free ports, stopped by pid.

    S3Server     moto's standalone server (`moto[server]`, what DVC and s3fs test against);
                 clients get credentials and the endpoint from the environment
                 (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`), as in
                 production
    Postgres     a throwaway PostgreSQL cluster (`initdb` + `postgres`) in a temp dir, run as an
                 unprivileged user when we are root (initdb refuses root); never the system
                 service
    RayNode      one `ray start --block` node; a head and a worker node make a two-node cluster
                 on this machine, each with its own temp dir, ports and custom resource. Ray
                 gives each node the machine's reachable IP, not 127.0.0.1, whatever
                 `--node-ip-address` says (`ray._private.services.resolve_ip_for_localhost`), and
                 a driver does the same with the address it is given; so the nodes' Ray ports
                 are on that IP, as on any multi-node cluster (the dashboard stays on 127.0.0.1)

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


def wait_until(what: str, ready, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            raise ServiceUnavailable(f"{what} exited ({proc.returncode}): {_tail(log)}")
        time.sleep(0.1)
    stop_process(proc)
    raise ServiceUnavailable(f"{what} not ready after {timeout:.0f} s: {_tail(log)}")


def _tail(log: Path, n: int = 1500) -> str:
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
    created = subprocess.run(
        [str(bindir / "createdb"), "-h", HOST, "-p", str(port), "-U", user, dbname],
        capture_output=True,
        text=True,
        env={**env, "PGPASSWORD": password},
    )
    if created.returncode != 0:
        stop_process(proc, signal.SIGINT)
        raise ServiceUnavailable(f"createdb failed: {created.stderr[-1500:]}")
    url = f"postgresql://{user}:{password}@{HOST}:{port}/{dbname}"
    return Postgres(url, port, user, password, dbname, datadir, proc, log)


# ---------------------------------------------------------------------------------------------
# Ray


@dataclass
class RayNode:
    """One `ray start --block` process and the Ray processes under it (its own session)."""

    address: str  # the cluster's GCS address, host:port
    resources: dict[str, float]
    temp_dir: Path
    proc: subprocess.Popen
    log: Path
    dashboard_url: str | None = None

    def raylet_pids(self) -> list[int]:
        """pids of this node's raylet processes (children of the `ray start` process)."""
        import psutil

        kids = psutil.Process(self.proc.pid).children(recursive=True)
        return [p.pid for p in kids if p.name().startswith("raylet")]

    def kill(self) -> None:
        """Hard node failure: SIGKILL the whole process tree of this node, now."""
        import psutil

        with contextlib.suppress(psutil.NoSuchProcess):
            tree = psutil.Process(self.proc.pid).children(recursive=True)
            for p in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
        stop_process(self.proc, signal.SIGKILL, timeout=5)

    def stop(self) -> None:
        # `ray start --block` stops the processes it started on SIGTERM; stop_process then
        # SIGKILLs whatever is left in its process group.
        stop_process(self.proc, signal.SIGTERM, timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def ray_executable() -> str:
    candidate = Path(sys.executable).parent / "ray"
    return str(candidate) if candidate.exists() else "ray"


def start_ray_node(
    resources: dict[str, float],
    head_address: str | None = None,
    num_cpus: int = 1,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    attempts: int = 3,
) -> RayNode:
    """A head node (`head_address=None`) or a node joining `head_address`, with every port its
    own (free ones, or the OS's choice), a short temp dir of its own (Ray's unix sockets live
    there) and a 100 MB object store. Returns once `ray start` says the node is up.

    Ray gives a starting raylet a fixed 30 s to register; on a machine loaded far beyond its
    cores that can fail, so a failed start is retried (`attempts`) with fresh ports and dir."""
    for attempt in range(1, attempts + 1):
        try:
            return _start_ray_node(resources, head_address, num_cpus, env, timeout)
        except ServiceUnavailable:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _start_ray_node(
    resources: dict[str, float],
    head_address: str | None,
    num_cpus: int,
    env: dict[str, str] | None,
    timeout: float,
) -> RayNode:
    import json

    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    log = temp_dir / "ray-start.log"
    cmd = [
        ray_executable(),
        "start",
        "--block",
        "--disable-usage-stats",
        "--num-cpus",
        str(num_cpus),
        "--num-gpus",
        "0",
        "--resources",
        json.dumps(resources),
        "--temp-dir",
        str(temp_dir),
        "--object-store-memory",
        str(100 * 1024 * 1024),
        "--node-manager-port",
        str(free_port()),
        "--object-manager-port",
        str(free_port()),
        "--min-worker-port",
        "0",
        "--max-worker-port",
        "0",  # the OS picks each worker's
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--dashboard-agent-grpc-port",
        str(free_port()),
        "--runtime-env-agent-port",
        str(free_port()),
        "--metrics-export-port",
        str(free_port()),
    ]
    dashboard_url = None
    if head_address is None:
        port = free_port()
        dash = free_port()
        address = f"{HOST}:{port}"
        dashboard_url = f"http://{HOST}:{dash}"
        cmd += [
            "--head",
            "--port",
            str(port),
            "--ray-client-server-port",
            str(free_port()),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            HOST,
            "--dashboard-port",
            str(dash),
        ]
    else:
        address = head_address
        cmd += ["--address", head_address]
    node_env = {**os.environ, **(env or {})}
    node_env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        cmd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=node_env,
        start_new_session=True,
    )

    def ready() -> bool:
        return "Ray runtime started" in _tail(log, 100_000)

    try:
        wait_until(
            "ray start" + (" --head" if head_address is None else ""), ready, proc, log, timeout
        )
    except ServiceUnavailable:
        stop_process(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return RayNode(address, resources, temp_dir, proc, log, dashboard_url)


@dataclass
class RayCluster:
    """A head node plus worker nodes on this machine; `address` is what RAY_ADDRESS takes."""

    head: RayNode
    nodes: list[RayNode] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.head.address

    @property
    def client_env(self) -> dict[str, str]:
        """What a driver needs to join: RAY_ADDRESS and the cluster's auth token."""
        auth = {k: v for k, v in self.env.items() if k.startswith("RAY_AUTH")}
        return {"RAY_ADDRESS": self.address, **auth}

    def add_node(self, resources: dict[str, float], num_cpus: int = 1) -> RayNode:
        node = start_ray_node(resources, self.address, num_cpus=num_cpus, env=self.env)
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.head.stop()


def start_ray_cluster(env: dict[str, str] | None = None) -> RayCluster:
    """Head with resource `node_a` and one worker node with `node_b`, one CPU each. `env` (e.g.
    S3 credentials, PYTHONPATH) is what every node's processes, hence its workers, see.

    The cluster uses Ray's token authentication with a fresh token (`client_env` carries it to
    drivers), as a production cluster should, and so that a token another Ray user left in
    ~/.ray/auth_token (which a head without RAY_AUTH_MODE picks up, and a joining node does
    not) cannot split it."""
    import secrets

    env = {**(env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head = start_ray_node({"node_a": 1}, env=env)
    cluster = RayCluster(head, env=env)
    try:
        cluster.add_node({"node_b": 1})
    except BaseException:
        cluster.stop()
        raise
    return cluster
