"""mrcnn.evaluation.analyze: the Sim / Oth curves of one augmented COCOeval run equal
analyze()'s per-category runs; both backends agree; each band shows its error on a hand-built
scene."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bench.tide_compare import realistic_set
from mrcnn.evaluation.analyze import AREAS, CURVES, pr_breakdown
from tests.mrcnn.evaluation.box_scenes import A, B, C, det, make_gt, shifted

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


class _IgnoringEval(COCOeval):
    def _prepare(self) -> None:
        super()._prepare()
        for ann in self.cocoGt.dataset["annotations"]:
            if ann.get("other"):
                ann["ignore"] = 1


def analyze_one_category(doc: dict, results: list, iou_type: str, cat: int, similar: bool):
    """cocoapi's analyze() for one category, literally: its detections only, against the
    ground truth (Sim: of its supercategory only) with the other categories' objects ignored,
    useCats = 0, IoU .1 -> precision [R, A]."""
    sup = {c["id"]: c["supercategory"] for c in doc["categories"]}
    anns = [
        dict(a, other=int(a["category_id"] != cat))
        for a in copy.deepcopy(doc["annotations"])
        if not similar or sup[a["category_id"]] == sup[cat]
    ]
    drop = "bbox" if iou_type == "segm" else "segmentation"
    dets = [{k: v for k, v in r.items() if k != drop} for r in results if r["category_id"] == cat]
    gt = COCO()
    gt.dataset = dict(doc, annotations=anns)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = _IgnoringEval(gt, gt.loadRes(dets) if dets else COCO(), iou_type)
        ev.params.useCats = 0
        ev.params.iouThrs = np.array([0.1])
        ev.params.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][0, :, 0, :, 0]


@pytest.fixture(scope="module")
def realistic():
    doc, results = realistic_set(20, seed=11)
    gt = COCO()
    gt.dataset = copy.deepcopy(doc)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return doc, results, gt


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_one_run_equals_analyzes_per_category_runs(realistic, iou_type: str) -> None:
    doc, results, gt = realistic
    bd = pr_breakdown(gt, results, iou_type, backend="pycocotools")
    checked = 0
    for k, cat in enumerate(bd.category_ids):
        if not any(r["category_id"] == cat for r in results):
            continue
        for row, similar in ((3, True), (4, False)):
            ref = analyze_one_category(doc, results, iou_type, cat, similar)
            np.testing.assert_array_equal(bd.precision[row, :, k, :], ref, err_msg=f"{cat} {row}")
            checked += 1
    assert checked >= 20
    # the copies matter: forgiving confusions raises the curves
    ap = bd.ap()["all"]
    assert ap["C75"] <= ap["C50"] <= ap["Loc"] < ap["Sim"] < ap["Oth"] < ap["BG"] < ap["FN"] == 1


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_backends_agree(realistic, iou_type: str) -> None:
    _, results, gt = realistic
    ref = pr_breakdown(gt, results, iou_type, backend="pycocotools")
    fast = pr_breakdown(gt, results, iou_type, backend="faster")
    np.testing.assert_allclose(fast.precision, ref.precision, atol=1e-12)


def scene():
    """Ten images with a cat, a dog and a car, each found exactly (scores .54 .. .92); image 10:
    the cat found at IoU .6 only, a dog and a car detected on the cat (scored .97)."""
    a0, b0, c0 = (10, 10, 40, 40), (100, 10, 40, 40), (10, 100, 40, 40)
    gt = make_gt({i: [(A, a0), (B, b0), (C, c0)] for i in range(1, 11)})
    results = []
    for i in range(1, 11):
        s = 0.5 + 0.04 * i
        results += [
            det(i, A, a0 if i < 10 else shifted(a0, 10), s),
            det(i, B, b0, s),
            det(i, C, c0, s),
        ]
    results += [det(10, B, a0, 0.97), det(10, C, a0, 0.97)]
    return gt, results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_each_band_shows_its_error(iou_type: str) -> None:
    gt, results = scene()
    bd = pr_breakdown(gt, results, iou_type)
    medium = AREAS.index("medium")  # 40 x 40 objects
    p = {name: bd.precision[k, :, :, medium] for k, name in enumerate(CURVES)}  # [R, K]
    cat, dog, car = (bd.category_ids.index(c) for c in (A, B, C))
    # the cat at IoU .6: missed at .75, found at .5
    assert p["C75"][:, cat].mean() < 0.95 and (p["C50"][:, cat] == 1).all()
    # a dog detected on a cat: wrong until similar classes are forgiven
    assert p["Loc"][:, dog].mean() < 0.95 and (p["Sim"][:, dog] == 1).all()
    # a car detected on a cat: wrong until every class confusion is forgiven
    assert p["Sim"][:, car].mean() < 0.95 and (p["Oth"][:, car] == 1).all()
    found = [cat, dog, car]  # "never" has no ground truth: -1
    assert (p["BG"][:, found] == 1).all() and (p["FN"][:, found] == 1).all()
    assert (bd.precision[:, :, bd.category_ids.index(9)] == -1).all()
    # no small or large objects: undefined (-1), left out of the means
    for area in ("small", "large"):
        assert (bd.precision[:, :, :, AREAS.index(area)] == -1).all()
        assert all(v is None for v in bd.ap()[area].values())
    assert bd.ap(categories=[A])["medium"]["C50"] == pytest.approx(1.0)


def test_empty_results() -> None:
    gt, _ = scene()
    bd = pr_breakdown(gt, [], "bbox")
    ap = bd.ap()["all"]
    assert ap["C75"] == ap["Oth"] == ap["BG"] == 0 and ap["FN"] == 1
