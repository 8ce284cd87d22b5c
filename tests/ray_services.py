"""A real multi-node Ray cluster on this machine for the scale-out tests (`tests.services` has
the other services and the helpers shared with them).

    RayNode      one `ray start --block` node; a head and a worker node make a two-node cluster
                 on this machine, each with its own temp dir, ports and custom resource. Ray
                 gives each node the machine's reachable IP, not 127.0.0.1, whatever
                 `--node-ip-address` says (`ray._private.services.resolve_ip_for_localhost`), and
                 a driver does the same with the address it is given; so the nodes' Ray ports
                 are on that IP, as on any multi-node cluster (the dashboard stays on 127.0.0.1)
    RayCluster   the head and worker started by `start_ray_cluster`

Each node runs in its own session and is stopped by its pid, as every service in
`tests.services`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.services import (
    HOST,
    ServiceUnavailable,
    free_port,
    log_tail,
    stop_process,
    wait_until,
)


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

    def node_id(self) -> str:
        """Ray's id of this node (hex), as `ray.get_runtime_context().get_node_id()` gives it on
        the node: read from the raylet's log ("Setting node ID node_id=...")."""
        import re

        logs = self.temp_dir / "session_latest" / "logs"
        for log in sorted(logs.glob("raylet*.out")):
            for line in log.read_text(errors="replace").splitlines():
                if "Setting node ID" in line:
                    found = re.search(r"\b[0-9a-f]{56}\b", line)
                    if found:
                        return found.group(0)
        raise AssertionError(f"no node id in the raylet logs under {logs}")

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
        return "Ray runtime started" in log_tail(log, 100_000)

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
