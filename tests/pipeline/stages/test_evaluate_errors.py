"""The evaluate stage's error analysis on tiny data, with detections made by hand from the ground
truth (every TIDE error type occurs): metrics/eval_errors.json holds `error_breakdown`'s numbers,
the report files are written and declared in dvc.yaml, the MLflow run holds the breakdown."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mrcnn.evaluation import confusion_matrix, error_breakdown, write_confusion_csv
from mrcnn.evaluation.coco_eval import ground_truth_results
from pipeline.params import EvaluateParams, Params
from pipeline.reporting import evaluate as overlays
from pipeline.stages import evaluate
from pipeline.tracking.store import Tracking, start_run
from tests import REPO_ROOT
from tests.pipeline.registry_helpers import fresh_store
from tests.pipeline.stages.test_evaluate import _write_model, paths_under, project  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ERRORS = ("cls", "loc", "both", "dupe", "bkg", "miss")
NUM_WORST = 3
CONFUSION_THRESH = 0.85  # leaves out some of the detections below (scores 0.79 .. 0.95)


def _shifted(r: dict[str, Any], dx: int) -> dict[str, Any]:
    """`r` moved right by dx pixels, box and mask (what falls off the image is cut)."""
    m = mask_utils.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()})
    moved = np.zeros_like(m)
    moved[:, dx:] = m[:, : m.shape[1] - dx]
    rle = mask_utils.encode(np.asfortranarray(moved))
    rle["counts"] = rle["counts"].decode()
    x, y, w, h = r["bbox"]
    return {**r, "bbox": [x + dx, y, w, h], "segmentation": rle}


def made_results(gt: COCO) -> list[dict[str, Any]]:
    """The ground truth as detections, object k by k % 5: 0 right, 1 the wrong class, 2 moved
    by 60% of its width (IoU ~0.25), 3 right plus a duplicate, 4 missed; and on every image a
    4 x 4 detection in its corner (background) of its first object's class, scored above all
    (errors scored below a class's last true positive would cost no AP)."""
    cats = sorted(gt.getCatIds())
    out = []
    for k, r in enumerate(ground_truth_results(gt)):
        r = {**r, "score": 0.9 - 0.01 * k}
        kind = k % 5
        if kind == 1:
            r["category_id"] = cats[(cats.index(r["category_id"]) + 1) % len(cats)]
        elif kind == 2:
            r = _shifted(r, max(1, int(0.6 * r["bbox"][2])))
        elif kind == 3:
            out.append({**r, "score": r["score"] - 0.005})
        if kind != 4:
            out.append(r)
    first = {i: gt.imgToAnns[i][0]["category_id"] for i in gt.getImgIds()}
    for image_id in gt.getImgIds():
        h, w = gt.imgs[image_id]["height"], gt.imgs[image_id]["width"]
        corner = np.zeros((h, w), np.uint8, order="F")
        corner[:4, :4] = 1
        rle = mask_utils.encode(corner)
        rle["counts"] = rle["counts"].decode()
        out.append(
            {"image_id": image_id, "category_id": first[image_id], "bbox": [0, 0, 4, 4],
             "score": 0.95, "segmentation": rle}
        )  # fmt: skip
    return out


def _gt(root: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(root / "data/raw/shapes/annotations/instances_val.json"))


@pytest.fixture(scope="module")
def evaluated(project: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """The stage run once with the made detections, logging into a training run."""
    root = tmp_path_factory.mktemp("errors")
    (root / "data").symlink_to(project / "data", target_is_directory=True)
    _write_model(root)
    uri = fresh_store(root / "store")
    with start_run(uri, "mrcnn", run_name="train") as train_run:
        run_id = train_run.info.run_id
    (root / "metrics").mkdir()
    (root / "metrics/train_run.json").write_text(json.dumps({"mlflow_run_id": run_id}))
    results = made_results(_gt(root))
    params = EvaluateParams(
        num_overlays=2,
        write_results=True,
        num_error_images=NUM_WORST,
        confusion_thresh=CONFUSION_THRESH,
    )
    paths = replace(paths_under(root), tracking=Tracking(uri, "mrcnn"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "predict_dataset", lambda *a, **k: copy.deepcopy(results))
        logs = _capture(lambda: evaluate.run(Params(evaluate=params), paths))
    return {"root": root, "paths": paths, "results": results, "uri": uri, "run_id": run_id,
            "log": logs}  # fmt: skip


def _capture(fn) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("pipeline")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        fn()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    return stream.getvalue()


def test_eval_errors_json_holds_the_error_breakdowns(evaluated):
    """eval.json is COCOeval's sections only; the error numbers are a metrics file of their
    own, which dvc.yaml declares as metrics (so `dvc metrics diff` compares them)."""
    metrics = json.loads(evaluated["paths"].metrics_out.read_text())
    errors = json.loads(evaluated["paths"].errors_file.read_text())
    gt = _gt(evaluated["root"])
    assert list(metrics) == ["bbox", "segm"]
    assert set(metrics["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert set(errors) == {"bbox", "segm"}
    declared = _declared("evaluate", "metrics")
    assert declared["${paths.eval_errors}"] == {"cache": False, "persist": True}
    for t in ("bbox", "segm"):
        expected = error_breakdown(gt, evaluated["results"], t)
        got = errors[t]
        assert set(got) == {"AP50", "dAP", "fp", "fn"}  # compact: no counts, no categories
        assert got["AP50"] == pytest.approx(expected["AP50"], abs=1e-9)
        assert got["dAP"] == pytest.approx(expected["dAP"], abs=1e-9)
        assert (got["fp"], got["fn"]) == pytest.approx((expected["fp"], expected["fn"]))
        for e in ("cls", "dupe", "bkg", "miss"):  # made on purpose, so each costs AP
            assert got["dAP"][e] > 0.5, (t, e, got["dAP"])
    assert errors["bbox"]["dAP"]["loc"] > 0.5
    log = evaluated["log"]
    assert "bbox errors (TIDE, AP50 points): AP50" in log
    assert "what to try for " in log and "model." in log


def test_report_files(evaluated):
    out = evaluated["paths"].reports_dir
    gt = _gt(evaluated["root"])
    pictures = {"tide.png"} | {
        f"{kind}_{t}.png" for kind in ("confusion", "pr_breakdown") for t in ("bbox", "segm")
    }
    assert {p.name for p in (out / "errors").iterdir()} == pictures
    for name in pictures:
        with Image.open(out / "errors" / name) as im:
            assert im.mode == "RGB" and min(im.size) > 250
    # the confusion CSVs are the library's at evaluate.confusion_thresh
    for t in ("bbox", "segm"):
        cm = confusion_matrix(gt, evaluated["results"], t, score_thresh=CONFUSION_THRESH)
        reference = write_confusion_csv(cm, evaluated["root"] / f"{t}.csv").read_text()
        assert (out / "confusion" / f"{t}.csv").read_text() == reference
    with open(out / "image_errors.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in rows] == list(range(1, 8))
    assert {int(r["image_id"]) for r in rows} == set(gt.getImgIds())
    weighted = [float(r["weighted"]) for r in rows]
    assert weighted == sorted(weighted, reverse=True) and weighted[0] > 0
    assert {r["iou_type"] for r in rows} == {"segm"}
    assert all(r["file_name"].endswith(".png") for r in rows)
    worst = sorted(p.name for p in (out / "worst").iterdir())
    assert worst == [f"{k + 1:02d}_{rows[k]['image_id']}.png" for k in range(NUM_WORST)]
    for name in worst:
        with Image.open(out / "worst" / name) as im:  # ground truth | detections, enlarged
            assert im.size[0] > 2 * 200 and im.size[1] > 200
    numbers = json.loads((out / "errors.json").read_text())
    assert numbers["primary"] == "segm" and numbers["confusion_thresh"] == CONFUSION_THRESH
    assert set(numbers["bbox"]["breakdown"]["per_category"]) <= {"blob", "star", "box"}
    assert numbers["segm"]["pr_breakdown_ap"]["all"]["FN"] == 1.0
    assert [w["image_id"] for w in numbers["worst_images"]] == [
        int(r["image_id"]) for r in rows[:NUM_WORST]
    ]
    assert numbers["advice"] and all(a.startswith("what to try") for a in numbers["advice"])


def _declared(stage: dict, kind: str) -> dict[str, dict]:
    doc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    out = {}
    for entry in doc["stages"][stage].get(kind, []):
        path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        out[path.replace("${paths.eval_reports}", "reports/evaluate")] = opts or {}
    return out


def test_dvc_yaml_declares_every_report_file(evaluated):
    """Every file the stage writes under reports/evaluate/ is a declared output (or inside a
    declared folder); the error pictures are plots (PNG renders offline in `dvc plots show`),
    the confusion CSVs are data (outs: a Vega template would need a CDN; confusion_<iou>.png
    draws them)."""
    plots = _declared("evaluate", "plots")
    outs = _declared("evaluate", "outs")
    declared = {**plots, **outs}
    out = evaluated["paths"].reports_dir
    for path in out.rglob("*"):
        if path.is_dir() or path.name == "results.json":  # results.json: only when asked
            continue
        rel = path.relative_to(out.parent.parent).as_posix()
        owners = [d for d in declared if rel == d or rel.startswith(d + "/")]
        assert owners, f"{rel} is written but dvc.yaml does not declare it"
        if path.suffix == ".png" and "/steps/" not in rel:  # steps/: an out (not ours)
            assert all(o in plots for o in owners), rel
    assert outs["reports/evaluate/confusion"] == {"persist": True}  # cached: dvc checkout
    assert all(Path(p).suffix in ("", ".png") for p in plots), plots  # pictures or their folders
    for folder in ("errors", "worst"):
        assert f"reports/evaluate/{folder}" in plots


def test_mlflow_run_holds_the_breakdown(evaluated):
    metrics = json.loads(evaluated["paths"].metrics_out.read_text())
    errors = json.loads(evaluated["paths"].errors_file.read_text())
    client = mlflow.MlflowClient(evaluated["uri"])
    logged = client.get_run(evaluated["run_id"]).data.metrics
    for t in ("bbox", "segm"):
        e = errors[t]
        assert logged[f"val/final/errors/{t}_AP50"] == pytest.approx(e["AP50"])
        for name in ERRORS:
            assert logged[f"val/final/errors/{t}_dAP_{name}"] == pytest.approx(e["dAP"][name])
        assert logged[f"val/final/errors/{t}_fp"] == pytest.approx(e["fp"])
        assert logged[f"val/final/errors/{t}_fn"] == pytest.approx(e["fn"])
    assert logged["val/final/segm_AP"] == metrics["segm"]["AP"]
    artifacts = {a.path for a in client.list_artifacts(evaluated["run_id"], "evaluate")}
    expected = (
        "errors",
        "worst",
        "confusion",
        "errors.json",
        "eval_errors.json",
        "image_errors.csv",
    )
    assert {f"evaluate/{n}" for n in expected} <= artifacts
    logged_errors = {a.path for a in client.list_artifacts(evaluated["run_id"], "evaluate/errors")}
    assert "evaluate/errors/tide.png" in logged_errors


def test_pr_breakdown_off_and_no_worst_images(project: Path, tmp_path: Path):  # noqa: F811
    """evaluate.pr_breakdown: false draws no PR breakdown, num_error_images: 0 no image (the
    folder is still there: DVC wants it); evaluate.keypoint_thresh reaches the overlays."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "data").symlink_to(project / "data", target_is_directory=True)
    _write_model(root)
    params = EvaluateParams(
        num_overlays=2, num_step_images=0, pr_breakdown=False, num_error_images=0,
        keypoint_thresh=7.5,
    )  # fmt: skip
    seen = []
    draw = overlays.draw_predictions

    def draw_predictions(*args):
        seen.append(args[-1])
        return draw(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "predict_dataset", lambda *a, **k: made_results(_gt(root)))
        mp.setattr(overlays, "draw_predictions", draw_predictions)
        metrics = evaluate.run(Params(evaluate=params), paths_under(root))
    assert seen == [7.5, 7.5]  # the two overlay images
    out = root / "reports/evaluate"
    assert sorted(p.name for p in (out / "errors").iterdir()) == [
        "confusion_bbox.png", "confusion_segm.png", "tide.png"
    ]  # fmt: skip
    assert not (out / "worst").exists() or not list((out / "worst").iterdir())
    assert "pr_breakdown_ap" not in json.loads((out / "errors.json").read_text())["segm"]
    assert set(metrics["errors"]) == {"bbox", "segm"}
