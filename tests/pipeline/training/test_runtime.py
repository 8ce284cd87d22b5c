"""Ray start-up, with `ray.init` and the state API replaced by recorders
(no Ray is started here; the real start-up runs in the train and sweep tests)."""

from __future__ import annotations

import os
import socket

import pytest
import ray

from pipeline.training import runtime


@pytest.fixture()
def ray_init(monkeypatch) -> list[dict]:
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
