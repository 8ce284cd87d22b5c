"""Serving the registered model: MLflow's scoring server takes a base64 PNG in both request
formats (`dataframe_split` and `inputs`) and returns the pyfunc's in-process detections; once in
process (MLflow's `invocations`, seconds) and once through a real `mlflow models serve` on
127.0.0.1 (slow). `serve`, `post`, `png` and `requests_for` also serve the int8 model
(test_serving_openvino.py)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from PIL import Image

from pipeline.tracking import registry
from pipeline.tracking.pyfunc import Heads
from pipeline.tracking.store import start_run
from tests import services
from tests.pipeline.registry_helpers import fresh_store, save_model, synthetic_images, tiny_model

NAME = "mrcnn-served"


def png(index: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic_images()[index]).save(buf, format="PNG")
    return buf.getvalue()


def requests_for(pngs: list[bytes]) -> dict[str, dict]:
    """The two JSON bodies docs/mlflow.md shows, for these encoded images."""
    text = [base64.b64encode(p).decode("ascii") for p in pngs]
    return {
        "dataframe_split": {"dataframe_split": {"columns": ["image"], "data": [[t] for t in text]}},
        "inputs": {"inputs": {"image": text}},
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny model registered as NAME@champion in a fresh SQLite store, and what its pyfunc
    returns in process for two PNGs (the reference every request must reproduce)."""
    root = tmp_path_factory.mktemp("serving")
    uri = fresh_store(root)
    weights = save_model(tiny_model(), root / "weights")
    # its own experiment: an earlier test may have left another store's experiment active
    with start_run(uri, "serving", run_name="serve"):
        info = registry.log_model(weights, heads=Heads())
    version = registry.register(NAME, info.model_uri, tags={})
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    pngs = [png(0), png(1)]
    expected = model.predict(pd.DataFrame({"image": pngs}))
    assert len(expected) == 20 and set(expected["image_index"]) == {0, 1}
    return {"root": root, "uri": uri, "model": model, "pngs": pngs, "expected": expected}


def _same(records: list[dict], expected: pd.DataFrame) -> None:
    """The served records are the in-process frame, row for row (JSON keeps float64 exactly)."""
    got = pd.DataFrame(records)
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_exact=True)


@pytest.mark.parametrize("form", ["dataframe_split", "inputs"])
def test_scoring_server_takes_both_request_formats(served: dict, form: str) -> None:
    from mlflow.pyfunc.scoring_server import invocations

    model = served["model"]
    body = json.dumps(requests_for(served["pngs"])[form])
    response = invocations(body, "application/json", model, model.metadata.get_input_schema())
    assert response.status == 200, str(response.response)[:2000]
    _same(json.loads(response.response)["predictions"], served["expected"])


def test_a_bad_image_is_a_400_that_says_which_row(served: dict) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import invocations

    model = served["model"]
    body = json.dumps({"inputs": {"image": [base64.b64encode(b"not a png").decode()]}})
    with pytest.raises(MlflowException, match="cannot read image row 0") as e:
        invocations(body, "application/json", model, model.metadata.get_input_schema())
    assert e.value.get_http_status_code() == 400


@pytest.fixture(scope="module")
def server(served: dict) -> Iterator[str]:
    """`mlflow models serve -m models:/NAME@champion` -> its base URL (`serve`)."""
    with serve(served["uri"], f"models:/{NAME}@champion", served["root"]) as url:
        yield url


@contextlib.contextmanager
def serve(tracking_uri: str, model_uri: str, root: Path) -> Iterator[str]:
    """`mlflow models serve -m model_uri --env-manager local` (one worker, the venv's Python,
    this interpreter's environment without PYTHONPATH: the model brings its own code) on
    127.0.0.1, its log in `root` -> its base URL; stopped by pid."""
    port = services.free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{bin_dir}:{env.get('PATH', '')}"}
    log = root / "serve.log"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        services.HOST,
        "-p",
        str(port),
        "-w",
        "1",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{services.HOST}:{port}"
    try:
        services.wait_until("mlflow models serve", lambda: _ping(url), proc, log, timeout=120)
        yield url
    finally:
        services.stop_process(proc)


def _ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.slow  # starts `mlflow models serve`: ~20 s on 2 CPU cores
def test_served_model_answers_both_formats_with_the_pyfunc_detections(served, server) -> None:
    for form, body in requests_for(served["pngs"]).items():
        status, reply = post(server, body)
        assert status == 200, (form, reply)
        _same(reply["predictions"], served["expected"])
    status, reply = post(server, {"inputs": {"image": ["bm90IGEgcG5n"]}})  # "not a png"
    assert status == 400 and "cannot read image row 0" in reply["message"]
