"""mrcnn.export.to_onnx / OnnxModel: the whole exported model gives eager's detections.

Parity: >= 99% of detections matched (same label, box within 1e-2 px, score within 1e-4) and
mask IoU >= 0.98, on a briefly trained small model (batch 1 and batch 4, with an image that has
no detections) and on the torchvision preset with random weights. The trained model is the
`trained` fixture of conftest.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mrcnn import presets
from mrcnn.export.compare import compare_onnx, match_detections, raw_outputs
from mrcnn.export.onnx import to_onnx, to_torch_export
from mrcnn.export.onnx_model import OUTPUT_NAMES, OnnxModel
from mrcnn.modeling.model import build_model
from tests import REPO_ROOT
from tests.mrcnn.scenes import S, scene, tiny_model

ROOT = REPO_ROOT


def _assert_parity(report: dict) -> None:
    assert report["matched_fraction"] >= 0.99, report
    assert report["min_mask_iou"] >= 0.98, report
    assert report["max_box_diff"] <= 1e-2 and report["max_score_diff"] <= 1e-4, report


def _images() -> list[np.ndarray]:
    """Scenes at the model's size, one resized from a non-square crop, one blank."""
    crop = scene(3)[0][10:110, :]  # 100 x 128: resized and padded
    return [scene(0)[0], scene(1)[0], crop, np.full((S, S, 3), 30, np.uint8)]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> dict[int, Path]:
    out = tmp_path_factory.mktemp("onnx")
    return {b: to_onnx(trained, out / f"b{b}.onnx", batch_size=b) for b in (1, 4)}


@pytest.mark.parametrize("batch_size", [1, 4])
def test_trained_model_parity(trained, exported, batch_size):
    images = _images()
    report = compare_onnx(trained, exported[batch_size], images)
    _assert_parity(report)
    assert report["expected"] >= 6  # the three scenes hold two objects each
    # The blank image has no detections, in both.
    eager, _ = raw_outputs(trained, images[3:])
    assert not eager["valid"].any()
    onnx = OnnxModel(exported[batch_size]).run(*_prepared(exported[batch_size], images[3:]))
    assert not onnx["valid"].any() and not onnx["mask_probs"].any()


