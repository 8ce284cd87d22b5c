"""pipeline.predict on a local model folder: inputs, bad files, missing models, class maps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mrcnn.coco_results import decode_masks
from pipeline import predict
from pipeline.params import PredictParams
from tests.pipeline.registry_helpers import save_model, synthetic_images, tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tiny_model(), tmp_path_factory.mktemp("models") / "final")


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


def test_corrupt_file_stops_with_its_name(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _folder_with_a_bad_file(tmp_path)
    with pytest.raises(SystemExit) as e:
        _cli(model_dir, [folder], tmp_path / "out")
    assert e.value.code == 1
    assert "cannot read image" in caplog.text and "b_corrupt.jpg" in caplog.text
    assert not (tmp_path / "out" / "results.json").exists()


def test_skip_bad_continues_and_reports(model_dir: Path, tmp_path: Path) -> None:
    folder = _folder_with_a_bad_file(tmp_path)
    out = tmp_path / "out"
    _cli(model_dir, [folder], out, "--skip-bad", "--score-thresh", "0.0")
    summary = json.loads((out / "images.json").read_text())
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
    assert (out / "overlays" / "imgs" / "sub" / "gray.jpg.png").is_file()


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
        assert predict.read_class_map(tmp_path, 3) == {1: 5, 2: 7}
    (tmp_path / "config.json").write_text(json.dumps({"config": {}, "class_map": {"1": 5}}))
    with pytest.raises(ValueError, match=r"no category for labels \[2\]"):
        predict.read_class_map(tmp_path, 3)
    (tmp_path / "config.json").write_text(json.dumps({"config": {}}))
    assert predict.read_class_map(tmp_path, 3) is None


def test_local_mlflow_model_folder_is_accepted(model_dir: Path, tmp_path: Path) -> None:
    """A model downloaded with `mlflow artifacts download` (MLmodel + artifacts/...)."""
    mlmodel = (
        "flavors:\n  python_function:\n    artifacts:\n      model:\n        path: artifacts/w\n"
    )
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "MLmodel").write_text(mlmodel)
    (tmp_path / "dl" / "artifacts").mkdir()
    (tmp_path / "dl" / "artifacts" / "w").symlink_to(model_dir)
    weights_dir, _ = predict.resolve_model(str(tmp_path / "dl"), None, tmp_path)
    assert (weights_dir / "model.safetensors").is_file()
    assert (weights_dir / "config.json").read_bytes() == (model_dir / "config.json").read_bytes()
