"""`dvc repro` end to end in a temporary copy of the repository, with tiny params."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import REPO_ROOT
from tests.pipeline.tiny_model import TINY_MODEL

ROOT = REPO_ROOT

TINY = {
    "data": {
        "shapes": {"num_train": 16, "num_val": 6, "image_size": 64, "min_size": 6, "max_size": 14}
    },
    "shards": {"image_size": 64, "mini_mask_shape": 14, "samples_per_shard": 8, "num_workers": 1},
    "inspect": {"num_samples": 2},
    "model": {**TINY_MODEL, "inference": {"score_thresh": 0.0}},
    "train": {
        "iterations": 4,
        "batch_size": 2,
        "reference_batch": 2,
        "warmup_iters": 1,
        "checkpoint_every": 2,
        "log_every": 2,
        "cpus_per_worker": 1,
        "max_gt": 8,
    },
    "evaluate": {"num_overlays": 2},
    "export": {"champion_floor": -1.0},  # four iterations' AP may well be 0.0
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


@pytest.mark.slow
def test_dvc_repro_produces_every_declared_output(tmp_path):
    repo = tmp_path / "repo"
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, tracked):
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    params = _merge(yaml.safe_load((repo / "params.yaml").read_text()), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the stages' `python`
    env["PYTHONPATH"] = str(repo)
    env.pop("RAY_ADDRESS", None)  # a local Ray, whatever the caller uses
    git = ["git", "-c", "user.email=test@localhost", "-c", "user.name=test"]
    for cmd in ([*git, "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    dvc = [sys.executable, "-m", "dvc"]
    done = subprocess.run(
        [*dvc, "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=1500
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # A successful run is quiet: the progress line, not Ray Train's per-checkpoint INFO lines,
    # Ray's token notice or colour codes.
    said = done.stdout + done.stderr
    for noise in ("Reporting training result", "Checkpoint successfully created", "Token auth"):
        assert noise not in said, f"{noise!r} in the output of a successful dvc repro"
    assert "\x1b[" not in said

    # Every output dvc.yaml declares exists.
    doc = yaml.safe_load((repo / "dvc.yaml").read_text())
    paths = doc["vars"][0]["paths"]
    for name, stage in doc["stages"].items():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                out = next(iter(entry)) if isinstance(entry, dict) else entry
                out = out.replace("${data.source}", "shapes")
                for key, value in paths.items():
                    out = out.replace("${paths." + key + "}", value)
                assert (repo / out).exists(), f"stage {name}: {kind} {out} missing"
    assert (repo / "dvc.lock").is_file()
    ev = json.loads((repo / "metrics/eval.json").read_text())
    assert set(ev) == {"bbox", "segm"}  # exactly the contract
    assert set(ev["segm"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert set(json.loads((repo / "metrics/eval_errors.json").read_text())) == {"bbox", "segm"}
    export = json.loads((repo / "models/export/export.json").read_text())
    assert export["version"] == 1 and export["alias"] == "champion"
    # `dvc repro` again: nothing changed, nothing runs.
    again = subprocess.run([*dvc, "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "Running stage" not in again.stdout
    # `dvc exp run -S` re-runs train and what follows, not the data stages.
    exp = subprocess.run(
        [*dvc, "exp", "run", "-S", "train.lr=0.002"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    assert "Running stage 'train'" in exp.stdout and "Running stage 'shards'" not in exp.stdout

    # The reports are in DVC's cache: gone from the workspace, `dvc checkout` brings them back
    # (what `git checkout <rev> && dvc checkout` relies on), no training again.
    overlays = (repo / "reports/evaluate/overlays.png").read_bytes()
    shutil.rmtree(repo / "reports")
    done = subprocess.run([*dvc, "checkout"], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (repo / "reports/evaluate/overlays.png").read_bytes() == overlays
    assert (repo / "reports/train/losses.png").is_file() and (repo / "reports/inspect").is_dir()
    assert set(json.loads((repo / "metrics/eval.json").read_text())) == {"bbox", "segm"}

    # Editing any module of mrcnn makes training stale (deps name the package, not a hand-kept
    # list of files), but not the data stages, which depend on mrcnn/data and the few modules
    # the params check imports (tests/test_layout.py keeps those deps complete).
    weights_py = repo / "mrcnn" / "weights.py"
    weights_py.write_text(weights_py.read_text() + "\n# edited\n")
    status = subprocess.run(
        [*dvc, "status", "--json"], cwd=repo, env=env, capture_output=True, text=True
    )
    stale = json.loads(status.stdout)
    assert {"train", "evaluate", "export"} <= set(stale) and "shards" not in stale, stale
    assert {"changed deps": {"mrcnn": "modified"}} in stale["train"]