def _prepared(path: Path, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    pixels, windows, _ = OnnxModel(path).prepare(images)
    return pixels, windows


def test_graph_signature(trained, exported):
    m = OnnxModel(exported[4])
    assert (m.batch_size, m.image_size, m.detections_per_img) == (4, S, 20)
    d = m.detections_per_img
    inputs = {i.name: i.shape for i in m.session.get_inputs()}
    outputs = {o.name: o.shape for o in m.session.get_outputs()}
    assert inputs == {"images": [4, 3, S, S], "windows": [4, 4]}
    assert outputs == {
        "boxes": [4, d, 4],
        "scores": [4, d],
        "labels": [4, d],
        "valid": [4, d],
        "mask_probs": [4, d, 28, 28],
    }
    assert m.settings["config"] == trained.cfg.to_dict()


def test_detect_matches_eager(trained, exported):
    """OnnxModel.detect = MaskRCNN.detect end to end (resize, run, paste), 5 images through a
    batch-4 graph (the last batch padded)."""
    images = _images() + [scene(5)[0][:, 20:]]
    eager = trained.detect(images)
    onnx = OnnxModel(exported[4]).detect(images)
    assert [len(d) for d in onnx] == [len(d) for d in eager]
    assert len(eager[3]) == 0 and onnx[3].masks.shape == (0, S, S)
    for a, b in zip(eager, onnx, strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        assert a.masks.shape == b.masks.shape
        for ma, mb in zip(a.masks, b.masks, strict=True):
            assert (ma & mb).sum() / max(1, (ma | mb).sum()) >= 0.98


def test_loads_without_torch(trained, exported):
    """A fresh process with torch made unimportable runs the file: numpy + onnxruntime only."""
    image = scene(1)[0][5:, :100]
    np.save(exported[1].parent / "image.npy", image)
    code = (
        "import sys, json, numpy as np; sys.modules['torch'] = None\n"
        "from mrcnn.export.onnx_model import OnnxModel\n"
        f"m = OnnxModel({str(exported[1])!r})\n"
        f"d = m.detect([np.load({str(exported[1].parent / 'image.npy')!r})])[0]\n"
        "assert 'torchvision' not in sys.modules\n"
        "print(json.dumps({'labels': d.labels.tolist(), 'boxes': d.boxes.tolist(),"
        " 'area': int(d.masks.sum())}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    eager = trained.detect([image])[0]
    assert got["labels"] == eager.labels.tolist() and len(got["labels"]) >= 1
    # Pillow resizes instead of torch here (within 2 grey levels): boxes move a little at most.
    np.testing.assert_allclose(np.array(got["boxes"]), eager.boxes, atol=1.0)
    assert abs(got["area"] - int(eager.masks.sum())) <= 0.05 * eager.masks.sum()


def test_bad_inputs(tmp_path, exported):
    with pytest.raises(ValueError, match="batch_size"):
        to_onnx(tiny_model(), tmp_path / "x.onnx", batch_size=0)
    with pytest.raises(ValueError, match="uint8"):
        OnnxModel(exported[1]).detect([np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(FileNotFoundError, match="to_onnx"):
        OnnxModel(tmp_path / "missing.onnx")


@pytest.mark.slow
def test_torch_export_program(trained, tmp_path):
    """The same graph as a .pt2 program, loaded with torch.export.load, gives eager's outputs."""
    path = to_torch_export(trained, tmp_path / "m.pt2", batch_size=2)
    program = torch.export.load(str(path)).module()
    images = _images()[:2]
    eager, batch = raw_outputs(trained, images)
    with torch.no_grad():
        out = program(batch.images, batch.windows)
    got = {name: t.numpy() for name, t in zip(OUTPUT_NAMES, out, strict=True)}
    # Slots are compared as matched detections: a trained model's scores saturate, and equal
    # scores may take their slots in either order (TopK vs the eager NMS sort).
    _assert_parity(match_detections(eager, got))
    assert eager["valid"].sum() >= 4


@pytest.mark.slow
def test_torchvision_preset_parity(tmp_path):
    """ResNet-50 FPN (aligned=False RoIAlign, sampling ratio 2) with random weights, 91 classes,
    at 128 px: every proposal and class competes (score threshold 0), 100 detections."""
    from tests.mrcnn.modeling.test_parity_torchvision import _image, _randomise

    torch.manual_seed(0)
    cfg = presets.torchvision_r50_fpn(
        num_classes=91,
        image_size=128,
        box_score_thresh=0.0,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=200,
    )
    model = build_model(cfg).eval()
    _randomise_ours(model, _randomise)
    path = to_onnx(model, tmp_path / "tv.onnx", batch_size=1)
    images = [_image(0)[:, :250], _image(1)]
    report = compare_onnx(model, path, images)
    _assert_parity(report)
    assert report["expected"] == 200  # 100 slots per image, all filled


def _randomise_ours(model: torch.nn.Module, randomise) -> None:
    """torchvision's parity-test weights, loaded through load_torchvision."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from mrcnn.weights import load_torchvision

    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    randomise(tv, seed=1)
    load_torchvision(model, tv.state_dict())


def test_an_export_check_that_compared_nothing_does_not_pass(tmp_path, caplog):
    """Issue 22: the check used to pass on "0/0 detections". A score threshold no detection
    reaches leaves nothing to compare: the file is kept, "ok" is False and a warning says why."""
    from mrcnn.export.onnx import export_portable

    model = tiny_model().eval()
    model.roi_heads.detection_layer.score_thresh = 1.01  # above every score
    with caplog.at_level("WARNING"):
        report = export_portable(model, tmp_path / "m.onnx")
    assert report["ok"] is False and report["checked"] == "nothing compared"
    assert report["matched_fraction"] is None and report["expected"] == report["actual"] == 0
    assert (tmp_path / "m.onnx").is_file()
    assert "compared nothing" in caplog.text
