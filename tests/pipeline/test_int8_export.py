"""pipeline.int8_export (the export stage's `export.int8` step) and its params, for both
toolchains (`export.int8_toolchain`): the int8 model is written beside model.onnx (OpenVINO IR
model_int8.xml + .bin, or model_int8.onnx), measured on the val shards against the original
annotations with fp32's AP and speed beside it, logged to the run when accepted, and refused
past the allowed AP drop with one line saying why; predict and the pyfunc run it; without the
toolchain's packages the stage and predict stop with one line naming the install.

Agreement: predict (registry, MLflow folder, bare .xml) and the pyfunc run the IR through
`OpenVinoModel`, and their detections equal `OpenVinoModel`'s exactly. How far NNCF's int8
detections may be from fp32's is pinned on a trained model in tests/mrcnn/export/test_int8.py
(>= 90% of fp32's detections matched within 2 px / 0.05 score, mean mask IoU >= 0.95). The
untrained 64 px model used here agrees less (its scores are near ties, its mask probabilities
near 0.5): measured 20 of fp32's 30 detections matched on 6 val images (2026-12-03, AMX Xeon;
int8 rounding differs between CPUs), so this file asks >= 50% matched, as a sanity bound.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mrcnn import build_model, presets
from mrcnn.export import open_exported, to_onnx
from mrcnn.export.onnx_model import INT8_METADATA
from mrcnn.export.openvino_model import INSTALL
from pipeline import int8_export
from pipeline.serve_params import ExportParams
from tests import REPO_ROOT

TOOLCHAINS = ("onnxruntime", pytest.param("openvino", marks=pytest.mark.openvino))
# Blocks openvino and nncf in a fresh process, as if they were not installed.
BLOCK = "import sys; sys.modules['openvino'] = None; sys.modules['nncf'] = None\n"


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


def _params(max_drop: float, toolchain: str) -> SimpleNamespace:
    return SimpleNamespace(
        int8_max_ap_drop=max_drop,
        int8_calibration_images=4,
        int8_eval_images=3,
        int8_toolchain=toolchain,
    )


@pytest.fixture(scope="module")
def written(fp32_file, tiny_shards):
    """`written(toolchain, max_drop)` -> (section, recorder) of `write_int8` into a folder of
    its own beside model.onnx (each quantisation runs once per module)."""
    annotations = tiny_shards.parent / "raw" / "shapes" / "annotations" / "instances_val.json"
    done: dict = {}

    def write(toolchain: str, max_drop: float = 1.0) -> tuple:
        key = (toolchain, max_drop)
        if key not in done:
            out = fp32_file.parent / f"{toolchain}_{max_drop}"
            out.mkdir()
            recorder = Recorder()
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(int8_export, "active", recorder)
                section = int8_export.write_int8(
                    fp32_file, out, tiny_shards, annotations, _params(max_drop, toolchain)
                )
            done[key] = section, recorder
        return done[key]

    return write


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_int8_file_is_written_measured_and_logged(written, toolchain):
    section, recorder = written(toolchain)
    int8_file = Path(section["file"])
    assert int8_file.name == int8_export.INT8_FILES[toolchain] and int8_file.is_file()
    files = int8_export.model_files(int8_file)
    if toolchain == "openvino":  # OpenVINO IR: the .xml and its weights
        assert [f.name for f in files] == ["model_int8.xml", "model_int8.bin"]
    assert all(f.is_file() for f in files)
    info = open_exported(int8_file).settings["int8"]
    assert info["num_images"] == 4 and info["toolchain"] == toolchain
    assert INT8_METADATA == "mrcnn.int8"
    assert section["toolchain"] == toolchain
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
    assert recorder.artifacts == [(f.name, "portable") for f in files]


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_int8_file_past_the_allowed_drop_is_refused_in_one_line(written, toolchain, caplog):
    """An allowed drop below zero (params refuse it; forced here) refuses any int8 file."""
    with caplog.at_level(logging.WARNING, logger=int8_export.__name__):
        section, recorder = written(toolchain, -1.0)
    assert not section["accepted"] and section["toolchain"] == toolchain
    assert section["why"].startswith("int8 model refused: bbox AP") and "\n" not in section["why"]
    assert [r.getMessage() for r in caplog.records] == [section["why"]]
    assert recorder.artifacts == []  # not logged, so never registered with the model
    assert recorder.tags == {"export.int8": section["why"]}
    assert Path(section["file"]).is_file()  # left on disk for inspection


def test_a_stale_int8_model_of_either_toolchain_is_removed(tmp_path):
    for name in ("model_int8.onnx", "model_int8.xml", "model_int8.bin", "model.onnx"):
        (tmp_path / name).write_text("x")
    int8_export.remove_int8(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_int8_params():
    assert ExportParams().int8 is False  # off by default
    assert ExportParams().int8_toolchain == "openvino"  # the faster int8 measured
    with pytest.raises(ValueError, match="int8_toolchain' must be onnxruntime or openvino"):
        ExportParams(int8_toolchain="tensorrt").validate()
    with pytest.raises(ValueError, match="portable"):
        ExportParams(int8=True, portable=False).validate()
    with pytest.raises(ValueError, match="int8_max_ap_drop"):
        ExportParams(int8_max_ap_drop=-0.1).validate()


def test_pyfunc_and_predict_run_the_int8_file(written, fp32_file, tmp_path):
    """Backend int8, toolchain onnxruntime: the pyfunc loads the `onnx_int8` artifact, and
    `pipeline.predict` runs it from an MLflow model folder (model_config backend int8 chosen by
    auto) or as a bare file."""
    import yaml

    from pipeline.predict_model import load_predictor, locate
    from pipeline.tracking.pyfunc import INT8_ARTIFACT, load_backend

    section, _ = written("onnxruntime")
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


def _val_images(tiny_shards: Path, n: int) -> list[np.ndarray]:
    from mrcnn.data.shards import ShardDataset

    crops = int8_export._Crops(ShardDataset(tiny_shards / "val"))
    return [crops[i] for i in range(min(n, len(crops)))]


@pytest.mark.openvino
def test_pyfunc_and_predict_run_the_openvino_ir(written, fp32_file, tiny_shards, tmp_path):
    """Backend int8, toolchain openvino: the pyfunc loads the `openvino_int8` artifact (a
    folder with the IR) on OpenVINO, `pipeline.predict` runs it from an MLflow model folder
    (auto -> the model's backend int8) and as `--model model_int8.xml`; all three give the same
    detections, and they agree with the fp32 file on ONNX Runtime (the module's sanity bound)."""
    import shutil

    import yaml

    from mrcnn.export.accuracy import compare_exported
    from mrcnn.export.openvino_model import OpenVinoModel
    from pipeline.predict_model import load_predictor, locate
    from pipeline.tracking.pyfunc import OPENVINO_INT8_ARTIFACT, load_backend

    section, _ = written("openvino")
    xml = Path(section["file"])
    folder = tmp_path / "mlflow_model"
    ir_dir = folder / "artifacts" / OPENVINO_INT8_ARTIFACT
    ir_dir.mkdir(parents=True)
    for path in int8_export.model_files(xml):
        shutil.copy2(path, ir_dir / path.name)
    flavor = {
        "artifacts": {
            "model": {"path": "artifacts/weights"},
            OPENVINO_INT8_ARTIFACT: {"path": f"artifacts/{OPENVINO_INT8_ARTIFACT}"},
        },
        "config": {"backend": "int8"},
    }
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": flavor}}))

    pyfunc_model = load_backend("int8", {"model": "-", OPENVINO_INT8_ARTIFACT: str(ir_dir)})
    assert isinstance(pyfunc_model, OpenVinoModel) and pyfunc_model.path == ir_dir / xml.name
    files = locate(str(folder), None, tmp_path)  # auto: the logged backend
    assert files.backend == "int8" and files.onnx_file == ir_dir / xml.name
    from_folder, _ = load_predictor(files, "cpu")
    bare = locate(str(xml), None, tmp_path)  # --model model_int8.xml, auto
    assert bare.backend == "int8" and bare.onnx_file == xml
    from_file, _ = load_predictor(bare, "cpu")
    assert isinstance(from_file.model, OpenVinoModel)
    with pytest.raises(ValueError, match="OpenVINO IR"):
        locate(str(xml), None, tmp_path, backend="onnxruntime")

    images = _val_images(tiny_shards, 6)
    ran = [m.detect(images) for m in (pyfunc_model, from_folder, from_file)]
    for other in ran[1:]:
        for a, b in zip(ran[0], other, strict=True):
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.masks, b.masks)
    direct = open_exported(xml).detect(images)
    for a, b in zip(direct, ran[0], strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    report = compare_exported(fp32_file, from_file.model, images)
    assert report["expected"] >= 20, report
    assert report["matched"] >= 0.5 * report["expected"], report


def test_without_openvino_the_stage_and_predict_say_how_to_install_it(tmp_path):
    """A process where openvino and nncf cannot be imported: the export stage with the default
    toolchain or with `pyfunc_backend: openvino` stops before any work, and predict refuses an
    .xml and `--backend openvino`, each with one error line naming `pip install -e
    '.[openvino]'` (no traceback)."""
    import yaml
    from PIL import Image

    mlflow_section = {"tracking_uri": "sqlite:///mlflow.db"}
    for name, export in (("int8", {"int8": True}), ("fp32", {"pyfunc_backend": "openvino"})):
        doc = {"export": export, "mlflow": mlflow_section}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    for name in ("model_int8.xml", "model.onnx"):  # never read: the import fails first
        (tmp_path / name).write_text("x")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    predict = "from pipeline.predict import main\nmain(['--input', 'a.png', '--out', 'out', "
    calls = {
        "export": "from pipeline.stages.export import main\nmain(['--params', 'int8.yaml'])",
        "export_openvino": "from pipeline.stages.export import main\n"
        "main(['--params', 'fp32.yaml'])",
        "predict": predict + "'--model', 'model_int8.xml'])",
        "predict_openvino": predict + "'--model', 'model.onnx', '--backend', 'openvino'])",
    }
    lines = {}
    for name, call in calls.items():
        done = subprocess.run(
            [sys.executable, "-c", BLOCK + call],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
        assert done.returncode == 1, (name, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (name, done.stderr[-2000:])
        assert len(errors) == 1 and INSTALL in errors[0], (name, done.stderr[-2000:])
        lines[name] = errors[0]
    assert "needs openvino and nncf" in lines["export"]
    assert "or set export.int8_toolchain: onnxruntime" in lines["export"]
    assert "OpenVinoModel needs openvino" in lines["predict"]
    assert "OpenVinoModel needs openvino" in lines["predict_openvino"]
    assert "export.pyfunc_backend: openvino needs openvino" in lines["export_openvino"]
    assert "or set export.pyfunc_backend: onnxruntime" in lines["export_openvino"]


@pytest.mark.parametrize(
    "toolchain", [pytest.param(None, marks=pytest.mark.openvino), "onnxruntime"]
)
def test_export_stage_writes_the_int8_section(tiny_shards, tmp_path, toolchain):
    """`python -m pipeline.export` with export.int8 on the tiny shards, with the default
    toolchain (openvino) and with onnxruntime: the int8 model beside model.onnx, export.json's
    int8 section, the run's int8 metrics, and the logged model carrying the accepted int8
    model (artifact `openvino_int8`: a folder with the IR; or `onnx_int8`), which the logged
    pyfunc (backend int8) and predict from the registry run as the file itself does."""
    import io

    import mlflow
    import pandas as pd
    import yaml
    from PIL import Image

    from mrcnn import weights
    from pipeline.predict_model import load_predictor, locate
    from pipeline.stages import export
    from pipeline.tracking.pyfunc import frame_detections
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
        "register": True,
        "pyfunc_backend": "int8",
        "int8": True,
        "int8_max_ap_drop": 1.0,
        "int8_calibration_images": 4,
        "int8_eval_images": 3,
    }
    if toolchain:
        section["int8_toolchain"] = toolchain
    chosen = toolchain or "openvino"
    doc = {
        "data": {"source": "shapes"},
        "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "mrcnn"},
        "export": section,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(doc))
    export.main(["--params", str(root / "params.yaml")])
    out = root / "models" / "export"
    result = json.loads((out / "export.json").read_text())
    int8 = result["int8"]
    assert int8["accepted"] and int8["toolchain"] == chosen
    assert Path(int8["file"]) == out / int8_export.INT8_FILES[chosen]
    assert sorted(p.name for p in out.glob("model*")) == sorted(
        ["model.onnx", *(p.name for p in int8_export.model_files(Path(int8["file"])))]
    )
    for key in ("file", "bbox_AP", "segm_AP", "fp32_bbox_AP", "fp32_segm_AP", "speedup_vs_fp32"):
        assert key in int8  # the ARCHITECTURE.md contract
    assert int8["speedup_vs_fp32"] > 0 and int8["num_eval_images"] == 3
    run = mlflow.MlflowClient(uri).get_run(result["run_id"])
    assert run.data.metrics["int8.segm_AP"] == pytest.approx(int8["segm_AP"])
    assert run.data.tags["export.int8"] == "accepted"
    mlflow.set_tracking_uri(uri)
    local = Path(
        mlflow.artifacts.download_artifacts(
            result["logged_model_uri"], dst_path=str(tmp_path / "dl")
        )
    )
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    key = "openvino_int8" if chosen == "openvino" else "onnx_int8"
    assert key in flavor["artifacts"] and flavor["config"]["backend"] == "int8"
    requirements = (local / "requirements.txt").read_text()
    assert ("openvino==" in requirements) == (chosen == "openvino")
    if chosen == "openvino":
        logged = local / flavor["artifacts"][key]["path"]
        assert sorted(p.name for p in logged.iterdir()) == ["model_int8.bin", "model_int8.xml"]

    images = _val_images(tiny_shards, 2)
    blobs = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    frame = mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame({"image": blobs}))
    served = frame_detections(frame, len(images))
    (tmp_path / "pull").mkdir()
    pulled = locate(f"models:/mrcnn-int8-test/{result['version']}", uri, tmp_path / "pull")
    assert pulled.backend == "int8" and pulled.onnx_file.name == Path(int8["file"]).name
    predicted = load_predictor(pulled, "cpu")[0].detect(images)
    direct = open_exported(int8["file"]).detect(images)
    for a, b, c in zip(direct, served, predicted, strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)  # the frame's float64 boxes
        np.testing.assert_array_equal(a.boxes, c.boxes)
