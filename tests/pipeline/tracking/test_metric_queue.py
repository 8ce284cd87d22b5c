"""pipeline.tracking.metric_queue: rank 0's metrics sent by a background thread, so training
never waits on the tracking server, and nothing is lost when its database or the server itself
restarts (issue 24).

The slow tests fault real processes while a real logger runs: `python -m pipeline.server` on a
database of the throwaway PostgreSQL (tests/services.py), and a subprocess that logs through
the training loop's own `RankZeroLog` every step (4 metrics, a "checkpoint" flush every 10
steps) with MLflow's HTTP retries cut to ~1 s, so every outage below outlasts MLflow's retry
budget and only our queue can save the points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.tracking import metric_queue
from pipeline.tracking.metric_queue import DROPPED_POINTS_TAG, DROPPED_STEPS_TAG, MetricQueue
from tests import services
from tests.pipeline.registry_helpers import fresh_store

REPO = Path(__file__).resolve().parents[3]
KEYS = ("train/loss", "train/lr", "train/perf/images_per_s", "train/perf/memory_gb")
STEP_S = 0.2  # the "training step" of the logger
BLOCK_BOUND_S = 8.0  # no log or checkpoint call may take longer (the outages last 20 s or more)

LOGGER = textwrap.dedent(
    """
    import json, logging, sys, time
    from pathlib import Path
    from pipeline.training.progress import RankZeroLog

    uri, run_id, buffer, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log = RankZeroLog({"tracking_uri": uri, "run_id": run_id}, True, False, log_buffer=buffer)
    slowest, it = 0.0, 0
    while not (folder / "stop").exists():
        it += 1
        time.sleep(STEP_S)  # the training step
        t0 = time.monotonic()
        log.log(it, {"loss": 1.0 / it}, 1e-3)  # train.log_every 1
        if it % 10 == 0:
            log.flush()  # a checkpoint
        slowest = max(slowest, time.monotonic() - t0)
        (folder / "step.tmp").write_text(str(it))
        (folder / "step.tmp").replace(folder / "step")
    log.close("FINISHED")
    (folder / "result.json").write_text(json.dumps({"steps": it, "slowest_s": slowest}))
    """
).replace("STEP_S", str(STEP_S))


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """The tracking server on its own database of the PostgreSQL fixture (the tests below stop
    and restart that cluster, and kill this server)."""
    workdir = tmp_path_factory.mktemp("queue-server")
    url = postgres.create_database("metric_queue")
    mlflow_server = services.start_mlflow_server(  # one worker: the restart is the cost
        url, str(workdir / "artifacts"), workdir, workers=1
    )
    try:
        yield mlflow_server
    finally:
        mlflow_server.stop()


class Logger:
    """The logging subprocess for one run; it logs until `finish`."""

    def __init__(self, uri: str, run_id: str, buffer: int, folder: Path) -> None:
        folder.mkdir(parents=True)
        self.folder, self.run_id = folder, run_id
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p
            ),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
        }
        self.stderr = folder / "stderr.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOGGER, uri, run_id, str(buffer), str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr.open("wb"),
            env=env,
            start_new_session=True,
        )

    def step(self) -> int:
        try:
            return int((self.folder / "step").read_text())
        except (OSError, ValueError):
            return 0

    def wait_for(self, step: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.step() < step:
            assert self.proc.poll() is None, self.stderr.read_text()[-3000:]
            assert time.monotonic() < deadline, f"step {self.step()} < {step}"
            time.sleep(0.1)

    def finish(self, timeout: float = 180.0) -> dict:
        """Stop logging; the logger sends the rest and ends the run -> its result."""
        (self.folder / "stop").touch()
        try:
            self.proc.wait(timeout)
        finally:
            services.stop_process(self.proc)
        assert self.proc.returncode == 0, self.stderr.read_text()[-3000:]
        return json.loads((self.folder / "result.json").read_text())


def new_run(uri: str, name: str) -> str:
    client = MlflowClient(uri)
    return client.create_run(client.create_experiment(name)).info.run_id


def assert_complete(uri: str, run_id: str, steps: int) -> None:
    """Every metric at every step once, in order, and the run FINISHED with nothing dropped."""
    client = MlflowClient(uri)
    for key in KEYS:
        got = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in got) == list(range(1, steps + 1)), key  # none lost/doubled
    loss = sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)
    assert [m.value for m in loss] == pytest.approx([1 / s for s in range(1, steps + 1)])
    assert [m.timestamp for m in loss] == sorted(m.timestamp for m in loss)  # in step order
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert DROPPED_STEPS_TAG not in run.data.tags


def test_points_reach_the_store_in_order_in_batches(tmp_path: Path) -> None:
    """More points than one request takes, through a real (SQLite) store: all arrive, in order,
    once; flush and close wait for them."""
    uri = fresh_store(tmp_path)
    run_id = new_run(uri, "queue")
    queue = MetricQueue(uri, run_id, max_points=10_000)
    n = metric_queue.MAX_BATCH * 2 + 500
    for step in range(n):
        queue.put({"a": step, "b": -step}, step)
    assert queue.flush(60.0)
    assert queue.close(10.0) == 0 and queue.sent == 2 * n
    for key, sign in (("a", 1), ("b", -1)):
        got = MlflowClient(uri).get_metric_history(run_id, key)
        assert [(m.step, m.value) for m in got] == [(s, sign * s) for s in range(n)]
    with pytest.raises(RuntimeError, match="closed"):
        queue.put({"a": 1.0}, n)


@pytest.mark.slow
def test_postgres_restarted_then_down_for_30_s_loses_nothing(server, postgres, tmp_path):
    """`pg_ctl restart`, then `pg_ctl stop` for 30 s and `pg_ctl start`, under the server while
    a logger logs every step: no call waits for the outage, logging goes on through it, every
    point arrives afterwards, once, in order, and the run ends FINISHED."""
    logger = Logger(server.uri, new_run(server.uri, "pg-outage"), 100_000, tmp_path / "log")
    try:
        logger.wait_for(5)
        postgres.pg_ctl("restart")
        logger.wait_for(logger.step() + 10)
        postgres.pg_ctl("stop")
        try:
            down_at = logger.step()
            time.sleep(30)
        finally:
            postgres.pg_ctl("start")
        during = logger.step() - down_at
        logger.wait_for(logger.step() + 15)
        result = logger.finish()
    finally:
        services.stop_process(logger.proc)
    assert during >= 30, f"only {during} steps logged in 30 s of outage"  # ~150 at 0.2 s
    assert result["slowest_s"] < BLOCK_BOUND_S, result
    assert "unreachable" in logger.stderr.read_text()  # the outage was seen, and ridden out
    assert_complete(server.uri, logger.run_id, result["steps"])


@pytest.mark.slow
def test_server_killed_and_restarted_loses_nothing_and_a_full_buffer_names_its_drops(
    server, tmp_path
):
    """The server SIGKILLed (its whole process group) and started again on the same port 10 s
    later, under two loggers: one with the default buffer loses nothing (as above); one with a
    12-point buffer (3 steps) drops the oldest waiting points, says so in a warning, and the
    run's tags name the dropped steps and count exactly the points missing from it."""
    full = Logger(server.uri, new_run(server.uri, "kill-full"), 100_000, tmp_path / "full")
    tiny = Logger(server.uri, new_run(server.uri, "kill-tiny"), 12, tmp_path / "tiny")
    try:
        full.wait_for(5)
        tiny.wait_for(5)
        server.kill()
        killed, down_at = time.monotonic(), full.step()
        try:
            time.sleep(10)
        finally:
            server.start()  # on the same port: ~10 s or more
        outage = time.monotonic() - killed
        assert full.step() - down_at >= 20  # logging went on while the server was gone
        full.wait_for(full.step() + 15)
        results = {"full": full.finish(), "tiny": tiny.finish()}
    finally:
        services.stop_process(full.proc)
        services.stop_process(tiny.proc)
    for result in results.values():
        assert result["slowest_s"] < min(BLOCK_BOUND_S, outage / 2), (result, outage)
    assert_complete(server.uri, full.run_id, results["full"]["steps"])

    client = MlflowClient(server.uri)
    run = client.get_run(tiny.run_id)
    assert run.info.status == "FINISHED"
    steps = results["tiny"]["steps"]
    stored = {key: {m.step for m in client.get_metric_history(tiny.run_id, key)} for key in KEYS}
    missing = {s for key in KEYS for s in range(1, steps + 1) if s not in stored[key]}
    assert missing and max(missing) < steps  # dropped during the outage, the end all there
    named = set()
    for part in run.data.tags[DROPPED_STEPS_TAG].split(", "):
        first, _, last = part.partition("-")
        named |= set(range(int(first), int(last or first) + 1))
    assert missing <= named  # every lost step is named on the run...
    lost = sum(steps - len(stored[key]) for key in KEYS)
    assert int(run.data.tags[DROPPED_POINTS_TAG]) == lost  # ...and every lost point counted
    assert sum(len(s) for s in stored.values()) == sum(
        len(client.get_metric_history(tiny.run_id, k)) for k in KEYS
    )  # no point stored twice
    assert "dropping the oldest" in tiny.stderr.read_text()
