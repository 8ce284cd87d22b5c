"""pipeline.predict on a local model folder: inputs, bad files, missing models, class maps."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

from mrcnn.evaluation.coco_results import decode_masks
from pipeline import predict, predict_model
from pipeline.serve_params import PredictParams
from tests.fuzz import fuzz, fuzz_settings
from tests.pipeline.bad_images import damaged_folder
from tests.pipeline.parity import BOX_TOL, assert_same_results
from tests.pipeline.registry_helpers import save_model, synthetic_images, tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tiny_model(), tmp_path_factory.mktemp("models") / "final")


@pytest.fixture(scope="module")
def onnx_file(model_dir: Path) -> Path:
    """The same model as a whole-model ONNX file (batch 1, as the export stage writes it)."""
    from mrcnn.export.onnx import to_onnx

    return to_onnx(tiny_model(), model_dir.parent / "export" / "model.onnx")


def _folder_with_a_bad_file(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    good, other = synthetic_images()
    Image.fromarray(good).save(folder / "a.png")
    Image.fromarray(other).convert("L").save(folder / "sub" / "gray.jpg")  # grayscale JPEG
    (folder / "b_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image suffix: ignored")
    return folder


def _cli(model: Path | str, inputs: list[Path], out: Path, *extra: str) -> None:
    args = ["--model", str(model), "--input", *map(str, inputs), "--out", str(out)]
    predict.main([*args, "--params", str(out.parent / "absent.yaml"), *extra])


def test_strict_stops_at_the_bad_file_keeping_what_was_done(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _folder_with_a_bad_file(tmp_path)
    with pytest.raises(SystemExit) as e:
        _cli(model_dir, [folder], tmp_path / "out", "--strict")
    assert e.value.code == 1
    assert "cannot read image" in caplog.text and "b_corrupt.jpg" in caplog.text
    summary = json.loads((tmp_path / "out" / "images.json").read_text())
    assert summary["complete"] is False and "b_corrupt.jpg" in summary["stopped"]
    assert [im["file_name"] for im in summary["images"]] == ["imgs/a.png"]  # before the bad one
    assert (tmp_path / "out" / "results.json").is_file()
    assert (tmp_path / "out" / "overlays" / "imgs" / "a.png").is_file()


def test_bad_file_is_reported_and_skipped(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _folder_with_a_bad_file(tmp_path)
    out = tmp_path / "out"
    _cli(model_dir, [folder], out, "--score-thresh", "0.0")
    assert "1 skipped (unreadable: imgs/b_corrupt.jpg; see images.json)" in caplog.text
    summary = json.loads((out / "images.json").read_text())
    assert summary["complete"] is True and summary["num_skipped"] == 1
    assert [im["file_name"] for im in summary["images"]] == ["imgs/a.png", "imgs/sub/gray.jpg"]
    assert [im["id"] for im in summary["images"]] == [1, 3]  # ids number the inputs, 2 was bad
    assert [Path(s["path"]).name for s in summary["skipped"]] == ["b_corrupt.jpg"]
    results = json.loads((out / "results.json").read_text())
    assert len(results) == summary["num_detections"] > 0
    gray = [r for r in results if r["file_name"] == "imgs/sub/gray.jpg"]
    assert gray and all(r["image_id"] == 3 for r in gray)
    r = results[0]
    assert set(r) == {"image_id", "file_name", "category_id", "bbox", "score", "segmentation"}
    assert decode_masks([r["segmentation"]]).shape == (1, 96, 128)
    assert 1 <= r["category_id"] <= 3  # no class map: the model's labels
    assert (out / "overlays" / "imgs" / "sub" / "gray.png").is_file()  # <stem>.png, same tree


def test_every_image_kind_is_read_and_exif_orientation_applied(
    model_dir: Path, tmp_path: Path
) -> None:
    rgb = synthetic_images()[0]  # 96 x 128
    folder = tmp_path / "kinds"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "rgb.tif")
    Image.fromarray(rgb).save(folder / "rgb.webp")
    Image.fromarray(rgb).save(folder / "rgb.bmp")
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: 128 x 96 upright
    Image.fromarray(rgb).save(folder / "phone.jpg", exif=exif)
    out = tmp_path / "out"
    summary = predict.run(str(model_dir), [folder], out, PredictParams(score_thresh=0.0))
    sizes = {im["file_name"]: (im["height"], im["width"]) for im in summary["images"]}
    assert summary["num_skipped"] == 0 and len(sizes) == 8
    assert sizes.pop("kinds/phone.jpg") == (128, 96)
    assert set(sizes.values()) == {(96, 128)}
    with Image.open(out / "overlays" / "kinds" / "deep16.png") as im:
        assert im.size == (128, 96) and im.mode == "RGB"
    names = sorted(p.name for p in (out / "overlays" / "kinds").iterdir())
    assert names == sorted(
        [
            "deep16.png",
            "gray.png",
            "palette.png",
            "phone.png",
            "rgb.png",
            "rgb_2.png",
            "rgb_3.png",
            "rgba.png",
        ]
    )


def test_an_interrupted_run_keeps_what_was_done(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(synthetic_images()[i % 2]).save(folder / f"{i}.png")
    from mrcnn.modeling.model import MaskRCNN

    real, calls = MaskRCNN.detect, []

    def detect_then_ctrl_c(self, images, batch_size=4):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, images, batch_size)

    monkeypatch.setattr(MaskRCNN, "detect", detect_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        predict.run(str(model_dir), [folder], tmp_path / "out", PredictParams(0.0, batch_size=2))
    summary = json.loads((tmp_path / "out" / "images.json").read_text())
    assert summary["complete"] is False and summary["stopped"].startswith("KeyboardInterrupt")
    assert [im["file_name"] for im in summary["images"]] == ["many/0.png", "many/1.png"]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["file_name"] for r in results} <= {"many/0.png", "many/1.png"}
    assert len(results) == summary["num_detections"]


def test_tiled_prediction_writes_full_resolution_results(model_dir: Path, tmp_path: Path) -> None:
    image = tmp_path / "big.png"
    Image.fromarray(synthetic_images()[0]).save(image)
    out = tmp_path / "out"
    summary = predict.run(
        str(model_dir), [image], out, PredictParams(score_thresh=0.0), tile=64, tile_overlap=0.25
    )
    assert summary["images"][0]["tiled"] is True
    results = json.loads((out / "results.json").read_text())
    assert len(results) == summary["num_detections"] > 0
    assert decode_masks([r["segmentation"] for r in results]).shape[1:] == (96, 128)
    assert (out / "overlays" / "big.png").is_file()
    plain = predict.run(str(model_dir), [image], tmp_path / "plain", PredictParams(0.0), tile=0)
    assert plain["images"][0]["tiled"] is False


def test_a_large_image_is_not_tiled_unless_asked_and_predict_agrees_with_the_pyfunc(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 22: predict tiled every image 3x the model input on its own, so the CLI and
    `mlflow models serve` (the pyfunc, which never tiles) disagreed on the same photo. Now
    tiling is asked for (`--tile`); by default the image goes through whole, a hint names it,
    and the CLI's detections are the pyfunc's."""
    import io
    from types import SimpleNamespace

    import pandas as pd

    from pipeline.tracking import pyfunc

    big = np.kron(synthetic_images()[0], np.ones((3, 3, 1), dtype=np.uint8))  # 288 x 384
    Image.fromarray(big).save(tmp_path / "big.png")
    with caplog.at_level("INFO", logger="pipeline.predict"):
        summary = predict.run(
            str(model_dir), [tmp_path / "big.png"], tmp_path / "out", PredictParams()
        )
    assert summary["images"][0]["tiled"] is False
    assert "big.png" in caplog.text and "--tile" in caplog.text
    served = pyfunc.MaskRCNNModel()
    served.load_context(SimpleNamespace(artifacts={"model": str(model_dir)}, model_config={}))
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    frame = served.predict(None, pd.DataFrame({pyfunc.INPUT_COLUMN: [buf.getvalue()]}))
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results) == len(frame) > 0
    got = sorted(r["score"] for r in results)
    np.testing.assert_allclose(got, sorted(frame["score"]), rtol=0, atol=1e-5)


