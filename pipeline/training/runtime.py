"""Ray start-up, shared by train and tune, and `Sealed`: what the driver sends its workers outside
every config Ray shows (the MLflow login, `pipeline.training.driver.loop_config`).

`init_ray` joins the cluster named by `RAY_ADDRESS` (a `ray start --head` on this or another
machine), else starts a local Ray with its dashboard. Ray Train V2 frees a run's worker placement
group through the dashboard's state API (for a sweep's stopped trials, see `check_state_api`);
without the dashboard its watcher also logs "State API may be temporarily unavailable" every few
seconds.

What a successful run does not print (`quiet_ray`):
- Ray's colour codes around its worker-log prefixes (`(RayTrainWorker pid=...)`) when stdout or
  stderr is not a terminal, i.e. a log file (`RAY_COLOR_PREFIX=0`, read by the driver as it
  prints every worker line);
- for the local Ray we start: Ray's warning that it enabled token authentication by default
  (it still does: the token is made and used as before; only the notice, which asks for
  `RAY_AUTH_MODE=disabled` to opt out, is filtered), and Ray Train's preemption watcher
  (`RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0`): it watches for drained nodes (spot / TPU
  reclamation), which a single machine has none of, and its actor's start logs an error-level
  line about its constructor arguments in the object store. A cluster joined through
  `RAY_ADDRESS` keeps the watcher. Each is `setdefault`: a value in the environment wins.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

# The logger and the start of Ray's notice when `ray.init` enables token authentication for a
# new local cluster (ray/_private/authentication/authentication_token_setup.py).
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


class _DropTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TOKEN_NOTICE)


def quiet_ray(local: bool, tty: bool | None = None) -> None:
    """Before `ray.init`: no colour codes in logs that are not a terminal (`tty`: default,
    whether stdout and stderr both are), and for a `local` Ray we start no token notice and
    no preemption watcher (the module doc says why)."""
    if tty is None:
        tty = sys.stdout.isatty() and sys.stderr.isatty()
    if not tty:
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if local:
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        notice = logging.getLogger(TOKEN_NOTICE_LOGGER)
        if not any(isinstance(f, _DropTokenNotice) for f in notice.filters):
            notice.addFilter(_DropTokenNotice())


def init_ray(num_cpus: int | None = None) -> None:
    """Join RAY_ADDRESS or start a local Ray with its dashboard; no-op when Ray is up."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    quiet_ray(local=not address)
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    port = free_port()
    # Ray's own processes look the dashboard up through this variable; without it they give up
    # when the machine runs more than one Ray instance ("Found multiple active Ray instances").
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        log_to_driver=True,
        configure_logging=False,
    )


class Sealed:
    """A value for the Ray workers that no config Ray shows may hold (the MLflow login): it
    travels through Ray's object store, the config holds only this handle (`str`: "Sealed").
    Ray Train keeps a run's `train_loop_config` as its dashboard shows it (with
    `RAY_TRAIN_ENABLE_STATE_TRACKING=1`), and a runtime_env's `env_vars` are shown with the job
    and logged by Ray's runtime-env agent: neither sees what is sealed. The driver must be
    connected to Ray (`init_ray`); the value lives while the driver holds the handle."""

    def __init__(self, value: Any) -> None:
        import ray

        self._ref = ray.put(value)

    def open(self) -> Any:
        """The value (on a worker: fetched from the object store)."""
        import ray

        return ray.get(self._ref)

    def __repr__(self) -> str:
        return "Sealed"


def seal(value: Any) -> Sealed | None:
    """`Sealed(value)`, or None for an empty value (nothing to send)."""
    return Sealed(value) if value else None


def unseal(sealed: Sealed | None, empty: Any = None) -> Any:
    """The value of `seal`'s result (`empty` for None)."""
    return empty if sealed is None else sealed.open()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_state_api() -> None:
    """Raise unless Ray's state API answers. A trial that ASHA stops is killed with its Ray
    Train controller; Ray Train V2 then removes the trial's worker placement group from a
    watcher that polls the state API. Without it the workers' resources stay reserved and the
    next trial waits for them forever."""
    from ray.util.state import list_actors

    try:
        list_actors(limit=1, timeout=20, raise_on_missing_output=False)
    except Exception as e:
        raise RuntimeError(
            "Ray's state API does not answer (Ray started without its dashboard?). ASHA stops "
            "trials early, and Ray Train frees a stopped trial's workers through that API: "
            "start Ray with the dashboard (`ray start --head`, or leave Ray to pipeline.tune), "
            f"or set tune.scheduler: fifo. ({type(e).__name__}: {e})"
        ) from None
