"""pipeline.tracking: URI resolution, fail-fast checks, flatten, runs that resume."""

from __future__ import annotations

import base64
import http.server
import socket
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from pipeline.paramfile import load_section
from pipeline.params import MlflowParams
from pipeline.tracking import active
from pipeline.tracking.store import (
    TrackingError,
    check_tracking_uri,
    default_artifact_location,
    flatten,
    redact,
    start_run,
    tracking_uri,
)
from tests import REPO_ROOT
from tests.pipeline.registry_helpers import fresh_store


def test_tracking_uri_resolves_relative_stores_against_the_project(tmp_path: Path) -> None:
    params = tmp_path / "proj" / "params.yaml"
    root = (tmp_path / "proj").resolve()
    assert tracking_uri(params, "sqlite:///mlflow.db") == f"sqlite:///{root}/mlflow.db"
    assert tracking_uri(params, "sqlite:///db/x.db") == f"sqlite:///{root}/db/x.db"
    assert tracking_uri(params, "sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert tracking_uri(params, "mlruns") == (root / "mlruns").as_uri()
    assert tracking_uri(params, "http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    pg = "postgresql://u:p@db:5432/mlflow"
    assert tracking_uri(params, pg) == pg


def test_mlflow_section_defaults_and_unknown_key(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("mlflow:\n  experiment: e1\n")
    section = load_section(p, "mlflow", MlflowParams)
    assert (section.tracking_uri, section.experiment) == ("sqlite:///mlflow.db", "e1")
    p.write_text("mlflow:\n  tracking_url: x\n")
    with pytest.raises(ValueError, match="mlflow.tracking_url"):
        load_section(p, "mlflow", MlflowParams)


def test_default_artifact_location(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    local = default_artifact_location(params, "sqlite:////x/mlflow.db", MlflowParams())
    assert local == str(tmp_path.resolve() / "mlartifacts" / "mrcnn")
    server = default_artifact_location(params, "http://h:5000", MlflowParams())
    assert server is None
    custom = MlflowParams(artifact_location="art")
    assert default_artifact_location(params, "http://h", custom) == str(tmp_path.resolve() / "art")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast_with_the_uri_and_a_fix() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    t = time.perf_counter()
    with pytest.raises(TrackingError) as e:
        check_tracking_uri(uri, timeout_s=5)
    assert time.perf_counter() - t < 3
    assert uri in str(e.value)
    assert "not reachable" in str(e.value)
    assert "mlflow.tracking_uri" in str(e.value)


class _LoginServer(http.server.BaseHTTPRequestHandler):
    """/health answers anyone; the API only bob:right-password (as MLflow's basic auth)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        good = "Basic " + base64.b64encode(b"bob:right-password").decode()
        ok = self.path == "/health" or self.headers.get("Authorization") == good
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize(
    "login, message",
    [
        ({}, "needs a login (HTTP 401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        (
            {"MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": "wrong-password"},
            "refused the login of user 'bob' (HTTP 401)",
        ),
        ({"MLFLOW_TRACKING_TOKEN": "a-token"}, "refused the login of the token (HTTP 401)"),
        ({"MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": "right-password"}, ""),
    ],
    ids=["missing", "wrong", "token", "right"],
)
def test_a_server_with_logins_is_checked_with_the_clients_login(login, message, monkeypatch):
    """The check sends the login MLflow will send; a 401 is one line naming the user, never
    the password (tests/pipeline/test_server_auth.py does this against MLflow's own server)."""
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in login.items():
        monkeypatch.setenv(key, value)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LoginServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        if not message:
            check_tracking_uri(uri)
            return
        with pytest.raises(TrackingError) as e:
            check_tracking_uri(uri)
        assert message in str(e.value) and "\n" not in str(e.value)
        assert "wrong-password" not in str(e.value) and "a-token" not in str(e.value)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_unreachable_database_host_is_reported_without_password() -> None:
    uri = f"postgresql://me:secret@127.0.0.1:{_closed_port()}/mlflow"
    with pytest.raises(TrackingError) as e:
        check_tracking_uri(uri, timeout_s=2)
    assert "secret" not in str(e.value)
    assert "me:***@127.0.0.1" in str(e.value)
    assert redact("http://a:b@h:1/x") == "http://a:***@h:1/x"


def test_unwritable_sqlite_locations(tmp_path: Path) -> None:
    check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")  # fine: the folder exists
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(TrackingError, match="is not a folder"):
        check_tracking_uri(f"sqlite:///{blocker}/mlflow.db")
    with pytest.raises(TrackingError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path}/missing/mlflow.db")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(TrackingError, match="not a file"):
        check_tracking_uri(f"sqlite:///{tmp_path}/dir.db")


def test_flatten_nests_stringifies_and_truncates() -> None:
    flat = flatten(
        {"model": {"rpn": {"nms_thresh": 0.7}, "sizes": [8, 16], "bn": True, "arch": "r18"}},
        max_len=20,
    )
    assert flat == {
        "model.rpn.nms_thresh": "0.7",
        "model.sizes": "[8, 16]",
        "model.bn": "true",
        "model.arch": "r18",
    }
    long = flatten({"x": "a" * 600})["x"]
    assert len(long) == 500 and long.endswith("...")
    assert flatten({"a": None, "b": {}}) == {"a": "null", "b": "{}"}


def _png(path: Path) -> Path:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    return path


def test_start_run_resumes_an_existing_run_else_starts_one(tmp_path: Path) -> None:
    uri = fresh_store(tmp_path)
    art = str(tmp_path / "artifacts")
    with start_run(uri, "exp", run_name="train", artifact_location=art) as run:
        first = run.info.run_id
        mlflow.log_metric("loss", 1.0)
        active.log_artifact(_png(tmp_path / "black.png"), "pictures")
    # another experiment left active (as `mlflow.set_experiment` elsewhere in the process
    # does) must not stop the resume
    mlflow.set_experiment("another")
    with start_run(uri, "exp", run_id=first, tags={"stage": "export"}) as run:
        assert run.info.run_id == first
    with start_run(uri, "exp", run_name="other", run_id="0" * 32) as run:
        assert run.info.run_id != first
    client = mlflow.MlflowClient(uri)
    resumed = client.get_run(first)
    assert resumed.data.tags["stage"] == "export"
    assert resumed.data.metrics["loss"] == 1.0
    assert [f.path for f in client.list_artifacts(first, "pictures")] == ["pictures/black.png"]
    exp = client.get_experiment_by_name("exp")
    assert exp.artifact_location.endswith("artifacts")


def test_new_experiments_keep_artifacts_beside_the_database(tmp_path: Path) -> None:
    uri = fresh_store(tmp_path / "proj")
    with start_run(uri, "my exp") as run:
        active.log_artifact(_png(tmp_path / "x.png"))
    expected = tmp_path / "proj" / "mlartifacts" / "my_exp" / run.info.run_id / "artifacts"
    assert (expected / "x.png").is_file()


def test_project_params_have_valid_mlflow_export_predict_sections() -> None:
    from pipeline.serve_params import ExportParams, PredictParams

    root = REPO_ROOT
    assert load_section(root / "params.yaml", "mlflow", MlflowParams).experiment == "mrcnn"
    assert load_section(root / "params.yaml", "export", ExportParams).champion_metric == "segm.AP"
    assert load_section(root / "params.yaml", "predict", PredictParams).score_thresh < 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("export:\n  registered_model: 'a b'\n", "params key 'export.registered_model'"),
        ("export:\n  champion_metric: 'segm AP'\n", "params key 'export.champion_metric'"),
        ("export:\n  portable: yes please\n", "'export.portable' must be true or false"),
        ("predict:\n  device: gpu\n", "params key 'predict.device'"),
        ("predict:\n  batch_size: 0\n", "params key 'predict.batch_size'"),
        ("predict:\n  thresh: 0.5\n", "unknown params key 'predict.thresh'"),
    ],
)
def test_bad_export_and_predict_params_name_the_key(tmp_path: Path, text: str, message: str):
    from pipeline.serve_params import ExportParams, PredictParams

    p = tmp_path / "params.yaml"
    p.write_text(text)
    cls = ExportParams if text.startswith("export") else PredictParams
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_section(p, text.split(":")[0], cls)


def test_experiments_are_tagged_as_model_training_for_the_ui(tmp_path: Path) -> None:
    """Issue 22: MLflow 3's UI opened our experiment in GenAI mode (traces, token usage). Its
    page reads the experiment tag `mlflow.experimentKind`; ours say model training, also an
    experiment created before the tag existed."""
    from pipeline.tracking.store import EXPERIMENT_KIND, ensure_experiment

    mlflow.set_tracking_uri(fresh_store(tmp_path))
    new = mlflow.get_experiment(ensure_experiment("made-here"))
    assert new.tags["mlflow.experimentKind"] == "custom_model_development"
    older = mlflow.create_experiment("made-before")
    assert "mlflow.experimentKind" not in mlflow.get_experiment(older).tags
    assert ensure_experiment("made-before") == older
    assert mlflow.get_experiment(older).tags.items() >= EXPERIMENT_KIND.items()
