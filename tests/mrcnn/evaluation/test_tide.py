"""mrcnn.evaluation.tide: each error type, alone in a scene, costs AP that only its own oracle
gives back; TIDE's AP by hand; bad input; the same numbers as tidecv on a realistic set."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from bench.tide_compare import realistic_set, tidecv_breakdown
from mrcnn.evaluation.coco_eval import coco_evaluate
from mrcnn.evaluation.tide import error_breakdown, tide_ap
from tests.mrcnn.evaluation.box_scenes import A, B, C, N, det, make_gt, shifted

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
OBJ_A, OBJ_B, EXTRA = (10, 10, 40, 40), (100, 100, 40, 40), (10, 100, 40, 40)
TYPES = ("cls", "loc", "both", "dupe", "bkg", "miss")


def scene(error: str | None):
    """Ten images, each with a cat and a dog found exactly (scores 0.54 .. 0.92), and in image 10
    one error of the given type scored 0.97 (above every true positive; a duplicate is the
    lower-scored of two, so there the 0.9 detection)."""
    objects = {i: [(A, OBJ_A), (B, OBJ_B)] for i in range(1, 11)}
    results = []
    for i in range(1, 11):
        results += [det(i, A, OBJ_A, 0.5 + 0.04 * i), det(i, B, OBJ_B, 0.52 + 0.04 * i)]
    if error in ("cls", "loc", "miss"):
        objects[10].append((C, EXTRA))  # a car that is misclassified, badly placed or missed
    extra = {
        "cls": det(10, A, EXTRA, 0.97),  # the car called a cat
        "loc": det(10, C, shifted(EXTRA, 20), 0.97),  # IoU 1/3
        "both": det(10, B, shifted(OBJ_A, 20), 0.97),  # a dog at IoU 1/3 with the cat
        "dupe": det(10, A, shifted(OBJ_A, 2), 0.97),  # the cat again
        "bkg": det(10, A, (150, 10, 30, 30), 0.97),  # nothing there
    }
    if error in extra:
        results.append(extra[error])
    return make_gt(objects), results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("error", TYPES)
def test_one_error_type_costs_only_its_own_dap(error: str, iou_type: str) -> None:
    gt, results = scene(error)
    b = error_breakdown(gt, results, iou_type)
    assert b["AP50"] < 99.0
    assert b["dAP"][error] > 1.0
    assert b["AP50"] + b["dAP"][error] == pytest.approx(100.0)  # the oracle gives it all back
    for other in TYPES:
        if other != error:
            assert b["dAP"][other] == pytest.approx(0.0, abs=1e-9), other
    counts = {t: b["counts"][t] for t in TYPES}
    assert counts == {t: int(t == error) for t in TYPES}
    name = "car" if error in ("loc", "miss") else "dog" if error == "both" else "cat"
    assert b["per_category"][name][error] == 1
    assert b["per_category"][name]["dAP"][error] > 1.0


def test_perfect_detections_score_100() -> None:
    gt, results = scene(None)
    b = error_breakdown(gt, results, "bbox")
    assert b["AP50"] == pytest.approx(100.0)
    assert all(v == 0 for v in b["dAP"].values()) and b["fp"] == 0 and b["fn"] == 0
    assert b["counts"]["tp"] == 20 and b["counts"]["gt"] == 20


def test_special_errors_perfect_precision_and_recall() -> None:
    gt, results = scene("bkg")  # a false positive above everything: precision lost, not recall
    b = error_breakdown(gt, results, "bbox")
    assert b["fp"] == pytest.approx(100.0 - b["AP50"]) and b["fn"] == pytest.approx(0.0)
    gt, results = scene("miss")  # an object never found: recall lost, not precision
    b = error_breakdown(gt, results, "bbox")
    assert b["fn"] == pytest.approx(100.0 - b["AP50"]) and b["fp"] == pytest.approx(0.0)


def test_tide_ap_by_hand() -> None:
    """Two objects; detections TP .9, FP .8, TP .7: precision 1, 1/2, 2/3 -> made monotone
    1, 2/3, 2/3 at recall 1/2, 1/2, 1: recalls 0 .. .50 (51 points) read 1, .51 .. 1 (50) 2/3."""
    ap, per = tide_ap(
        np.array([0, 0, 0]),
        np.array([0.9, 0.8, 0.7]),
        np.array([True, False, True]),
        np.arange(3),
        np.array([2]),
    )
    assert ap == pytest.approx((51 + 50 * 2 / 3) / 101 * 100)
    # category 1 has neither ground truth nor detections: left out (NaN); 2 is only detected
    # and 3 only has ground truth: both 0
    ap, per = tide_ap(
        np.array([0, 2]),
        np.array([0.9, 0.5]),
        np.array([True, False]),
        np.arange(2),
        np.array([1, 0, 0, 3]),
    )
    assert per[0] == 100 and np.isnan(per[1]) and per[2] == 0 and per[3] == 0
    assert ap == pytest.approx(100 / 3)


def test_category_without_ground_truth_counts_as_zero() -> None:
    """TIDE's mean includes a category that is only detected (AP 0); fixing its background
    errors removes it from the mean."""
    gt, results = scene(None)
    b = error_breakdown(gt, [*results, det(1, N, (150, 10, 30, 30), 0.97)], "segm")
    assert b["AP50"] == pytest.approx(200 / 3)
    assert b["dAP"]["bkg"] == pytest.approx(100 / 3)
    assert b["per_category"]["never"] == {
        "AP50": None,
        "dAP": {t: pytest.approx(100.0 if t == "bkg" else 0.0) for t in TYPES},
        "gt": 0,
        **{t: int(t == "bkg") for t in ("tp", "cls", "loc", "both", "dupe", "bkg", "miss")},
    }
    assert "car" not in b["per_category"]  # neither ground truth nor detections


def test_crowd_region_ignores_its_class_only() -> None:
    gt, results = scene(None)
    objects = {i: [(A, OBJ_A), (B, OBJ_B)] for i in range(1, 11)}
    objects[1].append((A, (150, 150, 45, 45), 1))
    gt = make_gt(objects)
    inside = det(1, A, (155, 155, 30, 30), 0.97)
    b = error_breakdown(gt, [*results, inside], "bbox")
    assert b["AP50"] == pytest.approx(100.0) and b["counts"]["ignored"] == 1
    assert sum(b["counts"][t] for t in TYPES) == 0
    b = error_breakdown(gt, [*results, dict(inside, category_id=C)], "bbox")
    assert b["counts"]["bkg"] == 1 and b["counts"]["ignored"] == 0


def test_empty_results() -> None:
    gt, _ = scene("miss")
    b = error_breakdown(gt, [], "segm")
    assert b["AP50"] == 0 and b["counts"]["miss"] == b["counts"]["gt"] == 21
    assert b["fp"] == 0 and b["fn"] == 0 and all(v == 0 for v in b["dAP"].values())


@pytest.fixture(scope="module")
def realistic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, COCO, list]:
    doc, results = realistic_set(150, seed=7)
    root = tmp_path_factory.mktemp("tide")
    (root / "gt.json").write_text(json.dumps(doc))
    (root / "results.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "gt.json"))
    return root / "gt.json", root / "results.json", gt, results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ap50_is_cocoevals_ap50(realistic, iou_type: str) -> None:
    """On a set where every category has ground truth and no image has 100 detections, TIDE's
    AP at IoU .5 is COCOeval's AP50 (the same matching, crowd regions and interpolation)."""
    _, _, gt, results = realistic
    b = error_breakdown(gt, results, iou_type)
    ours = coco_evaluate(gt, results, (iou_type,), backend="pycocotools")
    assert b["AP50"] == pytest.approx(100 * ours.metrics[iou_type]["AP50"], abs=0.05)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_same_numbers_as_tidecv(realistic, iou_type: str) -> None:
    """tidecv (the paper's code) on the realistic set: AP50 and every dAP within 0.5 points
    (bench/tide_compare.py records the full-size comparison, docs/evaluate.md)."""
    pytest.importorskip("tidecv")
    gt_file, res_file, gt, results = realistic
    ref = tidecv_breakdown(gt_file, res_file, iou_type)
    b = error_breakdown(gt, results, iou_type)
    ours = {"AP50": b["AP50"], **b["dAP"], "fp": b["fp"], "fn": b["fn"]}
    assert set(ours) == set(ref)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=0.5), key


