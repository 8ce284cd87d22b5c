"""A local HTTP server (127.0.0.1, random port) with Range support and scripted failures."""

from __future__ import annotations

import http.server
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class ServerState:
    root: Path
    # path -> number of bytes after which the *first* GET of that path drops the connection
    cut_first_request_at: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    bytes_sent: dict[str, int] = field(default_factory=dict)


class RangeHandler(http.server.BaseHTTPRequestHandler):
    state: ServerState  # set on the subclass made per server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.lstrip("/")
        rng = self.headers.get("Range")
        first = all(p != path for p, _ in self.state.requests)
        self.state.requests.append((path, rng))
        file = self.state.root / path
        if not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        start = 0
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            if not m or int(m.group(1)) >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            start = int(m.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = self.state.cut_first_request_at.get(path) if first else None
        if cut is not None:
            body = body[:cut]
            self.close_connection = True
        self.wfile.write(body)
        self.wfile.flush()
        self.state.bytes_sent[path] = self.state.bytes_sent.get(path, 0) + len(body)

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@dataclass
class LocalServer:
    url: str
    state: ServerState


@pytest.fixture()
def http_server(tmp_path) -> Iterator[LocalServer]:
    root = tmp_path / "served"
    root.mkdir()
    state = ServerState(root)
    handler = type("Handler", (RangeHandler,), {"state": state})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield LocalServer(f"http://127.0.0.1:{server.server_address[1]}", state)
    finally:
        server.shutdown()
        server.server_close()


TINY_PARAMS = """
data:
  source: shapes
  shapes: {num_train: 16, num_val: 6, image_size: 64, min_size: 6, max_size: 14}
shards:
  image_size: 64
  mini_mask_shape: 14
  samples_per_shard: 8
  num_workers: 1
"""


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """A 16 + 6 image shapes dataset at 64 px, built by the real stages (session-wide)."""
    return build_tiny_shards(tmp_path_factory.mktemp("tiny_project"))


def build_tiny_shards(root: Path) -> Path:
    """The tiny shapes dataset built in `root` by the download and shards stages -> its shards
    folder (also bench/logging_outage.py's data)."""
    from pipeline.stages import download, shards

    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(TINY_PARAMS)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        download.main(["--params", "params.yaml"])
        shards.main(["--params", "params.yaml"])
    finally:
        os.chdir(cwd)
    return root / "data" / "shards"


@pytest.fixture(scope="session")
def fault_file(tmp_path_factory) -> Path:
    """The file `pipeline.training.faults` reads on every Ray worker: named in the environment
    before Ray starts (workers inherit it), empty unless a test injects a fault."""
    from pipeline.training import faults

    path = tmp_path_factory.mktemp("faults") / "faults.json"
    path.write_text("{}")
    os.environ[faults.ENV] = str(path)
    return path


@pytest.fixture()
def inject_fault(fault_file: Path):
    """`inject_fault({"kill": {...}} or {"nan_iteration": i})` for this test only."""
    import json

    yield lambda spec: fault_file.write_text(json.dumps(spec))
    fault_file.write_text("{}")


@pytest.fixture(scope="session")
def ray_session(fault_file):
    """One local Ray instance for every test that trains (its start-up costs seconds), started
    as the stages start it (with the dashboard, whose state API Ray Train's cleanup uses)."""
    ray = pytest.importorskip("ray")
    from pipeline.training.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_s3(fault_file, s3_server):
    """A local Ray (with its dashboard, as the stages start it) whose workers see the S3
    server's credentials and endpoint, as a cluster's nodes see them in their environment. Ray
    workers inherit the environment of the Ray that spawns them, so a Ray started before the S3
    server (e.g. `ray_session`'s) is restarted; later tests share this one."""
    ray = pytest.importorskip("ray")
    from pipeline.training.runtime import init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture()
def s3_shards(tiny_shards, s3_bucket, tmp_path) -> str:
    """The tiny dataset's shards written to S3 (`<bucket>/shards`) by the shards stage from a
    copy of its raw folder that is then deleted: the bucket is the only place of its shards and
    val annotations, as for a cluster whose nodes share no disk."""
    import shutil

    from pipeline.params import Params, ShardsParams
    from pipeline.stages import shards

    raw = tmp_path / "raw"
    shutil.copytree(tiny_shards.parent.parent / "data/raw/shapes", raw)
    url = f"{s3_bucket}/shards"
    params = ShardsParams(image_size=64, mini_mask_shape=14, samples_per_shard=8, num_workers=1)
    shards.run(Params(shards=params), shards.ShardsPaths(raw, url))
    shutil.rmtree(raw)
    return url


@pytest.fixture(scope="session")
def auth_server(postgres, tmp_path_factory):
    """`python -m pipeline.server --auth` on its own database of the PostgreSQL fixture, one for
    the session (starting one costs seconds of CPU) -> `tests.pipeline.auth_server.AuthServer`."""
    from tests import services
    from tests.pipeline.auth_server import start_auth_server

    backend = postgres.create_database("mlflow_auth")
    started = start_auth_server(backend, tmp_path_factory.mktemp("auth-server"), postgres.password)
    try:
        yield started
    finally:
        services.stop_process(started.proc)


@pytest.fixture(scope="session")
def team(auth_server) -> dict[str, str]:
    """The users and experiments of docs/cluster.md's walkthrough on `auth_server`
    (`tests.pipeline.auth_server.make_team`)."""
    from tests.pipeline.auth_server import make_team

    return make_team(auth_server.uri)
