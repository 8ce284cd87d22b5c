"""pipeline.export + the registry: champion moves only on improvement, versions carry their
metrics and hashes, nothing is pickled, and a model pulled by alias (through the pyfunc, and
through `pipeline.predict`) gives exactly the in-memory model's detections."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from mrcnn.evaluation.coco_results import to_coco_results
from mrcnn.fileio import file_digest, json_digest
from pipeline import predict
from pipeline.serve_params import PredictParams
from pipeline.stages import export
from pipeline.tracking import registry as reg
from pipeline.tracking.pyfunc import frame_detections
from pipeline.tracking.store import start_run
from tests.pipeline.parity import BOX_TOL, assert_same_detections, assert_same_results
from tests.pipeline.registry_helpers import fresh_store, save_model, synthetic_images, tiny_model

NAME = "mrcnn-test"
CLASS_MAP = {"1": 11, "2": 12, "3": 13}
MANIFEST = {
    "class_names": ["background", "square", "circle", "triangle"],
    "counts": {"images": 3},
}
SECTIONS = {
    "shards": {"image_size": 128},
    "model": {"preset": "shapes_small"},
    "train": {"iterations": 5},
}


RUN_NAME = "shapes-shapes-small-0123abcd"


def _write_params(
    root: Path, portable: bool, register: str | bool = "auto", backend: str = "torch"
) -> None:
    export_section = {
        "registered_model": NAME,
        "portable": portable,
        "register": register,
        "pyfunc_backend": backend,
    }
    doc = {
        "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "mrcnn"},
        "export": export_section,
        **SECTIONS,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(doc))


def _export(
    root: Path,
    segm_ap: float,
    train_run_id: str,
    portable: bool,
    register: str | bool = "auto",
    backend: str = "torch",
) -> dict:
    (root / "metrics").mkdir(exist_ok=True)
    evals = {"bbox": {"AP": segm_ap / 2, "AP50": 0.9}, "segm": {"AP": segm_ap, "AP50": 0.8}}
    (root / "metrics" / "eval.json").write_text(json.dumps(evals))
    (root / "metrics" / "train.json").write_text(json.dumps({"iterations": 5}))
    run_info = {"mlflow_run_id": train_run_id, "data_source": "shapes", "run_name": RUN_NAME}
    (root / "metrics" / "train_run.json").write_text(json.dumps(run_info))
    _write_params(root, portable, register, backend)
    export.main(["--params", str(root / "params.yaml")])
    return json.loads((root / "models" / "export" / "export.json").read_text())


def _aliases(uri: str) -> dict[str, str]:
    return {
        k: str(v) for k, v in mlflow.MlflowClient(uri).get_registered_model(NAME).aliases.items()
    }


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three exports of three tiny models (other weights each) with mask AP 0.5, 0.4, 0.6; the
    first with its ONNX file and pyfunc backend onnxruntime."""
    root = tmp_path_factory.mktemp("project")
    uri = fresh_store(root)
    manifest = root / "data" / "shards" / "train" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps(MANIFEST))
    with start_run(uri, "mrcnn", run_name="train") as run:  # what pipeline.train does
        train_id = run.info.run_id
    models = [tiny_model(seed) for seed in range(3)]
    exports, aliases = [], []
    runs = (train_id, train_id, "f" * 32)  # the last: a run the store does not have
    plan = zip(models, (0.5, 0.4, 0.6), runs, (True, False, False), strict=True)
    for model, ap, run_id, portable in plan:
        extra = {"class_map": CLASS_MAP}  # and the preset, as pipeline.train records them
        save_model(model, root / "models" / "final", extra, preset="shapes_small")
        backend = "onnxruntime" if portable else "torch"
        exports.append(_export(root, ap, run_id, portable=portable, backend=backend))
        aliases.append(_aliases(uri))
    return {
        "root": root,
        "uri": uri,
        "model": models[2],  # the champion's
        "models": models,
        "train_id": train_id,
        "exports": exports,
        "aliases": aliases,
    }


def test_champion_moves_only_on_improvement(registry: dict) -> None:
    first, second, third = registry["exports"]
    assert [e["version"] for e in registry["exports"]] == [1, 2, 3]
    assert [e["alias"] for e in registry["exports"]] == ["champion", "challenger", "champion"]
    assert registry["aliases"][0] == {"champion": "1"}
    assert registry["aliases"][1] == {"champion": "1", "challenger": "2"}
    assert registry["aliases"][2]["champion"] == "3"
    assert second["previous_champion"] == {"version": 1, "value": 0.5}
    assert third["previous_champion"] == {"version": 1, "value": 0.5}
    assert reg.is_improvement(0.5, None) and not reg.is_improvement(0.5, 0.5)