def test_suppressed_errors_are_removed_by_their_oracle() -> None:
    """The car called a cat (.97) and a dog (.96): the cls oracle makes the better one the car's
    true positive and removes the other (else it would stay a dog false positive above every
    dog found), so fixing cls gives all the AP back."""
    gt, results = scene("cls")
    b = error_breakdown(gt, [*results, det(10, B, EXTRA, 0.96)], "bbox")
    assert b["counts"]["cls"] == 2
    assert b["AP50"] + b["dAP"]["cls"] == pytest.approx(100.0)


def test_tied_scores_are_ordered_as_tide_orders_them() -> None:
    """A true positive and a false positive tie at 0.8: the AP run takes them in image order
    (TP first), TIDE's fixed runs put errors first, so "fn" (recall made perfect, nothing
    else changed) comes out negative, as tidecv 1.0.1 computes it."""
    gt = make_gt({1: [(A, OBJ_A)], 2: [(A, OBJ_A)]})
    results = [det(1, A, OBJ_A, 0.8), det(2, A, (120, 120, 30, 30), 0.8), det(2, A, OBJ_A, 0.5)]
    b = error_breakdown(gt, results, "bbox")
    assert b["AP50"] == pytest.approx((51 + 50 * 2 / 3) / 101 * 100)  # 83.50
    assert b["fn"] == pytest.approx(200 / 3 - b["AP50"])  # -16.83 (tidecv: -16.8317)
    assert b["dAP"]["bkg"] == pytest.approx(100 - b["AP50"])


def test_contract_names_are_exported_lazily() -> None:
    """`mrcnn.evaluation.error_breakdown` is the function (ARCHITECTURE.md's contract), also after
    every module of the package has been imported (a submodule named like a function would
    replace it), and the error analysis' names resolve (without torch: this file also runs in a
    venv that has tidecv and no torch)."""
    import importlib

    import mrcnn.evaluation as ev

    for module in ("analyze", "confusion", "error_types", "image_errors", "matching", "tide"):
        importlib.import_module(f"mrcnn.evaluation.{module}")
    assert ev.error_breakdown is error_breakdown
    names = ["PrBreakdown", "pr_breakdown", "ConfusionMatrix", "confusion_matrix", "ErrorTypes"]
    names += ["write_confusion_csv", "assign_error_types", "image_detail", "images_by_errors"]
    assert set(names) <= set(ev.__all__)
    assert all(callable(getattr(ev, name)) for name in [*names, "tide_breakdown"])
