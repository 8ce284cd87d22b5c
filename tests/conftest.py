"""Session-wide real services for every test folder: an S3 server, a throwaway PostgreSQL
(tests/services.py) and a two-node Ray cluster (tests/ray_services.py), each started on first
use and stopped by pid at the end of the session. A test that needs one skips only when it
cannot start here."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import ray_services, services


@pytest.fixture(scope="session", autouse=True)
def _session_outside_the_checkout(tmp_path_factory) -> Iterator[None]:
    """The session's fixtures (module- and session-scoped ones build whole projects) run in an
    empty folder outside the checkout too: see `_start_outside_the_checkout`."""
    start = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("session_cwd"))
    yield
    os.chdir(start)


@pytest.fixture(autouse=True)
def _start_outside_the_checkout(tmp_path_factory, monkeypatch) -> None:
    """Every test starts in an empty folder outside the checkout. Relative paths are taken from
    the project root (`pipeline.layout.project_root`), which is the project of the working
    directory when a params file lies outside any project: a test's params file in a temporary
    folder must not make the checkout its project. Tests that want a working directory chdir."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[services.S3Server]:
    """moto's S3 server on 127.0.0.1; its credentials and endpoint are put in os.environ for the
    rest of the session (as a user's shell would have them), so every client, Ray node and
    subprocess started afterwards finds them the production way."""
    try:
        server = services.start_s3(tmp_path_factory.mktemp("s3"))
    except services.ServiceUnavailable as e:
        pytest.skip(f"S3 server cannot start here: {e}")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in server.env.items():
            mp.setenv(key, value)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture()
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket for one test -> "s3://<name>"."""
    import re

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    return s3_server.make_bucket(f"t-{name}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[services.Postgres]:
    try:
        server = services.start_postgres()
    except services.ServiceUnavailable as e:
        pytest.skip(f"PostgreSQL cannot start here: {e}")
    try:
        yield server
    finally:
        server.stop()
        import shutil

        shutil.rmtree(server.datadir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(s3_server) -> Iterator[ray_services.RayCluster]:
    """A real two-node Ray cluster on this machine (head: resource `node_a`, second node:
    `node_b`, one CPU each), reached through RAY_ADDRESS by subprocesses the tests start. Its
    nodes see the S3 credentials (as a cluster's nodes would from their environment) and this
    checkout on PYTHONPATH, so workers import the code under test."""
    import os
    from pathlib import Path

    pytest.importorskip("ray")
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(s3_server.env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    try:
        cluster = ray_services.start_ray_cluster(env)
    except services.ServiceUnavailable as e:
        pytest.skip(f"a two-node Ray cluster cannot start here: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def s3_proxy(s3_server, tmp_path_factory) -> Iterator:
    """A TCP proxy in front of the S3 server, in its own process (`tests.s3_proxy`), that a test
    switches off for a while (`s3_proxy.outage(seconds)`): object storage unreachable without
    losing the buckets moto keeps in memory."""
    from tests.s3_proxy import start_proxy

    try:
        proxy = start_proxy(s3_server.endpoint, tmp_path_factory.mktemp("s3_proxy"))
    except services.ServiceUnavailable as e:
        pytest.skip(f"the S3 proxy cannot start here: {e}")
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture()
def s3_via_proxy(s3_proxy, monkeypatch):
    """This test's S3 clients (s3fs, boto3, pyarrow) reach the server through `s3_proxy`
    (AWS_ENDPOINT_URL), with a 60 s retry budget (`MRCNN_STORAGE_RETRY_S`) unless the test
    sets another; the proxy is up again afterwards."""
    import s3fs

    from mrcnn.data import retries

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_proxy.endpoint)
    monkeypatch.setenv(retries.ENV, "60")
    s3fs.S3FileSystem.clear_instance_cache()  # instances made for the direct endpoint
    try:
        yield s3_proxy
    finally:
        s3_proxy.outage(0)
        s3fs.S3FileSystem.clear_instance_cache()
