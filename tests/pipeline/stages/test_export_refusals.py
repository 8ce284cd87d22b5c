"""pipeline.export refusing what it cannot do, each with one line saying what to change: the
onnxruntime backend without the ONNX file or for heads the graph lacks, a model without a mask
head (no portable file, said), a metric eval.json lacks, a project not evaluated yet."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.params import Params
from pipeline.serve_params import ExportParams
from pipeline.stages import export
from pipeline.tracking import registry as reg
from pipeline.tracking.store import Tracking
from tests.pipeline.registry_helpers import save_model


def test_onnxruntime_backend_without_onnx_or_for_keypoints_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(reg.ExportError, match="set export.portable: true"):
        reg.log_model(tmp_path, backend="onnxruntime")
    import torch

    from mrcnn import presets
    from mrcnn.modeling.model import build_model

    torch.manual_seed(0)
    kp = {"count": 3, "head_channels": 8, "head_convs": 1}
    save_model(build_model(presets.shapes_small(keypoints=kp)), tmp_path / "models/final")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/eval.json").write_text(json.dumps({"segm": {"AP": 0.5}}))
    paths = _paths_under(tmp_path)
    params = ExportParams(pyfunc_backend="onnxruntime")
    with pytest.raises(reg.ExportError, match="boxes and masks only.*keypoints=3"):
        export.run(Params(export=params), paths)
    assert not (tmp_path / "unused.db").exists() and not paths.out_dir.exists()
    # With the torch backend it exports; the ONNX file says what it leaves out, and so does the log
    paths = replace(paths, tracking=Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "x"))
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.export"):
        result = export.run(Params(export=ExportParams(register="false")), paths)
    assert result["portable"]["ok"] and result["portable"]["heads_not_in_graph"] == ["keypoints"]
    assert "keypoints are not in it" in caplog.text
    # Without a mask head there is no graph to write (it outputs masks): said, and skipped
    no_masks = presets.shapes_small(keypoints=kp, roi_heads={"masks": False})
    save_model(build_model(no_masks), tmp_path / "models/final")
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.export"):
        result = export.run(Params(export=ExportParams(register="false")), paths)
    assert result["portable"] == {
        "skipped": "the graph outputs masks and this model has no mask head"
    }
    assert "model.onnx not written" in caplog.text
    assert not (paths.out_dir / export.PORTABLE_FILE).exists()


def test_export_with_a_metric_eval_json_lacks(tmp_path: Path) -> None:
    with pytest.raises(reg.ExportError, match="has no 'segm.APx'"):
        reg.metric_value({"segm": {"AP": 0.1}}, "segm.APx")
    assert reg.metric_value({"segm": {"AP": 0.25}}, "segm.AP") == 0.25


def _paths_under(root: Path, uri: str = "sqlite:///unused.db") -> export.ExportPaths:
    """The export stage's paths in a project at `root` (what dvc.yaml passes)."""
    return export.ExportPaths(
        model_dir=root / "models/final",
        eval_metrics=root / "metrics/eval.json",
        train_run=root / "metrics/train_run.json",
        train_metrics=root / "metrics/train.json",
        out_dir=root / "models/export",
        tracking=Tracking(uri, "x"),
    )


def test_export_without_evaluation_says_what_to_run(tmp_path: Path) -> None:
    paths = _paths_under(tmp_path)
    with pytest.raises(FileNotFoundError, match="pipeline.evaluate"):
        export.run(Params(), paths)


def test_the_preset_comes_from_the_saved_model(tmp_path: Path) -> None:
    """The version's `preset` tag is what training recorded in config.json (no params file is
    read for it); a model saved before presets were recorded gets none."""
    from mrcnn import presets
    from mrcnn.modeling.model import build_model

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/eval.json").write_text(json.dumps({"segm": {"AP": 0.5}}))
    paths = _paths_under(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = Params(export=ExportParams(register="false", portable=False))
    model = build_model(presets.shapes_small())
    for preset in ("shapes_small", ""):
        save_model(model, paths.model_dir, preset=preset)
        result = export.run(params, paths)
        assert result["tags"].get("preset") == (preset or None)
        assert result["description"].startswith(f"Mask R-CNN, preset {preset or '?'},")
