"""Metrics sent to MLflow from a background thread, so a tracking server or database that is
down never stalls training (issue 24).

    queue = open_queue(uri, run_id, max_points=100_000)   # resume_on_worker does this
    queue.put({"train/loss": 0.7}, step=20)                 # returns at once, server up or not
    queue.flush(5.0)                                        # at a checkpoint: a bounded wait
    queue.close(600.0)                                      # end_on_worker: the rest, then stop

Why not MLflow's own asynchronous logging (`log_metrics(..., synchronous=False)`, its
`AsyncLoggingQueue`): it hands batches to a pool of 10 threads (no order between them), drops a
batch for good once MLflow's HTTP retries give up (an error line, nothing on the run), keeps an
unbounded queue and its flush waits without a bound. Here:

- **One sender thread, in step order.** Points wait in a deque; the thread sends up to
  `MAX_BATCH` of them at a time with `MlflowClient.log_batch`, oldest first.
- **Nothing is given up on.** A failed send (after MLflow's own retries:
  `MLFLOW_HTTP_REQUEST_MAX_RETRIES`, `_BACKOFF_FACTOR`, `_TIMEOUT`) puts the batch back at the
  front and is retried after a pause (`RETRY_MIN_S` doubling to `RETRY_MAX_S`) for as long as
  the queue is open. Only an error that says the request itself is wrong (HTTP 4xx: a deleted or
  ended run, an invalid value) drops the batch, and that drop is recorded like the ones below.
- **No duplicates.** Each point's timestamp is taken when it is put, so a resend is
  byte-for-byte the same point; MLflow's SQL store (behind every server) keeps one row per
  (key, timestamp, step, value) and skips the ones it already has, which makes a resend of a
  batch that was stored but whose answer was lost (a server killed mid-request) harmless.
- **Bounded.** At most `max_points` points wait (`train.log_buffer`); past it the oldest
  waiting points are dropped, a warning says so, and the run gets the tags
  `tracking.dropped_steps` (the steps of the dropped points, as ranges: "20-340, 400") and
  `tracking.dropped_points` (how many), sent with the next batch that gets through. Never
  silently.

The queue of the active run is process-wide (`current`), as MLflow's active run is:
`pipeline.tracking.active.log_metrics` puts into it when one is open.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping

logger = logging.getLogger(__name__)

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch request
RETRY_MIN_S = 1.0  # pause after a failed send, doubled per failure up to RETRY_MAX_S
RETRY_MAX_S = 15.0
DROPPED_STEPS_TAG = "tracking.dropped_steps"
DROPPED_POINTS_TAG = "tracking.dropped_points"
TAG_MAX_CHARS = 5000  # MLflow allows 8000 characters in a tag value

Point = tuple[str, float, int, int]  # (key, value, timestamp in ms, step)


class MetricQueue:
    """Metric points of one run, sent in order by a background thread.

    Args:
        uri: the tracking URI (a server, or a database URL).
        run_id: the run the points belong to (it must exist; it need not be active).
        max_points: the most points waiting to be sent; past it the oldest are dropped and
            recorded on the run (`DROPPED_STEPS_TAG`, `DROPPED_POINTS_TAG`).
    """

    def __init__(self, uri: str, run_id: str, max_points: int) -> None:
        from mlflow import MlflowClient

        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        self.uri, self.run_id, self.max_points = uri, run_id, max_points
        self._client = MlflowClient(uri)
        self._cond = threading.Condition()
        self._waiting: deque[Point] = deque()
        self._in_flight = 0  # points of the batch being sent
        self._dropped: list[list[int]] = []  # [first, last] step ranges of dropped points
        self._dropped_points = 0
        self._range_open = False  # the next drop extends the last range (nothing sent since)
        self._tags_sent = 0  # _dropped_points as last recorded on the run
        self._down_since: float | None = None  # monotonic time of the first failed send
        self._closing = False
        self._stop = threading.Event()  # set by close: ends a pause between retries
        self.sent = 0  # points MLflow accepted
        self._thread = threading.Thread(target=self._send_loop, name="metric-queue", daemon=True)
        self._thread.start()

    # -- the training thread ---------------------------------------------------------------

    def put(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue `metrics` at `step`, stamped now; never waits for the network."""
        now = int(time.time() * 1000)
        with self._cond:
            if self._closing:
                raise RuntimeError("the metric queue is closed")
            self._waiting.extend(
                (sys.intern(k), float(v), now, int(step)) for k, v in metrics.items()
            )
            self._trim()
            self._cond.notify_all()

    def flush(self, timeout_s: float, through_outage: bool = False) -> bool:
        """Wait until every point put so far has reached MLflow (or was dropped), at most
        `timeout_s` seconds -> whether it did. While sends are failing it returns at once,
        unless `through_outage` (the end of a run waits for the server to come back)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._idle():
                left = deadline - time.monotonic()
                if left <= 0 or (self._down_since is not None and not through_outage):
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout_s: float) -> int:
        """Send what is left (waiting out an outage for at most `timeout_s` seconds), then stop
        the sender -> how many points were never sent (each named in a warning)."""
        self.flush(timeout_s, through_outage=True)
        with self._cond:
            self._closing = True
            self._stop.set()
            self._cond.notify_all()
            left = list(self._waiting)
            unsent = len(left) + self._in_flight
            untagged = self._dropped_points != self._tags_sent
        self._thread.join(timeout=1.0)  # a send stuck in MLflow's retries is left to die
        if unsent:
            steps = f"{left[0][3]}-{left[-1][3]}" if left else "of the batch being sent"
            logger.warning(
                "MLflow at %s still unreachable after %.0f s at the end of the run: %d metric "
                "points of run %s were not sent (steps %s)",
                self.uri,
                timeout_s,
                unsent,
                self.run_id,
                steps,
            )
        if untagged:
            logger.warning(
                "run %s: %d dropped metric points (steps %s) could not be recorded on the run",
                self.run_id,
                self._dropped_points,
                self.dropped_steps(),
            )
        return unsent

    def dropped_steps(self) -> str:
        """The steps of every point dropped so far, as ranges ("" when none)."""
        with self._cond:
            return format_ranges(self._dropped)

    # -- internals (under self._cond) ----------------------------------------------------------

    def _idle(self) -> bool:
        return not self._waiting and not self._in_flight and self._tags_sent == self._dropped_points

    def _trim(self) -> None:
        """Drop the oldest waiting points past `max_points` (the batch in flight is kept)."""
        excess = len(self._waiting) - self.max_points
        if excess <= 0:
            return
        first = self._dropped_points == 0 or not self._range_open
        for _ in range(excess):
            self._note_dropped(self._waiting.popleft()[3])
        if first:
            logger.warning(
                "train.log_buffer: more than %d metric points waiting for MLflow at %s: "
                "dropping the oldest (steps %s so far); the run's tag %s will name them",
                self.max_points,
                self.uri,
                format_ranges(self._dropped),
                DROPPED_STEPS_TAG,
            )

    def _note_dropped(self, step: int) -> None:
        self._dropped_points += 1
        if self._range_open and self._dropped:
            last = self._dropped[-1]
            last[0], last[1] = min(last[0], step), max(last[1], step)
        else:
            self._dropped.append([step, step])
            self._range_open = True

    # -- the sender thread ---------------------------------------------------------------------

    def _send_loop(self) -> None:
        from mlflow.entities import Metric, RunTag

        pause = RETRY_MIN_S
        while True:
            with self._cond:
                while not self._closing and self._idle():
                    self._cond.wait()
                if self._closing:
                    return
                batch = [self._waiting.popleft() for _ in range(min(MAX_BATCH, len(self._waiting)))]
                self._in_flight = len(batch)
                dropped = self._dropped_points
                tags = []
                if dropped != self._tags_sent:
                    tags = [
                        RunTag(DROPPED_STEPS_TAG, truncate(format_ranges(self._dropped))),
                        RunTag(DROPPED_POINTS_TAG, str(dropped)),
                    ]
            try:
                self._client.log_batch(
                    self.run_id,
                    metrics=[Metric(k, v, t, s) for k, v, t, s in batch],
                    tags=tags,
                    synchronous=True,
                )
            except Exception as e:  # noqa: BLE001 - any failure: keep the points, retry
                if self._refused(e, batch):
                    continue
                with self._cond:
                    self._waiting.extendleft(reversed(batch))
                    self._in_flight = 0
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                        logger.warning(
                            "MLflow at %s unreachable (%s): training goes on; %d metric points "
                            "kept to send later (at most %d: train.log_buffer), retrying",
                            self.uri,
                            _short(e),
                            len(self._waiting),
                            self.max_points,
                        )
                    self._trim()
                    self._cond.notify_all()
                self._stop.wait(pause)  # not woken by put(): a pause per failure, not per step
                pause = min(pause * 2, RETRY_MAX_S)
                continue
            pause = RETRY_MIN_S
            with self._cond:
                self._in_flight = 0
                self.sent += len(batch)
                if tags:
                    self._tags_sent = dropped
                self._range_open = False
                if self._down_since is not None:
                    logger.warning(
                        "MLflow at %s reachable again after %.0f s; sending %d waiting points "
                        "(%d dropped so far%s)",
                        self.uri,
                        time.monotonic() - self._down_since,
                        len(self._waiting),
                        self._dropped_points,
                        f": steps {format_ranges(self._dropped)}" if self._dropped else "",
                    )
                    self._down_since = None
                self._cond.notify_all()

    def _refused(self, error: Exception, batch: list[Point]) -> bool:
        """A batch the server answered with HTTP 4xx (the run deleted or ended, a bad value):
        sending it again cannot help, so it is dropped and recorded -> whether it was."""
        from mlflow.exceptions import MlflowException

        code = error.get_http_status_code() if isinstance(error, MlflowException) else 500
        if not 400 <= code < 500:
            return False
        with self._cond:
            self._range_open = False
            for point in batch:
                self._note_dropped(point[3])
            self._range_open = False
            self._in_flight = 0
            self._cond.notify_all()
        logger.warning(
            "MLflow refused %d metric points of run %s (steps %d-%d): %s",
            len(batch),
            self.run_id,
            batch[0][3],
            batch[-1][3],
            _short(error),
        )
        return True


def format_ranges(ranges: list[list[int]]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def truncate(text: str, limit: int = TAG_MAX_CHARS) -> str:
    """`text` cut in the middle to fit a tag value."""
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def _short(error: Exception) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 200 else text[:197] + "..."


_current: MetricQueue | None = None


def open_queue(uri: str, run_id: str, max_points: int) -> MetricQueue:
    """A queue for run `run_id`, made the process's current one (closing any earlier one)."""
    global _current
    if _current is not None:
        _current.close(0.0)
    _current = MetricQueue(uri, run_id, max_points)
    return _current


def current(run_id: str | None = None) -> MetricQueue | None:
    """The open queue (of run `run_id` when given), or None."""
    if _current is None or (run_id is not None and _current.run_id != run_id):
        return None
    return _current


def close_current(timeout_s: float) -> int:
    """Close the current queue (`MetricQueue.close`) -> points never sent; 0 without one."""
    global _current
    queue, _current = _current, None
    return queue.close(timeout_s) if queue is not None else 0
