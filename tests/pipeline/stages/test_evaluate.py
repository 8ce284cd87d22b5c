"""pipeline.evaluate on tiny data: images of several sizes resized to 64 px shards, a tiny model.

- the ground truth of the shards fed back through the model's own `postprocess` (a model whose
  `predict` returns the ground truth) scores AP50 = 1: detections come back in original pixels
  with the right COCO category ids;
- an untrained model's detections lie inside their original images, for every image, batched;
- `run` / `main` write every declared output and log into the training's MLflow run, or a new
  run "evaluate" (and say so) when the store does not have it; no detections is AP 0.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mrcnn import presets, weights
from mrcnn.data import ShardDataset
from mrcnn.evaluation.coco_eval import METRIC_NAMES, coco_evaluate
from mrcnn.evaluation.predict import predict_dataset
from mrcnn.modeling.model import MaskRCNN, build_model
from mrcnn.structures import Batch, RawDetections
from pipeline.paramfile import load_section
from pipeline.params import EvaluateParams, Params, ShardsParams
from pipeline.stages import evaluate
from pipeline.stages.evaluate import EvaluatePaths
from pipeline.stages.shards import ShardsPaths
from pipeline.stages.shards import run as build_shards
from pipeline.tracking.store import Tracking, start_run
from tests.coco_helpers import CATEGORIES, make_coco
from tests.pipeline.registry_helpers import fresh_store

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = 64  # shard image size: every source image below is scaled (by 0.4 .. 1) and padded
SOURCE_SIZES = [(90, 120), (120, 90), (64, 64), (150, 100), (100, 150), (80, 80), (48, 96)]
PICTURES = ("overlays.png", "per_category_ap.png", "pr_curve.png")
ERROR_FILES = ("errors", "worst", "confusion", "errors.json", "image_errors.csv")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/raw/shapes (COCO layout, category ids 3, 7, 11) and data/shards/val at 64 px."""
    root = tmp_path_factory.mktemp("project")
    raw = root / "data" / "raw" / "shapes"
    make_coco(raw, "val", SOURCE_SIZES, seed=1, per_image=(1, 3))
    params = ShardsParams(image_size=SIZE, mini_mask_shape=28, samples_per_shard=3, num_workers=1)
    build_shards(Params(shards=params), ShardsPaths(raw, root / "data" / "shards"))
    return root


def tiny_model(score_thresh: float = 0.0) -> MaskRCNN:
    torch.manual_seed(0)
    cfg = presets.shapes_small(
        image_size=SIZE, inference={"score_thresh": score_thresh, "detections_per_img": 5}
    )
    names = ["background"] + [c["name"] for c in CATEGORIES]
    return build_model(cfg.replace(class_names=names)).eval()


def coco_gt(root: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(root / "data/raw/shapes/annotations/instances_val.json"))


def ground_truth_raw(batch: Batch, mask_size: int) -> RawDetections:
    """The batch's ground truth as fixed-shape detections in the padded frame, score 1."""
    g = batch.gt_valid.shape[1]
    masks = F.interpolate(
        batch.gt_mini_masks.float().flatten(0, 1)[:, None],
        size=mask_size,
        mode="bilinear",
        align_corners=False,
    )
    return RawDetections(
        boxes=batch.gt_boxes,
        scores=batch.gt_valid.float(),
        labels=batch.gt_labels,
        valid=batch.gt_valid,
        mask_probs=masks.view(len(batch), g, mask_size, mask_size),
    )


