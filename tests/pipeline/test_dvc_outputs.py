"""dvc.yaml and the Makefile keep the promises about failures and fresh clones."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from tests import REPO_ROOT


def _entries(stage: dict) -> list[tuple[str, dict]]:
    out = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            out.append((path, opts or {}))
    return out


@pytest.mark.parametrize("name", ["train", "evaluate"])
def test_a_failed_stage_keeps_the_last_outputs(name):
    """DVC deletes a stage's outputs before running it unless they persist; these stages write
    beside and swap at the end, so with persist a failure leaves the last success in place."""
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"][name]
    entries = _entries(stage)
    assert len(entries) >= 4
    assert [path for path, opts in entries if opts.get("persist") is not True] == []


def test_every_output_but_metrics_is_cached_so_an_experiment_can_be_restored():
    """`git checkout <rev> && dvc checkout` restores what DVC cached and what git holds; the
    reports (git-ignored) must be cached, or going back to an experiment wants its training
    again. metrics/ is the one folder git keeps (`cache: false`, as `dvc metrics diff` wants)."""
    doc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    paths = doc["vars"][0]["paths"]
    ignored = (REPO_ROOT / ".gitignore").read_text().split()
    assert "/reports/" in ignored and not any(p.startswith("/metrics") for p in ignored)
    seen = set()
    for name, stage in doc["stages"].items():
        for path, opts in _entries(stage):
            for key, value in paths.items():
                path = path.replace("${paths." + key + "}", value)
            seen.add(path)
            if path.startswith("metrics/"):
                assert opts.get("cache") is False, (name, path)
            else:
                assert opts.get("cache", True) is True, f"stage {name}: {path} is not cached"
    assert {"reports/inspect", "reports/train/losses.png", "reports/evaluate/steps"} <= seen
    declared = {
        next(iter(e))
        .replace("${paths.eval_metrics}", "metrics/eval.json")
        .replace("${paths.eval_errors}", "metrics/eval_errors.json")
        for e in doc["stages"]["evaluate"]["metrics"]
    }
    assert declared == {"metrics/eval.json", "metrics/eval_errors.json"}


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_sweep_builds_the_shards_before_the_sweep():
    done = subprocess.run(
        ["make", "-n", "sweep"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    lines = done.stdout.splitlines()
    shards = next(i for i, line in enumerate(lines) if "dvc repro shards" in line)
    sweep = next(i for i, line in enumerate(lines) if "-m pipeline.tune" in line)
    assert shards < sweep


@pytest.mark.slow  # two DVC commands: seconds
def test_dvc_deletes_outputs_of_a_failing_stage_unless_they_persist(tmp_path):
    """Why the test above matters: what `dvc repro` does to the outputs of a stage that fails."""
    dvc = [sys.executable, "-m", "dvc"]
    run = {"cwd": tmp_path, "capture_output": True, "text": True}
    subprocess.run([*dvc, "init", "--no-scm", "-q"], check=True, **run)
    stage = {
        "cmd": "exit 1",
        "outs": [{"kept.json": {"cache": False, "persist": True}}, {"lost.json": {"cache": False}}],
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    for name in ("kept.json", "lost.json"):
        (tmp_path / name).write_text('{"last": "success"}')
    done = subprocess.run([*dvc, "repro"], **run)
    assert done.returncode != 0
    assert (tmp_path / "kept.json").read_text() == '{"last": "success"}'
    assert not (tmp_path / "lost.json").exists()


# What the train and evaluate stages write, as `dvc plots show` finds them: every file a plot or
# an out of dvc.yaml names (pictures as tiny PNGs, data as a row of the real columns).
STAGE_FILES = {
    "reports/train/losses.png": None,
    "reports/train/results.png": None,
    "reports/train/losses.csv": "step,loss,loss_mask,lr\n2,1.0,0.5,0.001\n4,0.5,0.25,0.001\n",
    "reports/evaluate/pr_curve.png": None,
    "reports/evaluate/per_category_ap.png": None,
    "reports/evaluate/overlays.png": None,
    "reports/evaluate/errors/tide.png": None,
    "reports/evaluate/errors/confusion_bbox.png": None,
    "reports/evaluate/worst/1.png": None,
    "reports/evaluate/pr.csv": "recall,"
    + ",".join(f"{t}_iou{i}" for t in ("bbox", "segm") for i in ("50", "75", "50_95"))
    + "\n0.0,"
    + ",".join(["1.0"] * 6)
    + "\n1.0,"
    + ",".join(["0.5"] * 6)
    + "\n",
    "reports/evaluate/confusion/bbox.csv": "actual,predicted\nsquare,square\ncircle,square\n",
}


@pytest.mark.slow  # one DVC command: seconds
def test_dvc_plots_show_needs_no_network(tmp_path):
    """`dvc plots show` draws every plot from the files in the project: pictures only. A Vega
    plot (a template over CSV / JSON data) loads vega, vega-lite and vega-embed from a CDN and
    stays blank offline; each one we had has a picture the stage draws from the same data
    (losses.png, pr_curve.png, errors/confusion_<iou type>.png)."""
    from PIL import Image

    for name in ("dvc.yaml", "params.yaml"):  # dvc.yaml takes values from params.yaml
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    run = {"cwd": tmp_path, "capture_output": True, "text": True}
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], check=True, **run)
    for rel, text in STAGE_FILES.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            Image.new("RGB", (4, 4), (200, 30, 30)).save(path)
        else:
            path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", "out"], **run)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "out" / "index.html").read_text()
    assert "<script src=" not in page and "vega" not in page.lower(), "a plot needs a CDN"
    pngs = [rel for rel, text in STAGE_FILES.items() if text is None]
    assert page.count("<img") == len(pngs)  # every picture, drawn from the out folder
    assert (tmp_path / "out" / "static").is_dir()


def test_dvc_plots_output_is_not_committed():
    """`dvc plots show` writes dvc_plots/ in the project: git ignores it."""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    done = subprocess.run(
        ["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=REPO_ROOT, capture_output=True
    )
    assert done.returncode == 0
