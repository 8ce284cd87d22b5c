"""mrcnn.export: the ONNX backbone + RPN head (`export_onnx`) matches eager PyTorch, and the
check can fail. The whole graph is tested in test_export_graph.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from mrcnn import presets
from mrcnn.export import INPUT_NAMES, OUTPUT_NAMES, check_onnx, export_onnx
from mrcnn.model import build_model


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(presets.shapes_small()).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    model = _model()
    return path, check_onnx(model, export_onnx(model, path))


def test_onnx_backbone_rpn_matches_eager(exported: tuple[Path, dict]) -> None:
    path, report = exported
    model = _model()
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(INPUT_NAMES)
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    assert report["ok"] and report["num_images"] == 2
    assert report["worst_relative"] < 1e-5  # measured ~1e-6 on CPU
    assert report["max_abs"]["p2"] > 1  # real activations were compared, not zeros
    # A batch of three other images (dynamic batch axis), one of them tiny and non-square.
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(40, 90, 3), (128, 64, 3)] * 2]
    again = check_onnx(model, path, images[:3])
    assert again["ok"] and again["num_images"] == 3


def test_check_detects_a_model_that_differs(exported: tuple[Path, dict]) -> None:
    model = _model()
    with torch.no_grad():
        model.rpn.head.cls_logits.bias += 0.5  # eager model changes after export
    report = check_onnx(model, exported[0])
    assert not report["ok"]
    assert abs(report["max_abs_diff"]["objectness"] - 0.5) < 1e-4
    assert report["max_abs_diff"]["p2"] < 1e-3  # the backbone still agrees
