"""bench/gpu_check.sh in its CPU mode: every step the GPU run takes (wheel install, model_speed
with every kind of variant, the training loop, latency), at toy sizes, producing every file."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_writes_every_json(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "GPU_CHECK_DEVICE": "cpu",
        "OUT": str(out),
        "PYTHON": sys.executable,
        "GPU_CHECK_SITE": str(tmp_path / "site"),
        "GPU_CHECK_COMMIT": "test123",
    }
    env.pop("PYTHONPATH", None)  # the script sets it to its own root
    wheel_dir = ROOT / ".whl"
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    expected = {"gpu_check.json", "gpu_check.log", "env.json", "model_speed.json", "train_gpu.json"}
    assert expected | {"latency.json", "trace_ours_bf16_train.json.gz"} <= names, names
    assert len(names) <= 8  # the device tool brings back at most 8 files

    summary = json.loads((out / "gpu_check.json").read_text())
    assert {k: s["exit"] for k, s in summary["steps"].items()} == {
        "wheels": 0,
        "env": 0,
        "model_speed": 0,
        "train": 0,
        "latency": 0,
    }
    env_info = json.loads((out / "env.json").read_text())
    assert env_info["commit"] == "test123" and env_info["cuda_available"] is False
    if wheel_dir.is_dir() and any(wheel_dir.glob("pycocotools-*.whl")):
        assert list((tmp_path / "site").glob("pycocotools*"))  # the carried wheel installed

    speed = json.loads((out / "model_speed.json").read_text())
    assert speed["commit"] == "test123"
    assert list(speed["variants"]) == ["ours_bf16", "tv_bf16", "ours_bf16_compile_cl"]
    for name, v in speed["variants"].items():
        assert "error" not in v, (name, v.get("traceback"))
        for phase in ("train", "infer"):
            assert v[phase]["images_per_s"] > 0
            assert v[phase]["stage_ms"]["total"] > 0
            assert v[phase]["profile"]["top_ops"]
    assert speed["variants"]["ours_bf16"]["train"]["stage_ms"].keys() >= {
        "backbone",
        "rpn",
        "roi_heads",
        "backward",
        "optimizer",
    }
    assert set(speed["ratios"]["train"]) == {"ours_bf16/tv_bf16", "ours_bf16_compile_cl/tv_bf16"}
    trace = json.loads(gzip.decompress((out / "trace_ours_bf16_train.json.gz").read_bytes()))
    assert trace["traceEvents"]

    train = json.loads((out / "train_gpu.json").read_text())
    assert "error" not in train, train.get("traceback")
    assert train["iterations_done"] == 3
    assert train["recipe_source"] == "pipeline.train_params.TrainParams"
    curve = train["loss_curve"]
    assert set(curve) >= {"loss", "loss_mask", "loss_rpn_objectness"}
    assert len(curve["loss"]) == 3 and all(x > 0 for x in curve["loss"])
    assert train["images_per_s"] > 0

    latency = json.loads((out / "latency.json").read_text())
    assert latency["batch"] == 1 and latency["phases"] == ["infer"]
    for name, v in latency["variants"].items():
        assert "error" not in v, (name, v.get("traceback"))
        assert v["infer"]["ms_per_image"] > 0
        assert "train" not in v
    assert "=== gpu_check summary ===" in proc.stdout
    shutil.rmtree(out)
