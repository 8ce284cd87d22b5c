"""mrcnn.evaluation.coco_eval backends: faster-coco-eval gives pycocotools' numbers.

Every results set of tests/mrcnn/evaluation/test_coco_eval.py, plus noisy detections with tied
scores over a ground truth with crowd regions (polygon and uncompressed RLE, as COCO writes them)
and a category without ground truth: `stats` (all 12) to 1e-6, the whole precision array [T, R, K,
A, M] (so each category's precision) to 1e-6, and per-category AP.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mrcnn.evaluation.coco_eval import BACKENDS, coco_evaluate, ground_truth_results
from mrcnn.evaluation.coco_results import encode_masks
from tests.coco_helpers import CATEGORIES, make_coco
from tests.mrcnn.evaluation.test_coco_eval import SIZES

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
EMPTY_CATEGORY = {"id": 20, "name": "never", "supercategory": "thing"}  # no ground truth


@pytest.fixture(scope="module")
def coco_gt(tmp_path_factory: pytest.TempPathFactory) -> COCO:
    """The images of test_coco_eval with real mask areas, two crowd regions per image (a
    polygon and an uncompressed RLE) and a fourth category that no annotation uses."""
    root = tmp_path_factory.mktemp("coco")
    doc = make_coco(root, "val", SIZES, seed=3, per_image=(2, 4))
    doc["categories"] = [*CATEGORIES, EMPTY_CATEGORY]
    rng = np.random.default_rng(5)
    crowds = []
    for img in doc["images"]:
        h, w = img["height"], img["width"]
        mine = [a for a in doc["annotations"] if a["image_id"] == img["id"]]
        crowds.append(dict(mine[0], id=900_000 + img["id"], iscrowd=1))  # polygon crowd
        mask = np.zeros((h, w), np.uint8)
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        mask[y0 : y0 + h // 3, x0 : x0 + w // 3] = 1
        flat = mask.reshape(-1, order="F")
        change = np.flatnonzero(np.diff(flat)) + 1
        counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
        if flat[0]:
            counts = [0, *counts]
        crowds.append(
            {
                "id": 950_000 + img["id"],
                "image_id": img["id"],
                "category_id": CATEGORIES[int(rng.integers(0, 3))]["id"],
                "segmentation": {"size": [h, w], "counts": counts},
                "area": float(mask.sum()),
                "bbox": [float(x0), float(y0), float(w // 3), float(h // 3)],
                "iscrowd": 1,
            }
        )
    doc["annotations"] += crowds
    gt = COCO()
    gt.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    for ann in doc["annotations"]:
        ann["area"] = float(gt.annToMask(ann).sum())
    return gt


def _noisy_detections(coco_gt: COCO, seed: int) -> list[dict]:
    """Per image: jittered copies of its instances (some with the wrong label), detections on
    the crowd regions, random boxes of every category (the empty one included); scores on a
    coarse grid so that many tie."""
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in coco_gt.dataset["categories"]]
    out = []
    for img in coco_gt.dataset["images"]:
        h, w = img["height"], img["width"]
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[img["id"]]))
        masks, cats = [], []
        for ann in anns:
            m = coco_gt.annToMask(ann)
            for _ in range(2):
                dy, dx = rng.integers(-6, 7, 2)
                masks.append(np.roll(m, (int(dy), int(dx)), axis=(0, 1)))
                wrong = rng.random() < 0.2
                cats.append(int(rng.choice(cat_ids)) if wrong else ann["category_id"])
        for _ in range(12):
            y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
            hh, ww = (int(v) for v in rng.integers(4, 120, 2))
            m = np.zeros((h, w), np.uint8)
            m[y0 : y0 + hh, x0 : x0 + ww] = 1
            masks.append(m)
            cats.append(int(rng.choice(cat_ids)))
        rles = encode_masks(np.stack(masks).astype(bool))
        for rle, cat in zip(rles, cats, strict=True):
            box = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()})
            out.append(
                {
                    "image_id": img["id"],
                    "category_id": cat,
                    "bbox": [float(v) for v in box],
                    "score": float(rng.integers(1, 6)) / 5,  # five values: many ties
                    "segmentation": rle,
                }
            )
    return out


def _results_sets(coco_gt: COCO) -> dict[str, tuple[list[dict], list[int] | None]]:
    truth = ground_truth_results(coco_gt)
    shifted = [dict(r, bbox=[r["bbox"][0] + 0.2 * r["bbox"][2], *r["bbox"][1:]]) for r in truth]
    extra = [dict(r, category_id=3 if r["category_id"] != 3 else 7, score=0.9) for r in truth]
    small = [i for i in coco_gt.getImgIds() if coco_gt.imgs[i]["height"] < 100]
    return {
        "ground truth": (truth, None),
        "shifted boxes": (shifted, None),
        "every second missed": (truth[::2], None),
        "false positives above": ([dict(r, score=0.5) for r in truth] + extra, None),
        "labels wrong": ([dict(r, category_id=20) for r in truth], None),
        "nothing": ([], None),
        "image subset": (ground_truth_results(coco_gt, small), small),
        "noisy, ties": (_noisy_detections(coco_gt, 0), None),
        "noisy, other seed": (_noisy_detections(coco_gt, 1), None),
    }


def test_faster_backend_gives_pycocotools_numbers(coco_gt: COCO) -> None:
    sets = _results_sets(coco_gt)
    assert any(a["iscrowd"] and isinstance(a["segmentation"], dict) for a in coco_gt.anns.values())
    seen_values = set()
    for name, (results, ids) in sets.items():
        ref = coco_evaluate(coco_gt, results, image_ids=ids, backend="pycocotools")
        fast = coco_evaluate(coco_gt, results, image_ids=ids, backend="faster")
        for iou_type in ("bbox", "segm"):
            np.testing.assert_allclose(
                fast.stats[iou_type], ref.stats[iou_type], atol=1e-6, err_msg=f"{name} {iou_type}"
            )
            assert (
                fast.precision[iou_type].shape
                == ref.precision[iou_type].shape
                == (
                    10,
                    101,
                    4,
                    4,
                    3,
                )
            )
            np.testing.assert_allclose(
                fast.precision[iou_type], ref.precision[iou_type], atol=1e-6, err_msg=name
            )
            seen_values.add(round(float(ref.stats[iou_type][0]), 3))
        assert fast.per_category.keys() == ref.per_category.keys()
        for cat, entry in ref.per_category.items():
            for key, value in entry.items():
                assert fast.per_category[cat][key] == pytest.approx(value, abs=1e-6), (name, cat)
        assert ref.per_category["never"] == {"bbox_AP": None, "segm_AP": None}
        for iou_type, values in ref.metrics.items():
            assert fast.metrics[iou_type] == pytest.approx(values, abs=1e-6)
        assert fast.summary.keys() == ref.summary.keys()
    # the sets span the range: perfect, zero and in between
    assert {1.0, 0.0} <= seen_values and len(seen_values) >= 6


def test_faster_backend_leaves_the_ground_truth_alone(coco_gt: COCO) -> None:
    """faster-coco-eval writes fields into the annotations it evaluates: it gets copies."""
    before = {k: dict(v) for k, v in coco_gt.anns.items()}
    coco_evaluate(coco_gt, _noisy_detections(coco_gt, 2), backend="faster")
    assert {k: dict(v) for k, v in coco_gt.anns.items()} == before


def test_unknown_backend_raises(coco_gt: COCO) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        coco_evaluate(coco_gt, [], backend="detectron2")


@pytest.mark.parametrize("backend", BACKENDS)
def test_types_evaluated_in_processes_give_the_same_scores(coco_gt: COCO, backend: str) -> None:
    """bbox and segm side by side in two forked processes: every number as in one process."""
    results = _noisy_detections(coco_gt, 3)
    alone = coco_evaluate(coco_gt, results, backend=backend)
    forked = coco_evaluate(coco_gt, results, backend=backend, processes=2)
    assert 0.05 < alone.metrics["segm"]["AP"] < 0.95
    assert forked.metrics == alone.metrics and forked.summary == alone.summary
    assert forked.per_category == alone.per_category
    for iou_type in ("bbox", "segm"):
        np.testing.assert_array_equal(forked.precision[iou_type], alone.precision[iou_type])
        np.testing.assert_array_equal(forked.stats[iou_type], alone.stats[iou_type])
    np.testing.assert_array_equal(forked.iou_thresholds, alone.iou_thresholds)
    # one type: no process to fork
    segm = coco_evaluate(coco_gt, results, ["segm"], backend=backend, processes=2)
    assert segm.metrics["segm"] == alone.metrics["segm"]