def test_ground_truth_through_postprocess_scores_ap50_1(project: Path) -> None:
    """The oracle's detections go the whole way predictions go: padded frame -> original pixels
    (`postprocess`), labels -> category ids, RLE, COCOeval against the *original* polygons.
    Only the shards' resizing (down to 0.4x) and 28 x 28 mini-masks separate them from the
    ground truth, so AP50 is 1 and AP high; a wrong scale or offset would drop both."""
    ds = ShardDataset(project / "data/shards/val")
    model = tiny_model()
    model.predict = _OracleByImageId(ds, model)
    results = predict_dataset(model, ds, batch_size=3)
    gt = coco_gt(project)
    assert len(results) == len(gt.getAnnIds())
    scores = coco_evaluate(gt, results)
    for iou_type in ("bbox", "segm"):
        assert scores.metrics[iou_type]["AP50"] == pytest.approx(1.0, abs=1e-12)
        assert scores.metrics[iou_type]["AP"] > 0.85  # measured 0.91 bbox, 0.95 segm
    assert {r["category_id"] for r in results} <= {c["id"] for c in CATEGORIES}


class _OracleByImageId:
    """`predict(batch)` -> the ground truth of the batch's images, read from the dataset by
    image id (the batch it receives carries no ground truth)."""

    def __init__(self, ds: ShardDataset, model: MaskRCNN) -> None:
        from mrcnn.data import collate

        self.by_id = {ds[i].image_id: ds[i] for i in range(len(ds))}
        self.collate = collate
        self.mask_size = 2 * model.cfg.roi_heads.mask_pool_size

    def __call__(self, batch: Batch) -> RawDetections:
        assert batch.gt_boxes is None
        samples = [self.by_id[int(i)] for i in batch.image_ids]
        return ground_truth_raw(self.collate(samples, max_gt=8), self.mask_size)


def test_untrained_model_detections_inside_original_images(project: Path) -> None:
    ds = ShardDataset(project / "data/shards/val")
    gt = coco_gt(project)
    model = tiny_model(score_thresh=0.0)
    results = predict_dataset(model, ds, batch_size=3)  # batches of 3, 3, 1
    ids = [int(v) for v in ds.index[:, 1]]
    assert len(results) == 5 * len(ds)  # detections_per_img = 5 on every image
    assert sorted({r["image_id"] for r in results}) == sorted(ids) == sorted(gt.getImgIds())
    order = [r["image_id"] for r in results[::5]]
    assert order == ids  # dataset order
    for r in results:
        h, w = gt.imgs[r["image_id"]]["height"], gt.imgs[r["image_id"]]["width"]
        x, y, bw, bh = r["bbox"]
        assert x >= 0 and y >= 0 and bw >= 0 and bh >= 0
        assert x + bw <= w + 1e-4 and y + bh <= h + 1e-4
        assert r["segmentation"]["size"] == [h, w]
        assert r["category_id"] in {3, 7, 11}
    assert any(r["bbox"][0] + r["bbox"][2] > SIZE for r in results)  # not in the 64 px frame

    one_by_one = predict_dataset(model, ds, batch_size=1, progress=False)
    assert [(r["image_id"], r["category_id"]) for r in one_by_one] == [
        (r["image_id"], r["category_id"]) for r in results
    ]
    for a, b in zip(one_by_one, results, strict=True):
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)

    first = predict_dataset(model, ds, batch_size=4, max_images=2)
    assert [r["image_id"] for r in first[::5]] == ids[:2]


