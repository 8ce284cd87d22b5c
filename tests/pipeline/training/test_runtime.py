"""Ray start-up, with `ray.init` and the state API replaced by recorders
(no Ray is started here; the real start-up runs in the train and sweep tests)."""

from __future__ import annotations

import logging
import os
import socket

import pytest
import ray

from pipeline.training import runtime


@pytest.fixture()
def ray_init(monkeypatch, quiet_env) -> list[dict]:
    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    return calls


def test_a_local_ray_gets_its_dashboard_on_a_free_port(ray_init, monkeypatch):
    runtime.init_ray(num_cpus=3)
    [kwargs] = ray_init
    port = kwargs["dashboard_port"]
    assert kwargs == {
        "num_cpus": 3,
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": port,
        "log_to_driver": True,
        "configure_logging": False,
    }
    assert os.environ["RAY_API_SERVER_ADDRESS"] == f"http://127.0.0.1:{port}"


def test_ray_address_joins_the_cluster(ray_init, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    runtime.init_ray(num_cpus=3)
    assert ray_init == [{"address": "10.0.0.5:6379", "log_to_driver": True}]


def test_nothing_happens_when_ray_is_up(ray_init, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    runtime.init_ray()
    assert ray_init == []


def test_free_port_can_be_bound():
    port = runtime.free_port()
    assert 1024 <= port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_check_state_api(monkeypatch):
    import ray.util.state

    seen = {}

    def answers(**kwargs):
        seen.update(kwargs)
        return []

    monkeypatch.setattr(ray.util.state, "list_actors", answers)
    runtime.check_state_api()
    assert seen == {"limit": 1, "timeout": 20, "raise_on_missing_output": False}

    def silent(**kwargs):
        raise ConnectionError("refused")

    monkeypatch.setattr(ray.util.state, "list_actors", silent)
    with pytest.raises(RuntimeError) as e:
        runtime.check_state_api()
    message = str(e.value)
    assert "state API does not answer" in message and "tune.scheduler: fifo" in message
    assert message.endswith("(ConnectionError: refused)")


QUIET = ("RAY_COLOR_PREFIX", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")


@pytest.fixture()
def quiet_env(monkeypatch):
    """quiet_ray's variables unset, and the token notice's logger restored afterwards."""
    import logging

    for name in QUIET:  # set, then unset: what quiet_ray sets is undone after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    logger = logging.getLogger(runtime.TOKEN_NOTICE_LOGGER)
    monkeypatch.setattr(logger, "filters", list(logger.filters))
    return logger


def _worker_line() -> str:
    """A worker's log line as the driver prints it (Ray's own `print_worker_logs`)."""
    import io

    from ray._private import worker

    out = io.StringIO()
    data = {"pid": 4242, "ip": "10.0.0.1", "localhost": "10.0.0.1", "actor_name": "RayTrainWorker"}
    worker.print_worker_logs({**data, "lines": ["Moving model to device: cpu"]}, out)
    return out.getvalue()


def test_a_log_file_gets_no_colour_codes(quiet_env):
    """Issue 22 item 10: `(RayTrainWorker pid=...)` came wrapped in ESC[36m ... ESC[0m in log
    files; in a terminal the colours stay."""
    assert "\x1b[" in _worker_line()  # Ray's default
    runtime.quiet_ray(local=False, tty=True)
    assert "\x1b[" in _worker_line()
    runtime.quiet_ray(local=False, tty=False)
    line = _worker_line()
    assert "\x1b" not in line and line.startswith("(RayTrainWorker pid=4242)")


def test_a_local_ray_starts_without_the_token_notice_and_the_preemption_watcher(
    quiet_env, caplog, monkeypatch
):
    """Ray's own notice (its function, its logger) is dropped; token authentication itself is
    left on. The preemption watcher (drained nodes) is off on the one machine we start."""
    from ray._private.authentication import authentication_token_setup as auth

    # An earlier Ray start in this process (another test's) left the filter on the logger.
    notice = logging.getLogger(runtime.TOKEN_NOTICE_LOGGER)
    kept = [f for f in notice.filters if not isinstance(f, runtime._DropTokenNotice)]
    monkeypatch.setattr(notice, "filters", kept)
    monkeypatch.setattr(notice, "propagate", True)
    with caplog.at_level("WARNING"):
        auth._warn_token_auth_enabled()
    assert runtime.TOKEN_NOTICE in caplog.text  # what a run printed before
    caplog.clear()
    runtime.quiet_ray(local=True, tty=True)
    with caplog.at_level("WARNING"):
        auth._warn_token_auth_enabled()
        auth._warn_token_auth_disabled()  # any other notice still shows
    assert runtime.TOKEN_NOTICE not in caplog.text
    assert "Token authentication is disabled" in caplog.text
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert "RAY_COLOR_PREFIX" not in os.environ  # a terminal keeps its colours


def test_a_joined_cluster_keeps_its_preemption_watcher(quiet_env, ray_init, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    runtime.init_ray()
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in os.environ
    monkeypatch.delenv("RAY_ADDRESS")
    runtime.init_ray()  # a local one: quieted before ray.init
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
