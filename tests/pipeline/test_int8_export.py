"""pipeline.int8_export (the export stage's `export.int8` step) and its params: the int8 file is
written beside model.onnx, measured on the val shards against the original annotations with
fp32's AP and speed beside it, logged to the run when accepted, and refused past the allowed
AP drop with one line saying why."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mrcnn import build_model, presets
from mrcnn.export import OnnxModel, to_onnx
from mrcnn.export.onnx_model import INT8_METADATA
from pipeline import int8_export
from pipeline.serve_params import ExportParams


class Recorder:
    """Stands in for `pipeline.tracking.active` (what would go to the MLflow run)."""

    def __init__(self) -> None:
        self.metrics: dict = {}
        self.tags: dict = {}
        self.artifacts: list = []

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.update(metrics)

    def set_tags(self, tags) -> None:
        self.tags.update(tags)

    def log_artifact(self, path, artifact_path=None) -> None:
        self.artifacts.append((Path(path).name, artifact_path))


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory) -> Path:
    """An untrained shapes_small at the tiny shards' 64 px (score_thresh 0: it detects)."""
    torch.manual_seed(0)
    cfg = presets.shapes_small(
        image_size=64, inference={"score_thresh": 0.0, "detections_per_img": 5}
    )
    out = tmp_path_factory.mktemp("int8_export")
    return to_onnx(build_model(cfg).eval(), out / "model.onnx")


def _params(max_drop: float) -> SimpleNamespace:
    return SimpleNamespace(int8_max_ap_drop=max_drop, int8_calibration_images=4, int8_eval_images=3)


def _write(fp32_file: Path, tiny_shards: Path, max_drop: float, monkeypatch) -> tuple:
    recorder = Recorder()
    monkeypatch.setattr(int8_export, "active", recorder)
    annotations = tiny_shards.parent / "raw" / "shapes" / "annotations" / "instances_val.json"
    section = int8_export.write_int8(
        fp32_file, fp32_file.parent, tiny_shards, annotations, _params(max_drop)
    )
    return section, recorder


def test_int8_file_is_written_measured_and_logged(fp32_file, tiny_shards, monkeypatch):
    section, recorder = _write(fp32_file, tiny_shards, 1.0, monkeypatch)
    int8_file = fp32_file.parent / int8_export.INT8_FILE
    assert section["file"] == str(int8_file) and int8_file.is_file()
    assert OnnxModel(int8_file).settings["int8"]["num_images"] == 4
    assert INT8_METADATA == "mrcnn.int8"
    assert section["accepted"] and section["why"] == ""
    assert section["num_eval_images"] == 3 and section["calibration_images"] == 4
    for t in ("bbox", "segm"):
        assert 0.0 <= section[f"{t}_AP"] <= 1.0 and 0.0 <= section[f"fp32_{t}_AP"] <= 1.0
        drop = section[f"fp32_{t}_AP"] - section[f"{t}_AP"]
        assert section[f"{t}_AP_drop"] == pytest.approx(drop)
    assert section["seconds_per_image"] > 0 and section["fp32_seconds_per_image"] > 0
    speedup = section["fp32_seconds_per_image"] / section["seconds_per_image"]
    assert section["speedup_vs_fp32"] == pytest.approx(speedup)
    assert recorder.metrics["int8.speedup_vs_fp32"] == section["speedup_vs_fp32"]
    assert recorder.metrics["int8.segm_AP"] == section["segm_AP"]
    assert recorder.tags == {"export.int8": "accepted"}
    assert recorder.artifacts == [(int8_export.INT8_FILE, "portable")]


def test_int8_file_past_the_allowed_drop_is_refused_in_one_line(
    fp32_file, tiny_shards, monkeypatch, caplog
):
    """An allowed drop below zero (params refuse it; forced here) refuses any int8 file."""
    with caplog.at_level(logging.WARNING, logger=int8_export.__name__):
        section, recorder = _write(fp32_file, tiny_shards, -1.0, monkeypatch)
    assert not section["accepted"]
    assert section["why"].startswith("int8 model refused: bbox AP") and "\n" not in section["why"]
    assert [r.getMessage() for r in caplog.records] == [section["why"]]
    assert recorder.artifacts == []  # not logged, so never registered with the model
    assert recorder.tags == {"export.int8": section["why"]}


def test_int8_params():
    assert ExportParams().int8 is False  # off by default
    with pytest.raises(ValueError, match="portable"):
        ExportParams(int8=True, portable=False).validate()
    with pytest.raises(ValueError, match="int8_max_ap_drop"):
        ExportParams(int8_max_ap_drop=-0.1).validate()


