"""The registered model's pyfunc, in process: output columns follow the model's heads, frames
round-trip to `Detections`, the onnxruntime backend gives the torch backend's detections and
the openvino backend (the same ONNX file on OpenVINO, fp32) gives onnxruntime's."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mrcnn import presets
from mrcnn.export.onnx import to_onnx
from mrcnn.modeling.model import MaskRCNN, build_model
from pipeline.tracking import pyfunc
from pipeline.tracking.pyfunc import Heads, frame_detections, output_columns
from tests.pipeline.parity import assert_same_detections
from tests.pipeline.registry_helpers import save_model, synthetic_images, tiny_model

SLIM = {
    "backbone": {"width_multiplier": 0.25, "fpn_channels": 16},
    "roi_heads": {"box_head_dim": 32, "mask_head_channels": 8, "mask_head_convs": 1},
}
KEYPOINTS = {"count": 3, "head_channels": 8, "head_convs": 1}
BOXES = [name for name, _ in pyfunc.BOX_COLUMNS]
MASKS = ["mask_counts", "mask_height", "mask_width"]


def _model(**overrides) -> MaskRCNN:
    import torch

    torch.manual_seed(0)
    inference = {"score_thresh": 0.0, "detections_per_img": 5}
    return build_model(presets.shapes_small(inference=inference, **overrides)).eval()


def _png_frame(images: list[np.ndarray]) -> pd.DataFrame:
    blobs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    return pd.DataFrame({pyfunc.INPUT_COLUMN: blobs})


def _loaded(artifacts: dict[str, Path], backend: str | None = None) -> pyfunc.MaskRCNNModel:
    """What `mlflow.pyfunc.load_model` does with the logged model, without MLflow."""
    model = pyfunc.MaskRCNNModel()
    config = {} if backend is None else {"backend": backend}
    context = SimpleNamespace(
        artifacts={k: str(v) for k, v in artifacts.items()}, model_config=config
    )
    model.load_context(context)
    return model


@pytest.mark.parametrize(
    "overrides, heads, extra",
    [
        ({}, Heads(), MASKS),
        ({"mask_scoring": True}, Heads(mask_scores=True), [*MASKS, "mask_score"]),
        ({"keypoints": KEYPOINTS}, Heads(keypoints=3), [*MASKS, "keypoints"]),
        (
            {"keypoints": KEYPOINTS, "roi_heads": {**SLIM["roi_heads"], "masks": False}},
            Heads(masks=False, keypoints=3),
            ["keypoints"],
        ),
    ],
    ids=["masks", "mask_scoring", "keypoints", "keypoints_no_masks"],
)
def test_columns_follow_the_heads_and_round_trip(tmp_path: Path, overrides, heads, extra):
    net = _model(**{**SLIM, **overrides})
    assert pyfunc.model_heads(net) == heads
    assert [name for name, _ in output_columns(heads)] == BOXES + extra
    loaded = _loaded({"model": save_model(net, tmp_path / "w")})
    images = synthetic_images()
    frame = loaded.predict(None, _png_frame(images))
    assert list(frame.columns) == BOXES + extra
    expected = net.detect(images)
    assert [len(d) for d in expected] == [5, 5]
    got = frame_detections(frame, len(images))
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(g.labels, e.labels)
        np.testing.assert_allclose(g.boxes, e.boxes, rtol=0, atol=1e-4)
        np.testing.assert_allclose(g.scores, e.scores, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(g.masks, e.masks)  # [N, 0, 0] without a mask head
        if heads.keypoints:
            assert g.keypoints.shape == (5, 3, 3)
            np.testing.assert_allclose(g.keypoints, e.keypoints, rtol=0, atol=1e-4)
        else:
            assert g.keypoints is None
        if heads.mask_scores:
            np.testing.assert_allclose(g.mask_scores, e.mask_scores, rtol=0, atol=1e-6)
        else:
            assert g.mask_scores is None


def test_no_detections_give_an_empty_frame_with_the_same_columns(tmp_path: Path) -> None:
    net = _model(**{**SLIM, "keypoints": KEYPOINTS})
    net.roi_heads.detection_layer.score_thresh = 1.0  # nothing passes
    heads = pyfunc.model_heads(net)
    frame = pyfunc.detections_frame(net.detect(synthetic_images()), net.class_names, heads)
    assert len(frame) == 0 and list(frame.columns) == BOXES + [*MASKS, "keypoints"]
    assert str(frame["score"].dtype) == "float64" and str(frame["label"].dtype) == "int64"
    back = frame_detections(frame, 2)
    assert [len(d) for d in back] == [0, 0] and back[0].keypoints.shape == (0, 0, 3)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two artifacts a portable export logs: the weights folder and the checked ONNX file
    (batch 1, as the export stage writes it)."""
    folder = tmp_path_factory.mktemp("pyfunc")
    net = tiny_model()
    return {"model": save_model(net, folder / "weights"), "onnx": to_onnx(net, folder / "m.onnx")}


