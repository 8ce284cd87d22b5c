"""mrcnn.export.quantize_int8 and its accuracy check: int8 files that run without torch, agree
with fp32 within stated bounds on a trained tiny model, are refused past an allowed AP drop,
and come out the same for the same calibration seed.

Bounds (the tiny model of conftest.py, calibrated on 8 of 12 seeded scenes, checked on 10
others; measured on the earlier 40-step fixture: 43 of 45 detections matched, box <= 1.3 px,
score <= 0.03, mask IoU 1.0):
>= 90% of fp32's detections matched with the same label, every box coordinate within
`INT8_BOX_TOL` (2 px of the 128 px frame) and score within `INT8_SCORE_TOL` (0.05); matched
masks' mean IoU >= 0.95.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mrcnn.data.shards import Sample
from mrcnn.export.accuracy import (
    Int8AccuracyError,
    check_ap_drop,
    compare_exported,
    int8_accuracy,
    open_exported,
)
from mrcnn.export.int8 import (
    FP32_ROLES,
    KEEP_FP32,
    fp32_nodes,
    quantize_int8,
    select_calibration,
)
from mrcnn.export.onnx import to_onnx
from mrcnn.export.onnx_model import OnnxModel
from tests import REPO_ROOT
from tests.mrcnn.scenes import S, scene

CALIBRATION = [scene(i)[0] for i in range(12)]
CHECK = [scene(i)[0] for i in range(20, 30)]


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("int8")
    fp32 = to_onnx(trained, out / "fp32.onnx", batch_size=1)
    # reduce_range pinned (the default asks the CPU for VNNI): the same file on every CPU.
    int8 = quantize_int8(
        fp32, out / "int8.onnx", CALIBRATION, num_images=8, seed=0, reduce_range=True
    )
    return {"fp32": fp32, "int8": int8, "dir": out}


def test_int8_agrees_with_fp32(files):
    report = compare_exported(files["fp32"], files["int8"], CHECK)
    assert report["expected"] >= 20, report  # two objects in each of the ten scenes
    assert report["matched_fraction"] >= 0.9, report
    assert report["max_box_diff"] <= 2.0 and report["max_score_diff"] <= 0.05, report
    assert report["mean_mask_iou"] >= 0.95, report


def test_int8_file_is_int8_with_the_settings(files):
    import onnx

    ops = {n.op_type for n in onnx.load(str(files["int8"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    m = OnnxModel(files["int8"])
    fp32 = OnnxModel(files["fp32"])
    assert m.settings["config"] == fp32.settings["config"]
    assert (m.image_size, m.batch_size, m.detections_per_img) == (S, 1, 20)
    info = m.settings["int8"]
    assert info["toolchain"] == "onnxruntime" and info["num_images"] == 8 and info["seed"] == 0
    assert info["keep_fp32"] == list(KEEP_FP32) and len(info["kept_fp32_nodes"]) == 14


def test_fp32_roles_find_the_heads_output_layers(files):
    import onnx

    nodes = onnx.load(str(files["fp32"])).graph.node
    kept = fp32_nodes(nodes, FP32_ROLES)
    # five RPN levels x (objectness, deltas), the box predictor's two, the mask logits + deconv
    assert sum("/rpn/head/" in k for k in kept) == 10
    assert sorted(k for k in kept if "/box_head/" in k) == [
        "/box_head/bbox_pred/Gemm",
        "/box_head/cls_score/Gemm",
    ]
    ops = {n.name: n.op_type for n in nodes}
    assert sorted(ops[k] for k in kept if "/rpn/" not in k and "/box_head/" not in k) == [
        "Conv",
        "MatMul",
    ]
    with pytest.raises(ValueError, match="unknown keep_fp32 role"):
        fp32_nodes(nodes, ["backbone"])


def test_int8_runs_without_torch(files):
    """A fresh process with torch made unimportable runs the int8 file (numpy, Pillow and
    onnxruntime only) and gets the detections this process gets (an S x S image: no resize, so
    the same pixels reach the graph in both)."""
    image = scene(1)[0]
    np.save(files["dir"] / "image.npy", image)
    code = (
        "import sys, json, numpy as np; sys.modules['torch'] = None\n"
        "from mrcnn.export import OnnxModel\n"
        f"m = OnnxModel({str(files['int8'])!r})\n"
        f"d = m.detect([np.load({str(files['dir'] / 'image.npy')!r})])[0]\n"
        "assert 'torchvision' not in sys.modules\n"
        "print(json.dumps({'labels': d.labels.tolist(), 'boxes': d.boxes.tolist(),"
        " 'scores': d.scores.tolist(), 'area': d.masks.sum(axis=(1, 2)).tolist(),"
        " 'int8': m.settings['int8']['toolchain']}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["int8"] == "onnxruntime"
    here = OnnxModel(files["int8"]).detect([image])[0]
    assert got["labels"] == here.labels.tolist() and len(here) >= 2
    np.testing.assert_allclose(np.array(got["boxes"]), here.boxes, atol=1e-4)
    np.testing.assert_allclose(got["scores"], here.scores, atol=1e-6)
    assert got["area"] == here.masks.sum(axis=(1, 2)).tolist()


@pytest.mark.slow
def test_calibration_is_deterministic_for_a_seed(files, tmp_path):
    def again(path: Path, seed: int) -> Path:
        return quantize_int8(
            files["fp32"], path, CALIBRATION, num_images=8, seed=seed, reduce_range=True
        )

    assert _sha(again(tmp_path / "again.onnx", 0)) == _sha(files["int8"])
    assert _sha(again(tmp_path / "other.onnx", 1)) != _sha(files["int8"])


def test_select_calibration():
    first = select_calibration(300, 5, seed=0)
    assert first == select_calibration(300, 5, seed=0) == sorted(set(first))
    assert first != select_calibration(300, 5, seed=1)
    assert select_calibration(3, 5, seed=0) == [0, 1, 2]  # fewer than asked: all of them
    with pytest.raises(ValueError, match="num_images"):
        select_calibration(3, 0, seed=0)
    with pytest.raises(ValueError, match="no calibration images"):
        select_calibration(0, 5, seed=0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ground_truth(seeds) -> tuple[COCO, list[Sample]]:
    """The scenes as a COCO ground truth (categories 1 circle, 2 square = the model's labels)
    and as shard samples in the model's frame."""
    anns, images, samples = [], [], []
    for image_id, seed in enumerate(seeds, start=1):
        img, masks, labels = scene(seed)
        images.append({"id": image_id, "height": S, "width": S, "file_name": f"{seed}.png"})
        for m, label in zip(masks, labels, strict=True):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            x, y, w, h = mask_utils.toBbox(rle).tolist()
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [x, y, w, h],
                    "segmentation": rle,
                    "area": float(m.sum()),
                    "iscrowd": 0,
                }
            )
        samples.append(
            Sample(
                image=img,
                image_id=image_id,
                window=(0, 0, S, S),
                scale=1.0,
                original_size=(S, S),
                boxes=np.zeros((0, 4), np.float32),
                labels=np.zeros(0, np.int64),
                mini_masks=np.zeros((0, 28, 28), bool),
            )
        )
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt, samples