def test_versions_have_a_description_and_a_few_readable_tags(registry: dict) -> None:
    root = registry["root"]
    client = mlflow.MlflowClient(registry["uri"])
    v1 = client.get_model_version(NAME, "1")
    assert v1.description == (
        "Mask R-CNN, preset shapes_small, trained on shapes (3 train images; 3 classes: "
        f"square, circle, triangle), 5 iterations (run {RUN_NAME}). Val segm AP 0.500, "
        "bbox AP 0.250."
    )
    provenance = {
        "manifest.train": file_digest(root / "data/shards/train/manifest.json", "md5"),
        **{f"params.{k}": v for k, v in SECTIONS.items()},
    }
    assert v1.tags == {
        "metrics.segm.AP": "0.5",
        "metrics.bbox.AP": "0.25",
        "data": "shapes",
        "preset": "shapes_small",
        "train.run": RUN_NAME,
        "train.iterations": "5",
        "weights.sha256": v1.tags["weights.sha256"],
        "provenance.md5": json_digest(provenance, "md5"),
        "portable.onnx": v1.tags["portable.onnx"],
        "portable.check": "agrees with eager",
        "portable.matched_fraction": "1.0000",
        "portable.max_box_diff": v1.tags["portable.max_box_diff"],
        "export.decision": "champion",
    }
    assert v1.tags["portable.onnx"].endswith("portable/model.onnx")
    v2 = client.get_model_version(NAME, "2").tags
    assert v2["export.decision"] == "challenger" and v2["metrics.segm.AP"] == "0.4"
    weights_now = file_digest(root / "models/final/model.safetensors")  # the third model
    assert client.get_model_version(NAME, "3").tags["weights.sha256"] == weights_now
    assert len({client.get_model_version(NAME, v).tags["weights.sha256"] for v in "123"}) == 3


def test_same_weights_are_registered_once_and_only_move_aliases(tmp_path, monkeypatch):
    uri = fresh_store(tmp_path)
    (tmp_path / "data/shards/train").mkdir(parents=True)
    (tmp_path / "data/shards/train/manifest.json").write_text(json.dumps(MANIFEST))
    with start_run(uri, "mrcnn", run_name="train") as run:
        train_id = run.info.run_id
    client = mlflow.MlflowClient(uri)
    for seed, ap in ((0, 0.5), (1, 0.4)):
        save_model(tiny_model(seed), tmp_path / "models/final", extra={"class_map": CLASS_MAP})
        _export(tmp_path, ap, train_id, portable=False)
    again = _export(tmp_path, 0.6, train_id, portable=False)  # model 1 re-evaluated: better
    assert again["registered"] and not again["new_version"] and again["version"] == 2
    assert again["logged_model_uri"] is None  # not logged a second time
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 2
    assert _aliases(uri) == {"champion": "2"}  # the better AP took the alias, no new version
    assert client.get_model_version(NAME, "2").tags["metrics.segm.AP"] == "0.6"
    assert "segm AP 0.600" in client.get_model_version(NAME, "2").description

    # Under `dvc exp run`: logged to the run, not registered, unless export.register is true.
    monkeypatch.setenv("DVC_EXP_NAME", "urban-sill")
    save_model(tiny_model(2), tmp_path / "models/final", extra={"class_map": CLASS_MAP})
    skipped = _export(tmp_path, 0.9, train_id, portable=False)
    assert not skipped["registered"] and skipped["version"] is None and skipped["alias"] is None
    assert "urban-sill" in skipped["why"] and skipped["logged_model_uri"]
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 2
    assert _aliases(uri) == {"champion": "2"}
    kept = _export(tmp_path, 0.9, train_id, portable=False, register=True)
    assert kept["new_version"] and kept["version"] == 3 and kept["alias"] == "champion"
    monkeypatch.delenv("DVC_EXP_NAME")
    assert reg.should_register("false") == (False, "export.register is false")
    assert reg.should_register("auto") == (True, "export.register is auto")


