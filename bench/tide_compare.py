"""`mrcnn.evaluation.error_breakdown` beside the reference TIDE implementation (`tidecv`, Bolya
et al. 2020) on a realistic results set, bbox and segm: AP50, the six main dAPs and the two
special ones, and the time each takes.

The set (`realistic_set`, torch-free, also used by tests/mrcnn/evaluation/test_tide.py): COCO-like
images (640 x 360..480) with ~7 star-polygon objects of 20 categories in 5 supercategories, 1%
crowd regions; detections made from the ground truth as a detector errs: most objects found
(shifted / scaled a little, mostly the right label, sometimes a similar one), some badly placed,
some found twice, some missed, plus background detections; errors score lower than hits on
average. Masks are the (transformed) polygons as RLEs.

    python bench/tide_compare.py --images 500            # needs `pip install tidecv`
    python bench/tide_compare.py --images 500 --skip-tidecv

tidecv is pure Python and slow (minutes for a few thousand images); it is not a dependency of
the project (a separate venv: `python3 -m venv /tmp/tide-venv && /tmp/tide-venv/bin/pip install
tidecv pycocotools numpy matplotlib`, then run this script with that Python: mrcnn's evaluation
needs no torch). Results: docs/evaluate.md ("Error analysis").
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

from mrcnn.evaluation.tide import error_breakdown  # noqa: E402

SUPERCATEGORIES = ("animal", "vehicle", "food", "furniture", "tool")
CATEGORIES = [
    {"id": 2 + 3 * k, "name": f"{SUPERCATEGORIES[k // 4]}{k % 4}", "supercategory": s}
    for k, s in enumerate(s for s in SUPERCATEGORIES for _ in range(4))
]
TIDE_NAMES = {"Cls": "cls", "Loc": "loc", "Both": "both", "Dupe": "dupe", "Bkg": "bkg"}
TIDE_NAMES.update(Miss="miss", FalsePos="fp", FalseNeg="fn")


def _star(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    k = int(rng.integers(12, 21))
    a = np.sort(rng.uniform(0, 2 * math.pi, k))
    rad = r * rng.uniform(0.55, 1.0, k)
    return np.stack([cx + rad * np.cos(a), cy + rad * np.sin(a)], axis=1)


def _annotation(poly: np.ndarray, h: int, w: int) -> dict:
    poly = np.clip(poly, 0, [w, h])
    x, y = poly[:, 0], poly[:, 1]
    rle = mask_utils.frPyObjects([poly.reshape(-1).tolist()], h, w)[0]
    return {
        "segmentation": [poly.round(2).reshape(-1).tolist()],
        "area": float(mask_utils.area(rle)),
        "bbox": [
            float(x.min()),
            float(y.min()),
            float(x.max() - x.min()),
            float(y.max() - y.min()),
        ],
    }


def _result(image_id: int, cat: int, poly: np.ndarray, h: int, w: int, score: float) -> dict:
    poly = np.clip(poly, 0, [w, h])
    rle = mask_utils.merge(mask_utils.frPyObjects([poly.reshape(-1).tolist()], h, w))
    rle["counts"] = rle["counts"].decode("ascii")
    x, y = poly[:, 0], poly[:, 1]
    box = [float(x.min()), float(y.min()), float(x.max() - x.min()), float(y.max() - y.min())]
    return {
        "image_id": image_id,
        "category_id": cat,
        "bbox": box,
        "score": score,
        "segmentation": rle,
    }


def _moved(rng: np.random.Generator, poly: np.ndarray, shift: float, scale: float) -> np.ndarray:
    """The polygon scaled about its centre by ~scale and shifted by ~shift of its size."""
    c = poly.mean(0)
    size = poly.max(0) - poly.min(0)
    s = np.exp(rng.normal(0, scale, 2))
    return (poly - c) * s + c + rng.normal(0, shift, 2) * size


def realistic_set(n_images: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """-> (COCO ground-truth dict, COCO results) as the module docstring describes."""
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in CATEGORIES]
    images, anns, results = [], [], []
    for i in range(1, n_images + 1):
        short = int(rng.integers(360, 481))
        h, w = (short, 640) if rng.random() < 0.7 else (640, short)
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w})
        for _ in range(max(1, int(rng.poisson(7)))):
            side = float(np.exp(rng.uniform(math.log(8), math.log(300))))
            r = min(side / math.sqrt(0.6 * math.pi), 0.45 * min(h, w))
            poly = _star(rng, rng.uniform(r, w - r), rng.uniform(r, h - r), r)
            k = int(rng.integers(len(cat_ids)))
            crowd = rng.random() < 0.01
            anns.append(
                {"id": len(anns) + 1, "image_id": i, "category_id": cat_ids[k]}
                | _annotation(poly, h, w)
                | {"iscrowd": int(crowd)}
            )
            if crowd:
                continue
            u = rng.random()
            if u < 0.12:
                continue  # missed
            label = cat_ids[k]
            if rng.random() < 0.12:  # the wrong class, usually a similar one
                same_sup = [c for c in range(len(cat_ids)) if c // 4 == k // 4 and c != k]
                label = (
                    cat_ids[int(rng.choice(same_sup))]
                    if rng.random() < 0.6
                    else rng.choice(cat_ids)
                )
            if u < 0.25:  # badly placed
                det = _moved(rng, poly, 0.45, 0.35)
                score = rng.uniform(0.05, 0.8)
            else:
                det = _moved(rng, poly, 0.04, 0.06)
                score = rng.uniform(0.3, 1.0) if label == cat_ids[k] else rng.uniform(0.05, 0.9)
            results.append(_result(i, int(label), det, h, w, float(score)))
            if rng.random() < 0.2:  # found twice
                twice = _moved(rng, poly, 0.05, 0.08)
                results.append(
                    _result(i, int(label), twice, h, w, float(score * rng.uniform(0.3, 1)))
                )
        for _ in range(int(rng.poisson(4))):  # background
            r = float(np.exp(rng.uniform(math.log(5), math.log(120))))
            poly = _star(rng, rng.uniform(r, w - r), rng.uniform(r, h - r), r)
            results.append(_result(i, int(rng.choice(cat_ids)), poly, h, w, rng.uniform(0.05, 0.7)))
    return {"images": images, "annotations": anns, "categories": CATEGORIES}, results


def tidecv_breakdown(gt_file: Path, results_file: Path, iou_type: str) -> dict:
    """The reference numbers: tidecv's AP and main / special errors (its own names mapped to
    ours)."""
    from tidecv import TIDE, datasets

    tide = TIDE(mode=TIDE.BOX if iou_type == "bbox" else TIDE.MASK)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = datasets.COCO(str(gt_file))
        run = tide.evaluate(gt, datasets.COCOResult(str(results_file)), name="run")
        errors = tide.get_all_errors()
    out = {"AP50": run.ap}
    out.update({TIDE_NAMES[k]: v for k, v in errors["main"]["run"].items()})
    out.update({TIDE_NAMES[k]: v for k, v in errors["special"]["run"].items()})
    return out


def ours(coco_gt: COCO, results: list[dict], iou_type: str) -> dict:
    b = error_breakdown(coco_gt, results, iou_type)
    return {"AP50": b["AP50"], **b["dAP"], "fp": b["fp"], "fn": b["fn"]}


def compare(n_images: int, seed: int, skip_tidecv: bool) -> dict:
    doc, results = realistic_set(n_images, seed)
    out: dict = {"images": n_images, "objects": len(doc["annotations"]), "detections": len(results)}
    with tempfile.TemporaryDirectory() as tmp:
        gt_file, res_file = Path(tmp) / "gt.json", Path(tmp) / "results.json"
        gt_file.write_text(json.dumps(doc))
        res_file.write_text(json.dumps(results))
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(str(gt_file))
        for iou_type in ("bbox", "segm"):
            t = time.perf_counter()
            out[f"{iou_type}_ours"] = ours(coco_gt, results, iou_type)
            out[f"{iou_type}_ours_s"] = time.perf_counter() - t
            if not skip_tidecv:
                t = time.perf_counter()
                out[f"{iou_type}_tidecv"] = tidecv_breakdown(gt_file, res_file, iou_type)
                out[f"{iou_type}_tidecv_s"] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-tidecv", action="store_true", help="time ours only")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    row = compare(args.images, args.seed, args.skip_tidecv)
    print(f"{row['images']} images, {row['objects']} objects, {row['detections']} detections")
    keys = ("AP50", "cls", "loc", "both", "dupe", "bkg", "miss", "fp", "fn")
    print(f"{'':14s}" + "".join(f"{k:>8s}" for k in keys) + f"{'time':>9s}")
    for iou_type in ("bbox", "segm"):
        for who in ("ours", "tidecv"):
            if f"{iou_type}_{who}" in row:
                v = row[f"{iou_type}_{who}"]
                cells = "".join(f"{v[k]:8.2f}" for k in keys)
                print(f"{iou_type + ' ' + who:14s}{cells}{row[f'{iou_type}_{who}_s']:8.1f}s")
    if args.json:
        args.json.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
