"""Registered models that run on OpenVINO: one whose pyfunc backend is int8 with the OpenVINO IR
(artifact `openvino_int8`), served by a real `mlflow models serve --env-manager local` on
127.0.0.1, answers with the in-process pyfunc's detections; one logged with
`export.pyfunc_backend: openvino` runs its ONNX file on OpenVINO (fp32) in the pyfunc and in
predict from the registry, with onnxruntime's detections.

Both models are the tiny untrained model of registry_helpers (128 px, score threshold 0, 10
detections per image); the IR is calibrated on the two synthetic images (NNCF, seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline.tracking import registry
from pipeline.tracking.pyfunc import Heads, frame_detections
from pipeline.tracking.store import start_run
from tests.pipeline.parity import SCORE_TOL, assert_same_detections
from tests.pipeline.registry_helpers import fresh_store, save_model, synthetic_images, tiny_model
from tests.pipeline.tracking.test_serving import png, post, requests_for, serve

pytestmark = pytest.mark.openvino

INT8_NAME = "mrcnn-served-int8"
OPENVINO_NAME = "mrcnn-openvino"
# input side / original side of the two synthetic images (parity tolerances in their pixels)
SCALES = [128 / max(im.shape[:2]) for im in synthetic_images()]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """In a fresh SQLite store: INT8_NAME@champion (backend int8, carrying the ONNX file and
    the OpenVINO IR) and OPENVINO_NAME@champion (backend openvino, carrying the ONNX file)."""
    from mrcnn.export import quantize_int8, to_onnx

    root = tmp_path_factory.mktemp("serving_openvino")
    uri = fresh_store(root)
    net = tiny_model()
    weights = save_model(net, root / "weights")
    onnx_file = to_onnx(net, root / "export" / "model.onnx")
    xml = quantize_int8(
        onnx_file,
        root / "export" / "model_int8.xml",
        synthetic_images(),
        num_images=2,
        toolchain="openvino",
    )
    for name, backend, int8_file in (
        (INT8_NAME, "int8", xml),
        (OPENVINO_NAME, "openvino", None),
    ):
        with start_run(uri, "serving-openvino", run_name=backend):
            info = registry.log_model(
                weights, heads=Heads(), onnx_file=onnx_file, backend=backend, int8_file=int8_file
            )
        version = registry.register(name, info.model_uri, tags={})
        mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    return {"root": root, "uri": uri, "pngs": [png(0), png(1)]}


def _predict(uri: str, pngs: list[bytes], backend: str | None = None) -> tuple[Any, pd.DataFrame]:
    """(the loaded pyfunc's `MaskRCNNModel`, its output frame for `pngs`)."""
    config = {"backend": backend} if backend else None
    model = mlflow.pyfunc.load_model(uri, model_config=config)
    return model.unwrap_python_model(), model.predict(pd.DataFrame({"image": pngs}))


@pytest.mark.slow  # quantises (NNCF) and starts `mlflow models serve`: ~1 min on 2 CPU cores
def test_served_int8_model_answers_with_the_in_process_detections(models: dict) -> None:
    """The int8 IR, not the fp32 file: its in-process detections differ from fp32's by more than
    the parity tolerances, and the server's agree with them within those tolerances."""
    from mrcnn.export.openvino_model import OpenVinoModel

    mlflow.set_tracking_uri(models["uri"])
    uri, pngs = f"models:/{INT8_NAME}@champion", models["pngs"]
    inner, expected = _predict(uri, pngs)
    assert inner.backend == "int8" and isinstance(inner.model, OpenVinoModel)
    assert inner.model.path.suffix == ".xml" and len(expected) == 20
    _, fp32 = _predict(uri, pngs, "onnxruntime")
    assert len(fp32) != len(expected) or np.abs(fp32["score"] - expected["score"]).max() > SCORE_TOL
    with serve(models["uri"], uri, models["root"]) as url:
        for form, body in requests_for(pngs).items():
            status, reply = post(url, body)
            assert status == 200, (form, reply)
            got = pd.DataFrame(reply["predictions"])
            assert list(got.columns) == list(expected.columns), form
            assert (got["class_name"] == expected["class_name"]).all(), form
            assert_same_detections(frame_detections(expected, 2), frame_detections(got, 2), SCALES)


def test_a_model_logged_with_backend_openvino_runs_on_openvino(models: dict, tmp_path) -> None:
    """export.pyfunc_backend: openvino -> openvino pinned in the model's requirements; the pyfunc
    (by default) and predict from the registry (auto) run model.onnx on `OpenVinoModel`, with
    the onnxruntime backend's detections within the export's parity tolerances."""
    import yaml

    from mrcnn.export.openvino_model import OpenVinoModel
    from pipeline.predict_model import load_predictor, locate

    mlflow.set_tracking_uri(models["uri"])
    uri, pngs = f"models:/{OPENVINO_NAME}@champion", models["pngs"]
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "dl")))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["config"]["backend"] == "openvino" and "onnx" in flavor["artifacts"]
    assert "openvino==" in (local / "requirements.txt").read_text()

    inner, frame = _predict(uri, pngs)
    assert inner.backend == "openvino" and isinstance(inner.model, OpenVinoModel)
    assert inner.model.path.suffix == ".onnx" and len(frame) == 20
    _, reference = _predict(uri, pngs, "onnxruntime")
    detections = frame_detections(frame, 2)
    assert_same_detections(frame_detections(reference, 2), detections, SCALES)

    (tmp_path / "pull").mkdir()
    files = locate(uri, models["uri"], tmp_path / "pull")  # auto: the model's own backend
    assert files.backend == "openvino" and files.onnx_file.name == "model.onnx"
    net, _ = load_predictor(files, "cpu")
    assert isinstance(net.model, OpenVinoModel)
    assert_same_detections(detections, net.detect(synthetic_images()), SCALES)
