"""What a person sees while a run trains: one live line in the driver, fed by rank 0.

Rank 0 (`RankZeroLog`) logs the window means of the loss terms, lr, images/s and memory to
MLflow on every log step (`train/loss`, `train/lr`, `train/perf/images_per_s`, ...:
`pipeline.tracking.names`; queued, sent by a background thread, so a tracking server that is
down never stalls training: `pipeline.tracking.metric_queue`) and keeps a small progress record
in the run's storage (`PROGRESS_FILE`, at most every `WRITE_EVERY_S` seconds, and at every
validation):

    {"iteration": 120, "total": 800, "loss": 0.81, "lr": 9.8e-4, "images_per_s": 13.2,
     "eta_s": 372, "metric": "segm_AP", "val": {"iteration": 100, "value": 0.51},
     "best": {"iteration": 100, "value": 0.51}, "stopped": null}

The driver (`ProgressLine`, around `trainer.fit()`) reads it every second and shows it as one
line (`format_progress`): a tqdm bar when stdout is a terminal, else a plain log line every
`plain_every_s` seconds and at each validation. The workers log only what is rare (a resume, a
warning), so Ray does not stream a line per log step from them.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from mrcnn.data import storage
from pipeline.tracking import active, names
from pipeline.tracking import training as tracked_run

logger = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"  # in the run directory, rewritten by rank 0
WRITE_EVERY_S = 2.0


class RankZeroLog:
    """Rank 0's log: MLflow metrics on log steps and the progress record (silent elsewhere).

    Args:
        mlflow_cfg: {"tracking_uri", "run_id"} of the run to log into (resumed here).
        enabled: rank 0; other ranks get an instance that does nothing.
        resumed: tags the MLflow run `train.status` resumed instead of running.
        start, total: the first iteration of this attempt and the run's last.
        global_batch: images per iteration (for images/s).
        device: for the memory figure.
        metric: the validation metric the record shows (`train.select_metric`), or None.
        write: stores the progress record (the loop: a file in the run's storage).
        log_buffer: the most metric points held while MLflow is unreachable
            (`train.log_buffer`); past it the oldest are dropped and named on the run.
    """

    def __init__(
        self,
        mlflow_cfg: dict[str, Any],
        enabled: bool,
        resumed: bool,
        *,
        start: int = 0,
        total: int = 0,
        global_batch: int = 1,
        device: torch.device | None = None,
        metric: str | None = None,
        write: Callable[[dict[str, Any]], None] | None = None,
        log_buffer: int = 100_000,
    ) -> None:
        self.enabled, self.global_batch = enabled, global_batch
        self.device = device or torch.device("cpu")
        self.write, self.written = write, 0.0
        self.record: dict[str, Any] = {
            "iteration": start,
            "total": total,
            "metric": metric,
            "val": None,
            "best": None,
            "stopped": None,
        }
        self.window = (time.time(), start)
        if enabled:
            status = "resumed" if resumed else "running"
            tracked_run.resume_on_worker(
                mlflow_cfg["tracking_uri"], mlflow_cfg["run_id"], status, buffer=log_buffer
            )

    def log(self, it: int, means: dict[str, float], lr: float) -> None:
        """A log step: `means` of the loss terms over the window ending at iteration `it`."""
        if not self.enabled:
            return
        now = time.time()
        t0, it0 = self.window
        dt, n = max(now - t0, 1e-9), max(it - it0, 1)
        images_per_s = n * self.global_batch / dt
        perf = {"images_per_s": images_per_s, "memory_gb": memory_gb(self.device)}
        metrics = names.prefixed(names.TRAIN, {**means, "lr": lr})
        active.log_metrics(metrics | names.prefixed(names.PERF, perf), step=it)
        self.record |= {
            "iteration": it,
            "loss": means.get("loss"),
            "lr": lr,
            "images_per_s": round(images_per_s, 3),
            "eta_s": round((self.record["total"] - it) * dt / n, 1),
        }
        self._write()
        self.window = (now, it)

    def validated(self, it: int, value: float, best: tuple[int | None, float | None]) -> None:
        """A validation at `it` gave `value`; `best` = (iteration, value) of the best so far."""
        self.record["val"] = {"iteration": it, "value": value}
        if best[0] is not None:
            self.record["best"] = {"iteration": best[0], "value": best[1]}
        self._write(force=True)

    def paused(self, seconds: float) -> None:
        """Leave `seconds` (a validation, a checkpoint) out of the window's images/s."""
        t0, it0 = self.window
        self.window = (t0 + seconds, it0)

    def stopped(self, reason: str) -> None:
        self.record["stopped"] = reason
        self._write(force=True)

    def _write(self, force: bool = False) -> None:
        if not self.enabled or self.write is None:
            return
        if force or time.time() - self.written >= WRITE_EVERY_S:
            self.write(dict(self.record))
            self.written = time.time()

    def flush(self) -> None:
        """At a checkpoint: the metrics logged so far reach MLflow before it is reported (a
        bounded wait, none while the server is unreachable)."""
        if self.enabled:
            tracked_run.flush_on_worker()

    def close(self, status: str = "FINISHED") -> None:
        """The last record; the queued metrics are sent (waiting a bounded time for a server
        that is down) and the MLflow run is ended with `status`."""
        if self.enabled:
            self._write(force=True)
            tracked_run.end_on_worker(status)


def memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated, or this process's resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import psutil

    return psutil.Process().memory_info().rss / 1e9


def hms(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def format_progress(record: dict[str, Any]) -> str:
    """The progress record as one line, e.g. `iter 120/800 loss 0.8123 lr 9.8e-04 13.2 img/s
    eta 6m12s | val segm_AP 0.512 @100 (best 0.530 @80)`."""
    parts = [f"iter {record.get('iteration', 0)}/{record.get('total', '?')}"]
    if record.get("loss") is not None:
        parts.append(f"loss {record['loss']:.4f}")
    if record.get("lr") is not None:
        parts.append(f"lr {record['lr']:.2e}")
    if record.get("images_per_s") is not None:
        parts.append(f"{record['images_per_s']:.1f} img/s")
    if record.get("eta_s") is not None:
        parts.append(f"eta {hms(record['eta_s'])}")
    line = " ".join(parts)
    val, best = record.get("val"), record.get("best")
    if val:
        line += f" | val {record.get('metric') or 'AP'} {val['value']:.3f} @{val['iteration']}"
        if best:
            line += f" (best {best['value']:.3f} @{best['iteration']})"
    if record.get("stopped"):
        line += f" | stopped: {record['stopped']}"
    return line


class ProgressLine:
    """The driver's live line, following the progress record of the run at `run_dir` (a folder
    or a URL) from a thread while the `with` block runs.

    tty: draw a tqdm bar (default: when stdout is a terminal); else log a plain line at most
    every `plain_every_s` seconds, at every new validation and at the end."""

    def __init__(
        self,
        run_dir: storage.Location,
        *,
        poll_s: float = 1.0,
        plain_every_s: float = 15.0,
        tty: bool | None = None,
    ) -> None:
        self.path = storage.join(run_dir, PROGRESS_FILE)
        self.poll_s, self.plain_every_s = poll_s, plain_every_s
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.last: dict[str, Any] | None = None
        self.last_line = 0.0
        self.bar = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="progress", daemon=True)

    def __enter__(self) -> ProgressLine:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.poll(final=True)
        if self.bar is not None:
            self.bar.close()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(storage.read_text(self.path))
        except (OSError, ValueError):  # not written yet, or caught half-written
            return None

    def poll(self, final: bool = False) -> None:
        """Show the record if it changed (the thread calls this every `poll_s` seconds)."""
        record = self.read()
        if record is None or record == self.last:
            return
        new_val = self.last is None or record.get("val") != self.last.get("val")
        self.last = record
        line = format_progress(record)
        if self.tty:
            self._draw(record, line)
        elif final or new_val or time.time() - self.last_line >= self.plain_every_s:
            logger.info("%s", line)
            self.last_line = time.time()

    def _draw(self, record: dict[str, Any], line: str) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=record.get("total") or None,
                initial=record.get("iteration", 0),
                file=sys.stdout,
                dynamic_ncols=True,
                bar_format="{percentage:3.0f}%|{bar:12}| {postfix}",
            )
        self.bar.n = record.get("iteration", 0)
        self.bar.set_postfix_str(line, refresh=True)
