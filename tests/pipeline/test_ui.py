"""pipeline.ui: the MLflow UI command binds 127.0.0.1 and reads the project's store; and the real
UI, looked at in headless Chromium (tests/browser.py), opens on the runs, the model registry and
the training curves (the test prints where its screenshots are)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.params import EvaluateParams
from pipeline.reporting.train import write_loss_reports, write_results_figure
from pipeline.stages import export, train
from pipeline.tracking import active, names, store
from pipeline.tracking import training as tracked_run
from pipeline.tracking.runs import log_evaluation
from pipeline.training.progress import RankZeroLog
from pipeline.ui import build_command, start_url
from tests import REPO_ROOT, browser, services
from tests.pipeline.registry_helpers import fresh_store, save_model, tiny_model


def test_ui_command_for_the_sqlite_store(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("mlflow:\n  tracking_uri: sqlite:///mlflow.db\n")
    argv = build_command(params, port=5123)
    assert argv[1:4] == ["-m", "mlflow", "ui"]
    assert (
        argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    )
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "5123"
    assert argv[argv.index("--workers") + 1] == "1"  # one browser; MLflow's 4 start slowly


def test_ui_for_a_tracking_server_is_the_server(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("mlflow:\n  tracking_uri: http://127.0.0.1:5999\n")
    assert build_command(params) == []


def test_start_url_opens_the_runs_in_model_training_mode() -> None:
    assert start_url("http://127.0.0.1:5000", "3") == (
        "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    )
    assert start_url("http://h:1/").endswith(":1/#/experiments?workflowType=machine_learning")


# ---------------------------------------------------------------------------------------------
# The real UI in a headless browser: `python -m pipeline.ui` (what `make ui` runs) over a store
# holding what `dvc repro` leaves there, made by our code.

needs_chromium = pytest.mark.skipif(
    browser.find() is None,
    reason="chromium is not installed (Debian package `chromium`; `make services-deps` installs "
    "it): no browser to look at the MLflow UI with",
)
MODEL = "mrcnn-shapes"
RUN_NAME = "shapes-shapes-small-0123abcd"
ITERATIONS = 40
# Where the screenshots stay for a person to look at (replaced by each run; not pytest's tmp
# folders, which other sessions' pytest runs rotate away).
SHOTS = Path(os.environ.get("MRCNN_UI_SHOTS") or Path(tempfile.gettempdir()) / "mrcnn-ui-shots")


def _train(uri: str, root: Path) -> str:
    """A training run as the train stage leaves it: params, the per-step losses, lr, speed and
    periodic validation (rank 0's `RankZeroLog`), the summary and pictures (the stage's own
    `_log_outcome`), ended FINISHED -> its run id."""
    run_id = tracked_run.open_run(uri, "mrcnn", RUN_NAME, {"train.lr": "0.02"}, {})
    log = RankZeroLog({"tracking_uri": uri, "run_id": run_id}, True, False, total=ITERATIONS)
    for it in range(5, ITERATIONS + 5, 5):
        terms = {"rpn_objectness": 0.3, "rpn_box": 0.2, "classifier": 0.5, "box": 0.4, "mask": 0.6}
        means = {f"loss_{k}": v * it**-0.3 for k, v in terms.items()}
        log.log(it, {"loss": sum(means.values()), **means}, lr=0.02 * min(1.0, it / 20))
        if it % 20 == 0:
            metrics = {"bbox_AP": it / 80, "segm_AP": it / 90}
            active.log_metrics_if_active(names.prefixed(names.VAL, metrics), step=it)
    log.close()
    summary = {
        "stopped": "iterations",
        "iterations": ITERATIONS,
        "images_seen": ITERATIONS * 4,
        "wall_s": 61.0,
        "best_iteration": ITERATIONS,
        "best_metric": "segm_AP",
        "best_value": ITERATIONS / 90,
        "kept": "best",
        "kept_iteration": ITERATIONS,
        "weights": "model",
    }
    reports = root / "reports" / "train"
    reports.mkdir(parents=True)
    history = tracked_run.loss_history(uri, run_id)
    write_loss_reports(history, reports)
    write_results_figure(history, tracked_run.val_history(uri, run_id), summary, reports)
    train._log_outcome(uri, run_id, summary, reports)
    store.end_run(uri, run_id, "finished")
    return run_id


def _evaluate_and_export(uri: str, root: Path, run_id: str) -> None:
    """evaluate's metrics logged into the run, then the export stage registers the model (as
    @champion) from that run."""
    ap = {"AP": 0.5, "AP50": 0.8, "AP75": 0.5, "APs": 0.3, "APm": 0.5, "APl": 0.6}
    evals = {"bbox": ap, "segm": ap | {"AP": 0.44}, "num_images": 6, "num_detections": 30}
    metrics = root / "metrics"
    metrics.mkdir()
    (metrics / "eval.json").write_text(json.dumps(evals))
    (metrics / "train.json").write_text(json.dumps({"iterations": ITERATIONS}))
    info = {"mlflow_run_id": run_id, "data_source": "shapes", "run_name": RUN_NAME}
    (metrics / "train_run.json").write_text(json.dumps(info))
    (root / "reports" / "evaluate").mkdir()
    log_evaluation(
        metrics / "train_run.json",
        (metrics / "eval.json",),
        root / "reports" / "evaluate",
        evals,
        EvaluateParams(),
        tracking_uri=uri,
        experiment="mrcnn",
    )
    manifest = root / "data" / "shards" / "train" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    classes = ["background", "square", "circle", "triangle"]
    manifest.write_text(json.dumps({"class_names": classes, "counts": {"images": 3}}))
    save_model(tiny_model(), root / "models" / "final", {}, preset="shapes_small")
    export.main(["--params", str(root / "params.yaml")])


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`python -m pipeline.ui` on a free port over a project whose store holds a trained,
    evaluated and registered model -> {"url": the page it says to open, "run_id", "root"}."""
    root = tmp_path_factory.mktemp("ui-project")
    uri = fresh_store(root)
    doc = {
        "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "mrcnn"},
        "export": {"registered_model": MODEL, "portable": False, "register": True},
        "shards": {"image_size": 128},
        "model": {"preset": "shapes_small"},
        "train": {"iterations": ITERATIONS},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(doc))
    with pytest.MonkeyPatch.context() as mp:
        # As in a fresh process: no experiment or run left active by an earlier test (the full
        # suite had one, and MLflow refused to resume this store's run under it).
        import mlflow.tracking.fluent as fluent

        for key in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
            mp.delenv(key, raising=False)
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mp.setattr(fluent, "_active_experiment_id", None)
        run_id = _train(uri, root)
        _evaluate_and_export(uri, root, run_id)
    port = services.free_port()
    log = root / "ui.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # this checkout's pipeline.ui
    command = [sys.executable, "-m", "pipeline.ui", "--params", "params.yaml", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def healthy() -> bool:
        return services.http_ok(f"http://{services.HOST}:{port}/health")

    try:
        services.wait_until("mlflow ui", healthy, proc, log, timeout=240)
        said = re.search(r"MLflow UI: open (\S+)", log.read_text())
        assert said, log.read_text()[-2000:]
        yield {"url": said.group(1), "run_id": run_id, "root": root}
    finally:
        services.stop_process(proc)


def _shot(name: str, url: str, wait_for: str) -> browser.Page:
    """Render `url` (until its text holds `wait_for`) into SHOTS/`name`.png, print where, and
    check that the screenshot shows something: not a flat page, and more than the grey bars the
    UI draws while it loads."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.render(url, SHOTS / f"{name}.png", wait_for=wait_for)
    print(f"screenshot of {url}: {page.png}")
    pixels = np.asarray(Image.open(page.png).convert("L"), dtype=np.float32)
    assert pixels.shape == (browser.WINDOW[1], browser.WINDOW[0])
    # The loading skeleton: std 2.8, 5 grey levels; a rendered page: std 15-30, ~240 (text).
    levels = len(np.unique(pixels))
    assert pixels.std() > 8 and levels > 50, f"{page.png} is blank ({pixels.std():.1f}, {levels})"
    return page


@needs_chromium
@pytest.mark.slow  # the UI server starts in ~30-90 s on 2 busy cores; each page ~10 s
def test_the_mlflow_ui_opens_on_runs_models_and_training_curves(ui: dict) -> None:
    # The page `make ui` says to open: the experiment's runs, in "Model training" mode.
    start = _shot("experiment", ui["url"], wait_for=RUN_NAME[:20]).text
    assert "Runs" in start and RUN_NAME[:20] in " ".join(start)
    assert "Model registry" in start and "Models" in start  # the sidebar's model entries
    assert "Token Usage" not in start and "Detect Issues" not in start  # GenAI's overview

    # The run's metric charts: losses and lr first, the AP numbers after.
    base, _, query = ui["url"].partition("?")
    run = _shot("run-metrics", f"{base}/runs/{ui['run_id']}/model-metrics?{query}", "val/final")
    text = run.text
    assert RUN_NAME in text and "Model registry" in text
    sections = [s for s in text if s in {"train", "train/perf", "train/summary", "val"}]
    sections += [s for s in text if s.startswith("val/final")]
    assert sections[:5] == ["train", "train/perf", "train/summary", "val", "val/final"], text
    first_charts = text[text.index("train") : text.index("train/perf")]
    assert "loss" in first_charts and "loss_mask" in first_charts  # drawn, in the first section
    assert text.index("loss") < text.index("val/final")

    # The registered model: its version, tags and alias.
    home = ui["url"].split("#")[0]
    model = _shot("model", f"{home}#/models/{MODEL}?{query}", "Version 1").text
    assert MODEL in model and "Version 1" in model
    assert "metrics.segm.AP" in model and any("champion" in s for s in model)