def test_model_is_logged_into_the_training_run_when_it_exists(registry: dict) -> None:
    client = mlflow.MlflowClient(registry["uri"])
    first, _, third = registry["exports"]
    assert first["logged_into_training_run"] and first["run_id"] == registry["train_id"]
    assert client.get_model_version(NAME, "1").run_id == registry["train_id"]
    assert not third["logged_into_training_run"]
    assert client.get_model_version(NAME, "3").run_id == third["run_id"] != registry["train_id"]
    assert client.get_run(registry["train_id"]).data.tags["export.version"] == "2"


def test_logged_model_has_no_pickle_and_ships_weights_and_code(registry: dict, tmp_path: Path):
    mlflow.set_tracking_uri(registry["uri"])
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(tmp_path)))
    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".pth"))], files
    assert "artifacts/weights/model.safetensors" in files
    assert "artifacts/weights/config.json" in files
    assert "code/mrcnn/modeling/model.py" in files
    assert "pyfunc.py" in files  # pipeline/tracking/pyfunc.py, the model's code
    pyfunc = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "model_code_path" in pyfunc and "python_model" not in pyfunc
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"


def test_portable_file_was_checked_and_logged(registry: dict, tmp_path: Path) -> None:
    first, second, _ = registry["exports"]
    portable = first["portable"]
    assert portable["ok"] and portable["matched_fraction"] >= 0.99
    assert portable["contains"] == "the whole inference graph" and portable["num_images"] == 3
    mlflow.set_tracking_uri(registry["uri"])
    logged = mlflow.artifacts.download_artifacts(
        f"runs:/{first['run_id']}/portable/model.onnx", dst_path=str(tmp_path)
    )
    assert Path(logged).stat().st_size > 100_000
    # Later exports had portable: false; they must not leave the old file behind as theirs.
    assert second["portable"] is None
    assert not (registry["root"] / "models" / "export" / "model.onnx").exists()


def test_portable_model_carries_its_onnx_file_and_runs_it(registry: dict, tmp_path: Path):
    """Version 1 (portable, pyfunc_backend onnxruntime) runs its ONNX file through the pyfunc;
    `model_config` at load time picks the torch backend of the same model instead."""
    mlflow.set_tracking_uri(registry["uri"])
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(tmp_path)))
    pyfunc = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert pyfunc["config"] == {"backend": "onnxruntime"}  # MLflow keeps model_config here
    assert set(pyfunc["artifacts"]) == {"model", "onnx"}
    onnx_file = local / pyfunc["artifacts"]["onnx"]["path"]
    assert file_digest(onnx_file) == registry["exports"][0]["portable"]["sha256"]
    assert "onnxruntime==" in (local / "requirements.txt").read_text()
    v3 = yaml.safe_load(
        Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/3/MLmodel")).read_text()
    )["flavors"]["python_function"]
    assert v3["config"] == {"backend": "torch"} and set(v3["artifacts"]) == {"model"}

    images = synthetic_images()
    frame = pd.DataFrame({"image": [p.read_bytes() for p in _save_pngs(images, tmp_path)]})
    onnx = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    eager = mlflow.pyfunc.load_model(f"models:/{NAME}/1", model_config={"backend": "torch"})
    expected = registry["models"][0].detect(images)
    got_onnx = frame_detections(onnx.predict(frame), len(images))
    got_eager = frame_detections(eager.predict(frame), len(images))
    assert [len(d) for d in got_onnx] == [len(d) for d in expected] == [10, 10]
    assert_same_detections(expected, got_onnx, [128 / max(im.shape[:2]) for im in images])
    for e, g in zip(expected, got_eager, strict=True):
        np.testing.assert_array_equal(g.masks, e.masks)
        np.testing.assert_allclose(g.boxes, e.boxes, rtol=0, atol=1e-4)