def test_gate_refuses_an_int8_model_past_the_allowed_drop(files, tmp_path):
    """With every layer in int8 (the heads' output layers too, `keep_fp32=()`) the tiny model
    loses AP on scenes 0..9 (measured with the 120-step fixture: bbox 0.496 -> 0.476; with the
    old 40-step one 0.216 -> 0.111); the gate, set below that drop, refuses it with one line
    naming the metric, both APs and the limit. The default int8 file (heads' outputs in fp32)
    stays within 0.02."""
    all_int8 = quantize_int8(
        files["fp32"],
        tmp_path / "all_int8.onnx",
        CALIBRATION,
        num_images=8,
        keep_fp32=(),
        reduce_range=True,
    )
    gt, samples = _ground_truth(range(10))
    with contextlib.redirect_stdout(io.StringIO()):
        report = int8_accuracy(files["fp32"], all_int8, CHECK[:3], coco_gt=gt, dataset=samples)
        kept = int8_accuracy(files["fp32"], files["int8"], coco_gt=gt, dataset=samples)
    assert report["fp32_bbox_AP"] == pytest.approx(kept["fp32_bbox_AP"])
    assert report["bbox_AP_drop"] > 0.005, report  # all-int8 costs AP
    limit = round(report["bbox_AP_drop"] / 2, 4)
    with pytest.raises(Int8AccuracyError) as refused:
        check_ap_drop(report, max_ap_drop=limit)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("int8 model refused: bbox AP")
    assert f"{report['fp32_bbox_AP']:.4f}" in message and f"{limit:.4f}" in message
    check_ap_drop(report, max_ap_drop=max(report["bbox_AP_drop"], report["segm_AP_drop"]))
    check_ap_drop(kept, max_ap_drop=0.02)  # the default int8 file passes
    assert report["agreement"]["num_images"] == 3 and "agreement" not in kept
    with pytest.raises(Int8AccuracyError, match="not measured"):
        check_ap_drop({"agreement": report["agreement"]}, max_ap_drop=0.01)