def test_grid_masks_and_encode_workers_give_the_full_mask_results(project: Path) -> None:
    """predict_dataset's fast path (RLE from the mask grids, no pixel pasted, encoded by 2
    worker processes) gives the results of full-image masks encoded one by one by pycocotools
    in this process: the same, up to a pixel at the threshold in a rare mask
    (tests/mrcnn/inference/test_grid_masks.py says which pixels may differ)."""

    from mrcnn.data import category_ids, eval_batches
    from mrcnn.evaluation.coco_results import to_coco_results

    ds = ShardDataset(project / "data/shards/val")
    model = tiny_model(score_thresh=0.0)
    fast = predict_dataset(model, ds, batch_size=3, encode_workers=2, progress=False)
    cats = category_ids(ds.class_map)
    reference = []
    for batch in eval_batches(ds, 3):
        inputs = replace(batch, gt_boxes=None, gt_labels=None, gt_mini_masks=None, gt_valid=None)
        detections = model.postprocess(model.predict(inputs), inputs)
        assert isinstance(detections[0].masks, np.ndarray)
        for image_id, det in zip(batch.image_ids.tolist(), detections, strict=True):
            reference += to_coco_results(det, image_id, cats)
    assert len(fast) == len(reference)
    strip = [{k: v for k, v in r.items() if k != "segmentation"} for r in fast]
    assert strip == [{k: v for k, v in r.items() if k != "segmentation"} for r in reference]
    fast_rles = [r["segmentation"] for r in fast]
    reference_rles = [r["segmentation"] for r in reference]
    same = sum(a == b for a, b in zip(fast_rles, reference_rles, strict=True))
    assert same >= 0.99 * len(fast)
    iou = mask_utils.iou(fast_rles, reference_rles, [0] * len(fast)).diagonal()
    areas = mask_utils.area(reference_rles)
    assert (np.abs(mask_utils.area(fast_rles).astype(int) - areas) <= 2).all()
    assert (iou[areas > 0] > 0.95).all()
    assert sum(areas > 0) > len(fast) // 2


def paths_under(root: Path) -> EvaluatePaths:
    """The project layout under `root` (what `python -m pipeline.evaluate` uses)."""
    return EvaluatePaths(
        model_dir=root / "models/final",
        shards_dir=root / "data/shards/val",
        annotations=root / "data/raw/shapes/annotations/instances_val.json",
        train_run=root / "metrics/train_run.json",
        metrics_out=root / "metrics/eval.json",
        reports_dir=root / "reports/evaluate",
    )


def _write_model(root: Path, score_thresh: float = 0.0) -> None:
    weights.save(tiny_model(score_thresh), root / "models" / "final")