def test_onnxruntime_backend_gives_the_torch_backends_detections(artifacts) -> None:
    images = synthetic_images()
    torch_model = _loaded(artifacts)  # no model_config: torch
    onnx_model = _loaded(artifacts, "onnxruntime")
    assert torch_model.backend == "torch" and onnx_model.backend == "onnxruntime"
    assert type(onnx_model.model).__name__ == "OnnxModel"
    a = torch_model.predict(None, _png_frame(images))
    b = onnx_model.predict(None, _png_frame(images))
    assert list(a.columns) == list(b.columns) == BOXES + MASKS
    assert len(a) == 20 and (a["class_name"] == b["class_name"]).all()
    scales = [128 / max(im.shape[:2]) for im in images]
    assert_same_detections(frame_detections(a, 2), frame_detections(b, 2), scales)


@pytest.mark.openvino
def test_openvino_backend_runs_the_onnx_file_as_onnxruntime_does(artifacts) -> None:
    """model_config backend openvino: the `onnx` artifact on `OpenVinoModel` (fp32), with the
    onnxruntime backend's detections within the export's parity tolerances."""
    from mrcnn.export.openvino_model import OpenVinoModel

    images = synthetic_images()
    onnx_model = _loaded(artifacts, "onnxruntime")
    ov_model = _loaded(artifacts, "openvino")
    assert ov_model.backend == "openvino" and isinstance(ov_model.model, OpenVinoModel)
    assert ov_model.model.path == artifacts["onnx"]
    a = onnx_model.predict(None, _png_frame(images))
    b = ov_model.predict(None, _png_frame(images))
    assert list(b.columns) == BOXES + MASKS and len(b) == len(a) == 20
    assert (a["class_name"] == b["class_name"]).all()
    scales = [128 / max(im.shape[:2]) for im in images]
    assert_same_detections(frame_detections(a, 2), frame_detections(b, 2), scales)


def test_image_cells_may_be_file_bytes_or_base64() -> None:
    png = _png_frame(synthetic_images()[:1])[pyfunc.INPUT_COLUMN][0]
    text = base64.b64encode(png)
    assert pyfunc.image_bytes(png) == png
    assert pyfunc.image_bytes(text) == png == pyfunc.image_bytes(text.decode())
    assert pyfunc.image_bytes(text[:40] + b"\n" + text[40:]) == png  # MIME line breaks
    assert pyfunc.image_bytes(b"abc") == b"abc"  # not valid base64: left for read_image


def test_backend_errors_say_what_to_do(artifacts) -> None:
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(ValueError, match="needs the model's onnx file, but .* backend torch"):
            _loaded({"model": artifacts["model"]}, backend)
    with pytest.raises(ValueError, match="one of torch, onnxruntime, openvino, int8: 'trt'"):
        _loaded(artifacts, "trt")
    from mlflow.exceptions import MlflowException

    model = _loaded(artifacts)
    with pytest.raises(MlflowException, match="binary column 'image'") as e:
        model.predict(None, pd.DataFrame({"img": [b""]}))
    assert e.value.get_http_status_code() == 400
    with pytest.raises(MlflowException, match="cannot read image row 1: ") as e:
        good = _png_frame(synthetic_images()[:1])[pyfunc.INPUT_COLUMN][0]
        model.predict(None, pd.DataFrame({"image": [good, b"\x89PN"]}))
    assert e.value.get_http_status_code() == 400