def test_pyfunc_and_predict_run_the_int8_file(fp32_file, tiny_shards, monkeypatch, tmp_path):
    """Backend int8: the pyfunc loads the `onnx_int8` artifact, and `pipeline.predict` runs it
    from an MLflow model folder (model_config backend int8 chosen by auto) or as a bare file."""
    import numpy as np
    import yaml

    from pipeline.predict_model import load_predictor, locate
    from pipeline.tracking.pyfunc import INT8_ARTIFACT, load_backend

    section, _ = _write(fp32_file, tiny_shards, 1.0, monkeypatch)
    int8_file = Path(section["file"])
    model = load_backend("int8", {"model": "-", INT8_ARTIFACT: str(int8_file)})
    assert model.path == int8_file and model.settings["int8"]["toolchain"] == "onnxruntime"
    with pytest.raises(ValueError, match="onnx_int8"):
        load_backend("int8", {"model": "-", "onnx": str(fp32_file)})

    folder = tmp_path / "mlflow_model"
    (folder / "artifacts").mkdir(parents=True)
    (folder / "artifacts" / int8_export.INT8_FILE).write_bytes(int8_file.read_bytes())
    flavor = {
        "artifacts": {
            "model": {"path": "artifacts/weights"},
            "onnx_int8": {"path": f"artifacts/{int8_export.INT8_FILE}"},
        },
        "config": {"backend": "int8"},
    }
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": flavor}}))
    files = locate(str(folder), None, tmp_path)
    assert files.backend == "int8" and files.onnx_file.name == int8_export.INT8_FILE
    net, _ = load_predictor(files, "cpu")
    image = np.zeros((64, 64, 3), np.uint8)
    assert len(net.detect([image])) == 1
    assert locate(str(int8_file), None, tmp_path, backend="int8").backend == "int8"
    with pytest.raises(Exception, match="without its ONNX file"):
        locate(str(folder), None, tmp_path, backend="onnxruntime")  # no fp32 file logged


def test_export_stage_writes_the_int8_section(tiny_shards, tmp_path):
    """`python -m pipeline.export` with export.int8 on the tiny shards: model_int8.onnx beside
    model.onnx, export.json's int8 section, the run's int8 metrics, and the logged model
    carrying the accepted int8 file as artifact `onnx_int8` (pyfunc backend int8)."""
    import json

    import mlflow
    import yaml

    from mrcnn import weights
    from pipeline.stages import export
    from tests.pipeline.registry_helpers import fresh_store

    root = tmp_path / "project"
    uri = fresh_store(root)
    (root / "data").symlink_to(tiny_shards.parent)  # data/shards and data/raw/shapes
    torch.manual_seed(0)
    cfg = presets.shapes_small(
        image_size=64, inference={"score_thresh": 0.0, "detections_per_img": 5}
    )
    weights.save(build_model(cfg).eval(), root / "models" / "final", preset="shapes_small")
    (root / "metrics").mkdir()
    evals = {"bbox": {"AP": 0.1}, "segm": {"AP": 0.1}}
    (root / "metrics" / "eval.json").write_text(json.dumps(evals))
    section = {
        "registered_model": "mrcnn-int8-test",
        "register": False,
        "pyfunc_backend": "int8",
        "int8": True,
        "int8_max_ap_drop": 1.0,
        "int8_calibration_images": 4,
        "int8_eval_images": 3,
    }
    doc = {
        "data": {"source": "shapes"},
        "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "mrcnn"},
        "export": section,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(doc))
    export.main(["--params", str(root / "params.yaml")])
    result = json.loads((root / "models" / "export" / "export.json").read_text())
    int8 = result["int8"]
    assert int8["accepted"] and Path(int8["file"]).name == int8_export.INT8_FILE
    assert (root / "models" / "export" / int8_export.INT8_FILE).is_file()
    assert int8["speedup_vs_fp32"] > 0 and int8["num_eval_images"] == 3
    run = mlflow.MlflowClient(uri).get_run(result["run_id"])
    assert run.data.metrics["int8.segm_AP"] == pytest.approx(int8["segm_AP"])
    assert run.data.tags["export.int8"] == "accepted"
    mlflow.set_tracking_uri(uri)
    local = mlflow.artifacts.download_artifacts(
        result["logged_model_uri"], dst_path=str(tmp_path / "dl")
    )
    mlmodel = yaml.safe_load((Path(local) / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert "onnx_int8" in flavor["artifacts"] and flavor["config"]["backend"] == "int8"
