"""Training images/s with the tracking server killed for part of the run vs. never down.

The real worker loop (`pipeline.training.loop.train_loop`, in this process under the test
suite's one-worker stand-in for Ray Train) trains a tiny model on CPU on tiny shapes shards and
logs to a real `python -m pipeline.server` on a throwaway PostgreSQL (tests/services.py) every
`--log-every` iterations. In the outage scenario a thread SIGKILLs the server `--down-at` s
into the loop and starts it again on the same port `--down-for` s later. `--sync` measures the
old path (`mlflow.log_metrics` on the training thread, no metric queue) for comparison.

    python bench/logging_outage.py [--iterations 2400] [--log-every 5] [--sync]

Prints per scenario the loop's wall time and images/s (with the end of the run, which waits for
a server that is down), the training images/s from the first to the last log step (the
timestamps the loop logged), and the mean of the per-window images/s the loop logged
(`train/perf/images_per_s`) for the windows logged while the server was down.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import services  # noqa: E402
from tests.pipeline.conftest import build_tiny_shards  # noqa: E402
from tests.pipeline.training.fake_ray import FakeRayTrain  # noqa: E402
from tests.pipeline.training.loop_helpers import loop_config  # noqa: E402


def scenario(server, shards, root, args, outage: bool) -> dict:
    """One training run -> wall, images/s, and the outage window (monotonic -> epoch ms)."""
    from mlflow import MlflowClient

    from pipeline.training import loop

    client = MlflowClient(server.uri)
    name = f"bench-{'down' if outage else 'up'}-{time.time_ns()}"
    run_id = client.create_run(client.create_experiment(name)).info.run_id
    config = loop_config(
        shards, server.uri, run_id, iterations=args.iterations, log_every=args.log_every,
        checkpoint_every=args.iterations,
    )  # fmt: skip
    window: list[float] = []

    def fault() -> None:
        time.sleep(args.down_at)
        window.append(time.time())
        server.kill()
        time.sleep(args.down_for)
        server.start()
        window.append(time.time())

    with pytest.MonkeyPatch.context() as mp:
        FakeRayTrain(root / name).install(mp)
        if args.sync:  # the old path: no queue, mlflow.log_metrics on the training thread
            from pipeline.tracking import metric_queue

            mp.setattr(metric_queue, "open_queue", lambda *a: None)
        thread = threading.Thread(target=fault, daemon=True) if outage else None
        start = time.monotonic()
        if thread:
            thread.start()
        try:
            loop.train_loop(config)
            error = None
        except Exception as e:  # noqa: BLE001 - the old path dies when MLflow gives up
            error = f"{type(e).__name__}: {str(e)[:120]}"
        wall = time.monotonic() - start
        if thread:
            thread.join()
    images = args.iterations * config["train"]["batch_size"]
    history = client.get_metric_history(run_id, "train/perf/images_per_s")
    down = [
        m.value for m in history if window and window[0] * 1000 <= m.timestamp <= window[1] * 1000
    ]
    first, last = min(history, key=lambda m: m.step), max(history, key=lambda m: m.step)
    trained_s = (last.timestamp - first.timestamp) / 1000  # first to last log step
    trained = (last.step - first.step) * config["train"]["batch_size"]
    return {
        "scenario": "server down" if outage else "never down",
        "wall_s": round(wall, 1),  # with the end of the run's wait for the server
        "images_per_s": round(images / wall, 2),
        "training_images_per_s": round(trained / trained_s, 2),
        "windows_logged": len(history),
        "down_s": round(window[1] - window[0], 1) if window else 0.0,
        "images_per_s_while_down": round(sum(down) / len(down), 2) if down else None,
        "status": client.get_run(run_id).info.status,
        "error": error,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=2400)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--down-at", type=float, default=20.0, help="s into the loop")
    ap.add_argument("--down-for", type=float, default=30.0, help="s before the restart begins")
    ap.add_argument("--sync", action="store_true", help="the old synchronous logging")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-logging-"))
    shards = build_tiny_shards(root / "project")
    pg = services.start_postgres()
    server = None
    try:
        server = services.start_mlflow_server(pg.url, str(root / "artifacts"), root)
        for outage in (False, True):
            print(scenario(server, shards, root, args, outage), flush=True)
    finally:
        if server is not None:
            server.stop()
        pg.stop()
        shutil.rmtree(pg.datadir.parent, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
