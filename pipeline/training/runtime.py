"""Ray start-up, shared by train and tune.

`init_ray` joins the cluster named by `RAY_ADDRESS` (a `ray start --head` on this or another
machine), else starts a local Ray with its dashboard. Ray Train V2 frees a run's worker placement
group through the dashboard's state API (for a sweep's stopped trials, see `check_state_api`);
without the dashboard its watcher also logs "State API may be temporarily unavailable" every few
seconds.
"""

from __future__ import annotations

import os
import socket


def init_ray(num_cpus: int | None = None) -> None:
    """Join RAY_ADDRESS or start a local Ray with its dashboard; no-op when Ray is up."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
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