def test_bad_arguments(files, tmp_path):
    with pytest.raises(ValueError, match="toolchain"):
        quantize_int8(files["fp32"], tmp_path / "x.onnx", CALIBRATION, toolchain="tensorrt")
    with pytest.raises(ValueError, match="calibration_method"):
        quantize_int8(files["fp32"], tmp_path / "x.onnx", CALIBRATION, calibration_method="mse")
    with pytest.raises(ValueError, match="no calibration images"):
        quantize_int8(files["fp32"], tmp_path / "x.onnx", [])
    with pytest.raises(ValueError, match="both coco_gt and dataset"):
        int8_accuracy(files["fp32"], files["int8"], coco_gt=object())


@pytest.fixture(scope="module")
def openvino_int8(files) -> Path:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    return quantize_int8(
        files["fp32"], files["dir"] / "int8_ov.xml", CALIBRATION, num_images=8, toolchain="openvino"
    )


@pytest.mark.openvino
def test_openvino_runs_the_fp32_file_as_onnxruntime_does(files):
    """The fp32 ONNX file on OpenVINO: eager-parity bounds (box 1e-2 px, score 1e-4)."""
    pytest.importorskip("openvino")
    from mrcnn.export.openvino_model import OpenVinoModel

    report = compare_exported(
        files["fp32"], OpenVinoModel(files["fp32"]), CHECK, box_tol=1e-2, score_tol=1e-4
    )
    assert report["matched_fraction"] == 1.0 and report["min_mask_iou"] >= 0.98, report
    ov = OpenVinoModel(files["fp32"]).detect([scene(1)[0][5:, :100]])[0]
    ort = OnnxModel(files["fp32"]).detect([scene(1)[0][5:, :100]])[0]
    assert ov.labels.tolist() == ort.labels.tolist()
    np.testing.assert_allclose(ov.boxes, ort.boxes, atol=1e-2)


@pytest.mark.slow
@pytest.mark.openvino
def test_openvino_int8_agrees_runs_without_torch_and_is_deterministic(files, openvino_int8, caplog):
    """NNCF's int8 IR: >= 90% of fp32's detections matched within ONNX Runtime's int8 bounds
    (but up to 20% extra detections of its own); OpenVinoModel
    runs it in a process where torch cannot be imported; the same seed writes the same
    weights (.bin; the .xml's generated layer names differ within one process)."""
    report = compare_exported(files["fp32"], open_exported(openvino_int8), CHECK)
    # Measured (NNCF 3.4, OpenVINO 2026.4, 2026-12-03): 44 of fp32's 45 detections matched,
    # but int8 returned 51 (6 extra), so matched / max(45, 51) = 0.86: NNCF's file keeps
    # fp32's detections as well as ONNX Runtime's does and adds a few of its own.
    assert report["matched"] >= 0.9 * report["expected"], report
    assert report["matched_fraction"] >= 0.8, report
    assert report["mean_mask_iou"] >= 0.95, report
    np.save(files["dir"] / "image_ov.npy", scene(1)[0])
    code = (
        "import sys, json, numpy as np; sys.modules['torch'] = None\n"
        "from mrcnn.export.openvino_model import OpenVinoModel\n"
        f"m = OpenVinoModel({str(openvino_int8)!r})\n"
        f"d = m.detect([np.load({str(files['dir'] / 'image_ov.npy')!r})])[0]\n"
        "print(json.dumps({'n': len(d), 'int8': m.settings['int8']['toolchain']}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {
        "n": len(open_exported(openvino_int8).detect([scene(1)[0]])[0]),
        "int8": "openvino",
    }
    with caplog.at_level(logging.INFO):  # as the pipeline's stages log
        again = quantize_int8(
            files["fp32"],
            files["dir"] / "again_ov.xml",
            CALIBRATION,
            num_images=8,
            toolchain="openvino",
        )
    nncf_lines = [r for r in caplog.records if r.name.startswith("nncf")]
    assert not nncf_lines, f"{len(nncf_lines)} NNCF lines, e.g. {nncf_lines[0].getMessage()}"
    assert _sha(again.with_suffix(".bin")) == _sha(openvino_int8.with_suffix(".bin"))