def test_run_writes_outputs_and_logs_into_the_training_run(project: Path, tmp_path: Path) -> None:
    uri = fresh_store(tmp_path / "store")
    _write_model(project)
    with start_run(uri, "mrcnn", run_name="train") as train_run:  # what pipeline.train does
        train_id = train_run.info.run_id
    (project / "metrics").mkdir(exist_ok=True)
    (project / "metrics" / "train_run.json").write_text(json.dumps({"mlflow_run_id": train_id}))
    paths = paths_under(project)
    params = EvaluateParams(batch_size=4, num_overlays=3, write_results=True)

    out = evaluate.run(Params(evaluate=params), replace(paths, tracking=Tracking(uri, "mrcnn")))

    # eval.json: exactly the contract (ARCHITECTURE.md), what `dvc exp show` puts in columns
    metrics = json.loads(paths.metrics_out.read_text())
    assert list(metrics) == ["bbox", "segm"]
    assert all(list(metrics[t]) == list(METRIC_NAMES) for t in metrics)
    # TIDE's numbers in their own metrics file (tests/pipeline/stages/test_evaluate_errors.py)
    errors = json.loads(paths.errors_file.read_text())
    assert paths.errors_file == project / "metrics/eval_errors.json" and set(errors) == {
        "bbox",
        "segm",
    }
    # the rest in a report file
    summary = json.loads((paths.reports_dir / "summary.json").read_text())
    assert set(summary) == {"per_category", "num_images", "num_detections", "score_thresh"}
    assert out == {**metrics, "errors": errors, **summary}
    assert (summary["num_images"], summary["num_detections"]) == (7, 35)
    assert summary["score_thresh"] == 0.0  # the model's own (params.score_thresh < 0)
    assert set(summary["per_category"]) == {c["name"] for c in CATEGORIES}
    # the numbers are COCOeval's on the raw detections written beside them
    results = json.loads((paths.reports_dir / "results.json").read_text())
    assert len(results) == 35
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(paths.annotations))
    again = coco_evaluate(gt, results)
    for iou_type in ("bbox", "segm"):
        assert list(metrics[iou_type]) == list(METRIC_NAMES)
        assert metrics[iou_type] == again.metrics[iou_type]
        assert all(v == -1 or 0 <= v <= 1 for v in metrics[iou_type].values())

    files = sorted(p.name for p in paths.reports_dir.iterdir())
    expected = [*PICTURES, "pr.csv", "summary.json", "results.json", "steps", *ERROR_FILES]
    assert files == sorted(expected)
    # the model step by step on num_step_images (2) val images spread as the overlays
    first_two = [int(ShardDataset(paths.shards_dir).index[i, 1]) for i in (0, 6)]
    steps = sorted(p.name for p in (paths.reports_dir / "steps").iterdir())
    assert steps == sorted(
        f"{i}_{n}.png" for i in first_two for n in ("1_rpn", "2_detections", "3_masks")
    )
    for name in steps:
        with Image.open(paths.reports_dir / "steps" / name) as im:
            assert im.mode == "RGB" and min(im.size) > 200
    for name in PICTURES:
        with Image.open(paths.reports_dir / name) as im:
            assert im.mode == "RGB" and min(im.size) > 200
    with open(paths.reports_dir / "pr.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 101 and rows[0]["recall"] == "0.0" and rows[-1]["recall"] == "1.0"
    assert list(rows[0]) == ["recall"] + [
        f"{t}_{k}" for t in ("bbox", "segm") for k in ("iou50", "iou75", "iou50_95")
    ]

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mrcnn").experiment_id])
    assert [r.info.run_id for r in runs] == [train_id]  # no run of its own
    logged = client.get_run(train_id).data
    for iou_type in ("bbox", "segm"):
        for name, value in metrics[iou_type].items():
            key = f"val/final/{iou_type}_{name}"
            assert logged.metrics.get(key) == (value if value >= 0 else None)
    assert (
        logged.metrics["val/final/per_category/star/segm_AP"]
        == (summary["per_category"]["star"]["segm_AP"])
    )
    assert logged.tags["evaluate.batch_size"] == "4"
    artifacts = {a.path for a in client.list_artifacts(train_id, "evaluate")}
    logged_files = (*PICTURES, "eval.json", "eval_errors.json", "summary.json", "pr.csv", "steps")
    assert {f"evaluate/{n}" for n in logged_files} <= artifacts
    logged_steps = {a.path for a in client.list_artifacts(train_id, "evaluate/steps")}
    assert logged_steps == {f"evaluate/steps/{n}" for n in steps}


def test_main_without_training_run_and_without_detections(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A model that detects nothing: AP 0, nothing crashes; train_run.json names a run the store
    does not have: a new run "evaluate", and the log says so. A stale results.json goes."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "data").symlink_to(project / "data", target_is_directory=True)
    _write_model(root, score_thresh=0.0)
    fresh_store(root)  # root/mlflow.db
    (root / "metrics").mkdir()
    (root / "metrics" / "train_run.json").write_text(json.dumps({"mlflow_run_id": "f" * 32}))
    (root / "reports" / "evaluate").mkdir(parents=True)
    (root / "reports" / "evaluate" / "results.json").write_text("[]")
    doc = {
        "data": {"source": "shapes"},
        "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "mrcnn"},
        "evaluate": {"batch_size": 8, "num_overlays": 2, "score_thresh": 0.99, "device": "cpu"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(doc))

    with caplog.at_level(logging.INFO):
        evaluate.main(["--params", str(root / "params.yaml")])

    metrics = json.loads((root / "metrics" / "eval.json").read_text())
    summary = json.loads((root / "reports" / "evaluate" / "summary.json").read_text())
    assert summary["num_detections"] == 0 and summary["score_thresh"] == 0.99
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == metrics[iou_type]["AP50"] == 0.0
    assert "no detections" in caplog.text
    assert "f" * 32 + " is not in the store" in caplog.text
    # the stale results.json is gone; steps/ holds the step-by-step pictures
    assert sorted(p.name for p in (root / "reports" / "evaluate").iterdir()) == sorted(
        [*PICTURES, "pr.csv", "summary.json", "steps", *ERROR_FILES]
    )
    # every object missed; fixing any one type (even miss: nothing left to find) leaves AP 0
    errors = json.loads((root / "metrics" / "eval_errors.json").read_text())["segm"]
    assert errors["AP50"] == errors["fp"] == errors["fn"] == 0.0
    assert errors["dAP"] == dict.fromkeys(("cls", "loc", "both", "dupe", "bkg", "miss"), 0.0)
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mrcnn").experiment_id])
    assert [r.info.run_name for r in runs] == ["evaluate"]
    assert runs[0].data.metrics["val/final/segm_AP"] == 0.0


def test_main_fails_clearly_without_a_model(project: Path, tmp_path: Path, caplog) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "data").symlink_to(project / "data", target_is_directory=True)
    (root / "params.yaml").write_text("mlflow: {tracking_uri: sqlite:///mlflow.db}\n")
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--params", str(root / "params.yaml")])
    assert e.value.code == 1
    assert "models/final does not exist" in caplog.text
    assert not (root / "metrics" / "eval.json").exists()


def test_model_and_shards_that_do_not_belong_together(project: Path, tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "data").symlink_to(project / "data", target_is_directory=True)
    paths = paths_under(root)
    for cfg, message in (
        (presets.shapes_small(num_classes=6, image_size=SIZE), r"labels \[4, 5\]"),
        (presets.shapes_small(image_size=2 * SIZE), "takes 128 px images"),
    ):
        weights.save(build_model(cfg), paths.model_dir)
        with pytest.raises(evaluate.EvaluateError, match=message):
            evaluate.run(Params(), paths)
    assert not paths.metrics_out.exists() and not paths.reports_dir.exists()


def test_bad_evaluate_keys(tmp_path: Path) -> None:
    for text, message in (
        ("evaluate: {num_overlays: 0}", "evaluate.num_overlays"),
        ("evaluate: {score_thresh: 1.0}", "evaluate.score_thresh"),
        ("evaluate: {device: gpu}", "evaluate.device"),
        ("evaluate: {backend: detectron2}", "evaluate.backend"),
        ("evaluate: {batch_szie: 2}", "evaluate.batch_szie"),
        ("evaluate: {confusion_thresh: 1.0}", "evaluate.confusion_thresh"),
        ("evaluate: {num_error_images: 65}", "evaluate.num_error_images"),
        ("evaluate: {keypoint_thresh: .nan}", "evaluate.keypoint_thresh"),
        ("evaluate: {pr_breakdown: sometimes}", "evaluate.pr_breakdown"),
    ):
        (tmp_path / "p.yaml").write_text(text)
        with pytest.raises(ValueError, match=message):
            load_section(tmp_path / "p.yaml", "evaluate", EvaluateParams)


def test_a_corrupted_val_shard_stops_evaluate_before_the_model_runs(tiny_shards, tmp_path):
    """Issue 23: evaluate verifies the val shards first; a flipped byte is one ShardReadError
    (a ValueError: one line from `python -m pipeline.evaluate`) naming the shard, and nothing
    is written."""
    import shutil

    from mrcnn.data import ShardReadError

    val = Path(shutil.copytree(tiny_shards / "val", tmp_path / "val"))
    shard = val / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    raw = tiny_shards.parent.parent / "data" / "raw" / "shapes"
    paths = EvaluatePaths(
        model_dir=tmp_path / "model",  # never opened: the shards fail first
        shards_dir=val,
        annotations=raw / "annotations" / "instances_val.json",
        train_run=tmp_path / "train_run.json",
        metrics_out=tmp_path / "eval.json",
        reports_dir=tmp_path / "reports",
    )
    paths.model_dir.mkdir()
    with pytest.raises(ShardReadError, match=f"{shard} does not match its sha256"):
        evaluate.run(Params(), paths)
    assert not paths.metrics_out.exists() and not paths.reports_dir.exists()