def test_registry_uri_precedence_and_no_store_outside_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(SystemExit):
        predict.main(["--model", "models:/m@champion", "--input", "a.png", "--out", "o"])
    assert "no model registry to pull from" in caplog.text
    assert str(tmp_path / "params.yaml") in caplog.text
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "o").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert predict.registry_uri(None, "params.yaml") == "http://127.0.0.1:1"
    assert predict.registry_uri("sqlite:////x.db", "params.yaml") == "sqlite:////x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "params.yaml").write_text("mlflow:\n  tracking_uri: sqlite:///m.db\n")
    uri = predict.registry_uri(None, str(tmp_path / "proj" / "params.yaml"))
    assert uri == f"sqlite:///{(tmp_path / 'proj' / 'm.db').resolve()}"


def test_score_thresh_override_filters(model_dir: Path, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(synthetic_images()[0]).save(image)
    low = predict.run(str(model_dir), [image], tmp_path / "low", PredictParams(score_thresh=0.0))
    scores = sorted(r["score"] for r in json.loads((tmp_path / "low/results.json").read_text()))
    thresh = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    high = predict.run(str(model_dir), [image], tmp_path / "high", PredictParams(thresh))
    assert 0 < high["num_detections"] < low["num_detections"]
    results = json.loads((tmp_path / "high" / "results.json").read_text())
    assert min(r["score"] for r in results) > thresh


def test_missing_local_model_is_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(synthetic_images()[0]).save(image)
    with pytest.raises(SystemExit):
        _cli(tmp_path / "models" / "nope", [image], tmp_path / "out")
    assert "does not exist" in caplog.text and "dvc repro" in caplog.text
    caplog.clear()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        _cli(tmp_path / "empty", [image], tmp_path / "out")
    assert "is not a saved model" in caplog.text


def test_missing_input_is_a_clear_error(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predict.collect_inputs([tmp_path / "nothing.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        predict.collect_inputs([tmp_path / "empty"])


def test_output_names_are_unique(tmp_path: Path) -> None:
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "a.png").write_bytes(b"")
    names = [i.name for i in predict.collect_inputs([tmp_path / "x/a.png", tmp_path / "y/a.png"])]
    assert names == ["a.png", "a_2.png"]


def test_class_map_formats(tmp_path: Path) -> None:
    # the manifest's shape, and {label: id} of model folders saved before it was the only one
    for raw in ({"1": {"category_id": 5, "name": "a"}, "2": {"category_id": 7}}, {"1": 5, "2": 7}):
        (tmp_path / "config.json").write_text(json.dumps({"config": {}, "class_map": raw}))
        assert predict_model.read_class_map(tmp_path, 3) == {1: 5, 2: 7}
    (tmp_path / "config.json").write_text(json.dumps({"config": {}, "class_map": {"1": 5}}))
    with pytest.raises(ValueError, match=r"no category for labels \[2\]"):
        predict_model.read_class_map(tmp_path, 3)
    (tmp_path / "config.json").write_text(json.dumps({"config": {}}))
    assert predict_model.read_class_map(tmp_path, 3) is None


def test_local_mlflow_model_folder_is_accepted(model_dir: Path, tmp_path: Path) -> None:
    """A model downloaded with `mlflow artifacts download` (MLmodel + artifacts/...)."""
    mlmodel = (
        "flavors:\n  python_function:\n    artifacts:\n      model:\n        path: artifacts/w\n"
    )
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "MLmodel").write_text(mlmodel)
    (tmp_path / "dl" / "artifacts").mkdir()
    (tmp_path / "dl" / "artifacts" / "w").symlink_to(model_dir)
    weights_dir, _ = predict_model.resolve_model(str(tmp_path / "dl"), None, tmp_path)
    assert (weights_dir / "model.safetensors").is_file()
    assert (weights_dir / "config.json").read_bytes() == (model_dir / "config.json").read_bytes()


def _images_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(synthetic_images()):
        Image.fromarray(im).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("score_thresh", [-1.0, 0.2831])
def test_both_backends_write_the_same_detections(
    model_dir: Path, onnx_file: Path, tmp_path: Path, score_thresh: float
) -> None:
    """torch on the weights and onnxruntime on the ONNX file (auto for an .onnx path) write the
    same results within the export's parity tolerances; a raised threshold filters both alike."""
    folder = _images_folder(tmp_path)
    params = PredictParams(score_thresh=score_thresh)
    eager = predict.run(str(model_dir), [folder], tmp_path / "torch", params)
    onnx = predict.run(str(onnx_file), [folder], tmp_path / "onnx", params)
    assert eager["model"]["backend"] == "torch" and onnx["model"]["backend"] == "onnxruntime"
    assert onnx["score_thresh"] == eager["score_thresh"] == (0.0 if score_thresh < 0 else 0.2831)
    want = json.loads((tmp_path / "torch" / "results.json").read_text())
    got = json.loads((tmp_path / "onnx" / "results.json").read_text())
    # Untrained: 10 detections per image, scores 0.278..0.289; 0.2831 keeps 6 of image 0's.
    assert len(want) == (20 if score_thresh < 0 else 6)
    scale = min(128 / max(im.shape[:2]) for im in synthetic_images())
    assert_same_results(want, got, BOX_TOL / scale)
    assert (tmp_path / "onnx" / "overlays" / "imgs" / "1.png").is_file()


@pytest.mark.openvino
def test_openvino_backend_writes_the_onnxruntime_detections(
    model_dir: Path, onnx_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`--backend openvino` runs the ONNX file on OpenVINO (fp32) and writes onnxruntime's
    results within the export's parity tolerances; a weights folder is refused in one line."""
    from mrcnn.export.openvino_model import OpenVinoModel

    files = predict_model.locate(str(onnx_file), None, tmp_path, "openvino")
    assert files.backend == "openvino" and files.onnx_file == onnx_file
    assert isinstance(predict_model.load_predictor(files, "cpu")[0].model, OpenVinoModel)
    folder = _images_folder(tmp_path)
    _cli(onnx_file, [folder], tmp_path / "openvino", "--backend", "openvino")
    summary = json.loads((tmp_path / "openvino" / "images.json").read_text())
    assert summary["model"]["backend"] == "openvino" and summary["complete"]
    predict.run(str(onnx_file), [folder], tmp_path / "onnx", PredictParams())
    want = json.loads((tmp_path / "onnx" / "results.json").read_text())
    got = json.loads((tmp_path / "openvino" / "results.json").read_text())
    assert len(want) == 20
    scale = min(128 / max(im.shape[:2]) for im in synthetic_images())
    assert_same_results(want, got, BOX_TOL / scale)
    assert (tmp_path / "openvino" / "overlays" / "imgs" / "1.png").is_file()
    with pytest.raises(SystemExit):
        _cli(model_dir, [folder], tmp_path / "b", "--backend", "openvino")
    assert "holds weights, not an ONNX file" in caplog.text


def test_onnx_backend_refuses_what_it_cannot_do(
    model_dir: Path, onnx_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _images_folder(tmp_path)
    with pytest.raises(SystemExit):
        _cli(onnx_file, [folder], tmp_path / "a", "--backend", "torch")
    assert "is an ONNX file: run it with --backend onnxruntime" in caplog.text
    with pytest.raises(SystemExit):
        _cli(model_dir, [folder], tmp_path / "b", "--backend", "onnxruntime")
    assert "holds weights, not an ONNX file" in caplog.text
    from mrcnn.export.onnx import to_onnx

    net = tiny_model()
    net.roi_heads.detection_layer.score_thresh = (
        0.2831  # traced into the graph, recorded in its metadata
    )
    strict = to_onnx(net, tmp_path / "strict.onnx")
    summary = predict.run(str(strict), [folder], tmp_path / "c", PredictParams())
    assert summary["score_thresh"] == 0.2831 and summary["num_detections"] == 6
    with pytest.raises(ValueError, match=r"below the ONNX file's 0.2831 .* --backend torch"):
        predict.run(str(strict), [folder], tmp_path / "d", PredictParams(score_thresh=0.1))


def test_a_folder_of_good_and_bad_files_gives_results_and_names_each_bad_one(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 23: every image kind users have (CMYK, 16-bit, palette, 1 x 1, EXIF-rotated,
    spaces and non-ASCII names) beside every way a file is broken (truncated, empty, text
    named .jpg, flipped bytes, ...): the good ones get results, each bad one is skipped, named
    in one log line with its reason and in images.json, the run exits 0 with no traceback."""
    caplog.set_level("INFO")
    folder = tmp_path / "mixed photos"
    good, bad = damaged_folder(folder, synthetic_images()[0], seed=0)
    (folder / "notes.txt").write_text("not an image")
    assert len(bad) >= 9 and "名前 with spaces é.png" in good
    out = tmp_path / "out"
    _cli(model_dir, [folder], out, "--score-thresh", "0.0")  # no SystemExit: exit status 0
    summary = json.loads((out / "images.json").read_text())
    assert summary["complete"] is True
    assert sorted(Path(i["file_name"]).name for i in summary["images"]) == sorted(good)
    assert sorted(Path(s["path"]).name for s in summary["skipped"]) == sorted(bad)
    assert {s["reason"] for s in summary["skipped"]} == {"corrupt_image"}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert len(lines) == len(bad) and all("\n" not in line for line in lines)
    for name in bad:
        assert any(f"mixed photos/{name} (corrupt_image): cannot read image" in x for x in lines)
    assert "Traceback" not in caplog.text
    assert "1 other files not read (not an image suffix: notes.txt)" in caplog.text
    sizes = {Path(i["file_name"]).name: (i["height"], i["width"]) for i in summary["images"]}
    assert sizes["one pixel.png"] == (1, 1) and sizes["exif rotated.jpg"] == (128, 96)
    assert (out / "overlays" / "mixed photos" / "名前 with spaces é.png").is_file()
    results = json.loads((out / "results.json").read_text())
    assert {r["file_name"] for r in results} <= {i["file_name"] for i in summary["images"]}


def test_no_readable_input_is_one_line_and_exit_1(model_dir: Path, tmp_path: Path) -> None:
    """The real entry point, as a user runs it: only bad files -> exit 1, one error line, no
    traceback; images.json still lists what was skipped and why."""
    folder = tmp_path / "all bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.png").write_text("text")
    out = tmp_path / "out"
    argv = ["--model", str(model_dir), "--input", str(folder), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.predict", *argv, "--params", str(tmp_path / "no.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "none of the 2 input files could be read" in errors[0]
    skipped = json.loads((out / "images.json").read_text())["skipped"]
    assert [(Path(s["path"]).name, s["reason"]) for s in skipped] == [
        ("a.jpg", "corrupt_image"),
        ("b.png", "corrupt_image"),
    ]


@fuzz
@fuzz_settings(8)
@given(seed=st.integers(0, 2**16), picks=st.lists(st.integers(0, 20), min_size=1, max_size=5))
def test_fuzz_predict_on_damaged_folders(model_dir: Path, seed: int, picks: list[int]) -> None:
    """A folder of 1-5 files drawn from the good kinds and the corruptions (seeded damage):
    predict returns a report in which every file is either an image with results or skipped
    with its reason, or (no file readable) ImageReadError, never another exception."""
    from mrcnn.data.image_file import ImageReadError

    with tempfile.TemporaryDirectory() as tmp:
        everything = Path(tmp) / "all"
        damaged_folder(everything, synthetic_images()[1], seed=seed)
        files = sorted(everything.iterdir())
        folder = Path(tmp) / "in"
        folder.mkdir()
        for i in sorted(set(picks)):
            (folder / files[i].name).write_bytes(files[i].read_bytes())
        try:
            summary = predict.run(str(model_dir), [folder], Path(tmp) / "out", PredictParams(0.0))
        except ImageReadError as e:
            assert "none of the" in str(e)
            event("no readable file: ImageReadError")
            return
        names = {Path(i["file_name"]).name for i in summary["images"]}
        names |= {Path(s["path"]).name for s in summary["skipped"]}
        assert names == {p.name for p in folder.iterdir()}
        assert summary["complete"] and all(s["reason"] for s in summary["skipped"])
        event(f"{summary['num_skipped']} of {len(names)} skipped")