_PYFUNC_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import mlflow, pandas as pd
    uri, out, *images = sys.argv[1:]
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/NAME@champion")
    frame = model.predict(pd.DataFrame({"image": [open(p, "rb").read() for p in images]}))
    import mrcnn
    frame.to_json(out, orient="records", double_precision=15)
    print(mrcnn.__file__)
    """
).replace("NAME", NAME)


def _save_pngs(images: list[np.ndarray], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(im).save(paths[-1])
    return paths


@pytest.mark.slow  # a fresh interpreter imports torch + mlflow: ~20 s on 2 CPU cores
def test_pyfunc_pulled_by_alias_gives_the_in_memory_detections(registry: dict, tmp_path: Path):
    """A fresh interpreter outside the repo (no PYTHONPATH): the model must bring its own code."""
    images = synthetic_images()
    expected = registry["model"].detect(images)
    assert all(len(d) > 0 for d in expected)
    paths = _save_pngs(images, tmp_path / "imgs")
    script = tmp_path / "load.py"
    script.write_text(_PYFUNC_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    out = tmp_path / "frame.json"
    proc = subprocess.run(
        [sys.executable, str(script), registry["uri"], str(out), *map(str, paths)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "/code/mrcnn/" in proc.stdout  # mrcnn came from the logged model, not the repo
    import pandas as pd

    frame = pd.DataFrame(json.loads(out.read_text()))
    got = frame_detections(frame, len(images))
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(g.labels, e.labels)
        np.testing.assert_allclose(g.scores, e.scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(g.boxes, e.boxes, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(g.masks, e.masks)


def test_predict_by_alias_gives_the_in_memory_detections(registry: dict, tmp_path: Path) -> None:
    images = synthetic_images()
    # predict loads the model as `mrcnn.weights.load` does on CPU: channels_last (whose
    # convolutions round differently from NCHW's), so the reference runs in that layout too.
    expected = copy.deepcopy(registry["model"]).use_channels_last().detect(images)
    assert all(len(d) > 0 for d in expected)
    folder = tmp_path / "imgs"
    _save_pngs(images, folder)
    out = tmp_path / "out"
    summary = predict.run(
        f"models:/{NAME}@champion", [folder], out, PredictParams(), tracking_uri=registry["uri"]
    )
    assert summary["model"] == {
        "registered_model": NAME,
        "version": 3,
        "alias": "champion",
        "uri": f"models:/{NAME}/3",
        "backend": "torch",
    }
    class_map = {int(k): v for k, v in CLASS_MAP.items()}
    want = []
    for i, det in enumerate(expected):
        want += to_coco_results(det, i + 1, class_map, file_name=f"imgs/img{i}.png")
    got = json.loads((out / "results.json").read_text())
    assert got == json.loads(json.dumps(want))  # exactly the same numbers, masks and ids
    assert {r["category_id"] for r in got} <= {11, 12, 13}
    for i, im in enumerate(images):
        overlay = np.asarray(Image.open(out / "overlays" / "imgs" / f"img{i}.png"))
        assert overlay.shape == im.shape and not np.array_equal(overlay, im)


def test_predict_runs_a_registered_onnx_model_on_onnxruntime(registry: dict, tmp_path: Path):
    """models:/NAME/1 was exported with pyfunc_backend onnxruntime: predict's auto backend runs
    its ONNX file (only that and config.json are pulled) and writes the eager detections."""
    images = synthetic_images()
    _save_pngs(images, tmp_path / "imgs")
    out = tmp_path / "out"
    summary = predict.run(
        f"models:/{NAME}/1", [tmp_path / "imgs"], out, PredictParams(), tracking_uri=registry["uri"]
    )
    assert summary["model"]["backend"] == "onnxruntime" and summary["model"]["version"] == 1
    class_map = {int(k): v for k, v in CLASS_MAP.items()}
    want = []
    for i, det in enumerate(registry["models"][0].detect(images)):
        want += to_coco_results(det, i + 1, class_map, file_name=f"imgs/img{i}.png")
    got = json.loads((out / "results.json").read_text())
    scale = min(128 / max(im.shape[:2]) for im in images)
    assert_same_results(json.loads(json.dumps(want)), got, BOX_TOL / scale)


def _predict_cli(registry: dict, model: str, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    _save_pngs(synthetic_images()[:1], folder)
    predict.main(
        [
            "--model",
            model,
            "--input",
            str(folder),
            "--out",
            str(tmp_path / "out"),
            "--params",
            str(registry["root"] / "params.yaml"),
        ]
    )


def test_predict_missing_alias_or_model_is_a_clear_error(
    registry: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(SystemExit) as e:
        _predict_cli(registry, f"models:/{NAME}@nope", tmp_path)
    assert e.value.code == 1
    assert f"'{NAME}' has no alias 'nope'" in caplog.text
    assert "@champion -> v3" in caplog.text and "@challenger -> v2" in caplog.text
    assert "dvc repro" in caplog.text
    caplog.clear()
    with pytest.raises(SystemExit):
        _predict_cli(registry, "models:/nothing@champion", tmp_path)
    assert "no registered model 'nothing'" in caplog.text and NAME in caplog.text
    assert not (tmp_path / "out" / "results.json").exists()
