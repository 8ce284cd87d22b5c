"""COCO-scale evaluation speed: paste + RLE, COCOeval, and the evaluate path, per backend.

A synthetic set the size of COCO val2017 (5,000 images of 640 x 360..480 px, either way round,
~7 star-polygon instances per image over COCO's 80 category ids, 1% of them crowd regions) and
100 detections per image as the model outputs them (`RawDetections`: boxes in the padded input
frame, scores, labels, 28 x 28 mask probabilities): jittered copies of the instances (their
polygon drawn into the 28 x 28 grid, some with the wrong label) and random boxes with elliptic
masks. Generating it is not timed. Timed, each for the fast path and for the pycocotools-era
path side by side, back to back in one process:

  (a) paste + encode: `MaskRCNN.postprocess` + `to_coco_results` over all detections
      - reference: every mask pasted into a full H x W image, RLE-encoded by pycocotools
      - fast:      no paste: RLE computed from each mask's 28 x 28 grid and box
                   (`mrcnn.inference.grid_masks`), encoding over `--workers` processes
  (b) `coco_evaluate` bbox + segm (evaluate, accumulate, summarize) on the same results:
      pycocotools one type after the other vs faster-coco-eval with bbox and segm side by side
      in `--workers` processes (`--workers 1`: one after the other)
  (c) the evaluate path end to end minus the model's forward: (a) + (b) as the evaluate stage
      chains them (`mrcnn.evaluation.predict_dataset`, then `coco_evaluate`)
  (d) with --errors: the error analysis on the same results, in one process, against (b):
      `error_breakdown` (TIDE) bbox + segm (goal: at most 50% of (b)), and, each timed on its
      own, `confusion_matrix` bbox + segm and `pr_breakdown` (COCO analyze(): 3 COCOevals per
      IoU type)

    python bench/eval_speed.py                      # 5,000 images (several minutes)
    python bench/eval_speed.py --images 200         # a quick run
    python bench/eval_speed.py --images 500 --skip-reference   # the fast path only
    python bench/eval_speed.py --skip-reference --errors       # + the error analysis

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycocotools.coco import COCO  # noqa: E402

from bench import provenance  # noqa: E402
from mrcnn import presets  # noqa: E402
from mrcnn.evaluation.coco_eval import CocoScores, coco_evaluate  # noqa: E402
from mrcnn.evaluation.coco_results import ResultsEncoder  # noqa: E402
from mrcnn.modeling.model import build_model  # noqa: E402
from mrcnn.structures import Batch, RawDetections  # noqa: E402

# COCO's 80 category ids (1..90 with gaps).
COCO_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
PADDED = 1024  # the model's input side (a COCO config): boxes travel in this frame
DETECTIONS = 100  # per image, as torchvision's box_detections_per_img
M = 28  # mask head output side


def star(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    """A random star-shaped polygon (12..20 vertices) -> float [V, 2] (x, y)."""
    k = int(rng.integers(12, 21))
    a = np.sort(rng.uniform(0, 2 * math.pi, k))
    rad = r * rng.uniform(0.55, 1.0, k)
    return np.stack([cx + rad * np.cos(a), cy + rad * np.sin(a)], axis=1)


def make_ground_truth(n_images: int, seed: int) -> dict:
    """COCO val-like annotations: image sizes, ~7 instances of COCO-like sizes (sqrt(area)
    log-uniform 6..350 px: ~40% small, ~30% medium, ~30% large), 1% crowd."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, n_images + 1):
        short = int(rng.integers(360, 481))
        h, w = (short, 640) if rng.random() < 0.7 else (640, short)
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w})
        for _ in range(max(1, int(rng.poisson(7)))):
            side = float(np.exp(rng.uniform(math.log(6), math.log(350))))
            r = min(side / math.sqrt(0.6 * math.pi), 0.45 * min(h, w))
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            poly = star(rng, cx, cy, r)
            x, y = poly[:, 0], poly[:, 1]
            area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(rng.choice(COCO_IDS)),
                    "segmentation": [poly.round(2).reshape(-1).tolist()],
                    "area": area,
                    "bbox": [x.min(), y.min(), x.max() - x.min(), y.max() - y.min()],
                    "iscrowd": int(rng.random() < 0.01),
                }
            )
    for a in anns:
        a["bbox"] = [round(float(v), 2) for v in a["bbox"]]
    cats = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in COCO_IDS]
    return {"images": images, "annotations": anns, "categories": cats}


def _polygon_probs(poly: np.ndarray, box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The polygon drawn into an M x M grid over `box` (x1, y1, x2, y2), softened -> [M, M]."""
    x1, y1, x2, y2 = box
    sx, sy = M / max(x2 - x1, 1e-3), M / max(y2 - y1, 1e-3)
    pts = [((px - x1) * sx, (py - y1) * sy) for px, py in poly]
    im = Image.new("L", (M, M), 0)
    ImageDraw.Draw(im).polygon(pts, fill=255)
    p = np.asarray(im, np.float32) / 255
    return np.clip(0.15 + 0.7 * p + rng.normal(0, 0.12, (M, M)), 0, 1)


def _ellipse_probs(n: int, rng: np.random.Generator) -> np.ndarray:
    """n random soft ellipses -> [n, M, M] probabilities."""
    g = (np.arange(M) + 0.5) / M
    cy, cx = rng.uniform(0.3, 0.7, (2, n, 1, 1))
    ry, rx = rng.uniform(0.2, 0.5, (2, n, 1, 1))
    d = ((g[None, :, None] - cy) / ry) ** 2 + ((g[None, None, :] - cx) / rx) ** 2
    return (1 / (1 + np.exp(6 * (d - 1)))).astype(np.float32)


def raw_detections(gt: COCO, img: dict, seed: int) -> tuple[np.ndarray, ...]:
    """100 detections of one image in original pixels: boxes [D, 4], scores [D], labels [D]
    (COCO category ids), mask probabilities [D, M, M]; sorted by score."""
    rng = np.random.default_rng([seed, img["id"]])
    h, w = img["height"], img["width"]
    boxes, scores, labels, probs = [], [], [], []
    for ann in gt.imgToAnns[img["id"]]:
        poly = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
        x, y, bw, bh = ann["bbox"]
        for _ in range(3):
            j = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
            box = np.array([x + j[0], y + j[1], x + bw + j[2], y + bh + j[3]])
            box = np.clip(box, 0, [w, h, w, h])
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                continue
            boxes.append(box)
            scores.append(rng.uniform(0.3, 1.0))
            right = rng.random() < 0.85
            labels.append(ann["category_id"] if right else int(rng.choice(COCO_IDS)))
            probs.append(_polygon_probs(poly, box, rng))
    n = DETECTIONS - len(boxes)
    if n > 0:
        side = np.exp(rng.uniform(math.log(8), math.log(400), n))
        aspect = np.exp(rng.uniform(-0.7, 0.7, n))
        bw, bh = side * aspect, side / aspect
        x1, y1 = rng.uniform(0, w - 4, n), rng.uniform(0, h - 4, n)
        rand = np.stack([x1, y1, np.minimum(x1 + bw, w), np.minimum(y1 + bh, h)], axis=1)
        boxes += list(rand)
        scores += list(rng.uniform(0.05, 0.6, n))
        labels += list(rng.choice(COCO_IDS, n))
        probs += list(_ellipse_probs(n, rng))
    order = np.argsort(-np.asarray(scores), kind="stable")[:DETECTIONS]
    return (
        np.asarray(boxes, np.float32)[order],
        np.asarray(scores, np.float32)[order],
        np.asarray(labels, np.int64)[order],
        np.asarray(probs, np.float32)[order],
    )


def model_batches(
    gt: COCO, ids: list[int], batch_size: int, seed: int
) -> Iterator[tuple[RawDetections, Batch]]:
    """What `model.predict` gives the evaluate path, batch by batch: `RawDetections` in the
    padded frame (side PADDED, image at the top left) and the `Batch` fields postprocess reads.
    Model labels are COCO ids here (the category map is the identity)."""
    for s in range(0, len(ids), batch_size):
        imgs = [gt.imgs[i] for i in ids[s : s + batch_size]]
        dets = [raw_detections(gt, img, seed) for img in imgs]
        scales = torch.tensor([PADDED / max(im["height"], im["width"]) for im in imgs])
        sizes = torch.tensor([[im["height"], im["width"]] for im in imgs])
        windows = torch.zeros(len(imgs), 4)
        windows[:, 2] = sizes[:, 0] * scales
        windows[:, 3] = sizes[:, 1] * scales
        raw = RawDetections(
            boxes=torch.from_numpy(np.stack([d[0] for d in dets])) * scales[:, None, None],
            scores=torch.from_numpy(np.stack([d[1] for d in dets])),
            labels=torch.from_numpy(np.stack([d[2] for d in dets])),
            valid=torch.ones(len(imgs), DETECTIONS, dtype=torch.bool),
            mask_probs=torch.from_numpy(np.stack([d[3] for d in dets])),
        )
        batch = Batch(
            images=torch.zeros(len(imgs), 3, 1, 1, dtype=torch.uint8),  # not read
            windows=windows,
            scales=scales,
            original_sizes=sizes,
            image_ids=torch.tensor([im["id"] for im in imgs]),
        )
        yield raw, batch


def generate(gt: COCO, ids: list[int], batch_size: int, seed: int) -> list[tuple]:
    """Every batch of model output, generated once (mask probabilities kept as float16 to
    halve the memory: 5,000 images are ~0.8 GB)."""
    out = []
    for raw, batch in tqdm(
        model_batches(gt, ids, batch_size, seed),
        desc="generate",
        unit="batch",
        total=math.ceil(len(ids) / batch_size),
    ):
        raw.mask_probs = raw.mask_probs.half()
        out.append((raw, batch))
    return out


def _as_model_output(raw: RawDetections) -> RawDetections:
    return RawDetections(raw.boxes, raw.scores, raw.labels, raw.valid, raw.mask_probs.float())


def paste_and_encode(
    model, batches: list[tuple], *, fast: bool, workers: int
) -> tuple[float, list]:
    """(a): postprocess + to_coco_results over all batches -> (seconds, results)."""
    t = time.perf_counter()
    with ResultsEncoder(None, num_workers=workers if fast else 0) as encoder:
        for raw, batch in batches:
            dets = model.postprocess(_as_model_output(raw), batch, grid_masks=fast)
            encoder.add(dets, batch.image_ids.tolist())
        results = encoder.results()
    return time.perf_counter() - t, results


def evaluate(gt: COCO, results: list, backend: str, processes: int = 1) -> tuple[float, CocoScores]:
    """(b): coco_evaluate bbox + segm (side by side in `processes`) -> (seconds, scores)."""
    t = time.perf_counter()
    scores = coco_evaluate(gt, results, backend=backend, processes=processes)
    return time.perf_counter() - t, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=5000, help="images in the set (COCO val: 5000)")
    ap.add_argument(
        "--workers", type=int, default=2, help="encoding / evaluating processes (fast path)"
    )
    ap.add_argument("--batch-size", type=int, default=8, help="images per model batch")
    ap.add_argument(
        "--reference-images",
        type=int,
        default=500,
        help="images for the reference (a) (full-image paste, pycocotools encode, one process),"
        " scaled to the set's size; 0 = all",
    )
    ap.add_argument("--skip-reference", action="store_true", help="time the fast path only")
    ap.add_argument("--errors", action="store_true", help="also time the error analysis (d)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    doc = make_ground_truth(args.images, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ann_file = Path(tmp) / "instances_val.json"
        ann_file.write_text(json.dumps(doc))
        gt = _load(ann_file)
        ids = sorted(gt.getImgIds())
        batches = generate(gt, ids, args.batch_size, args.seed)
        setup = time.perf_counter() - t0
        model = build_model(presets.shapes_small(num_classes=91))
        n_det = sum(int(r.valid.sum()) for r, _ in batches)
        print(
            f"{len(ids)} images, {len(doc['annotations'])} instances, {n_det} detections "
            f"(generated in {setup:.0f} s, not timed)"
        )

        # (c) fast, end to end: load the annotations, paste + encode, evaluate bbox + segm
        t = time.perf_counter()
        gt_c = _load(ann_file)
        a_fast, results = paste_and_encode(model, batches, fast=True, workers=args.workers)
        b_fast, fast_scores = evaluate(gt_c, results, "faster", args.workers)
        c_fast = time.perf_counter() - t
        row = {
            "images": len(ids),
            "detections": n_det,
            "workers": args.workers,
            "a_fast": a_fast,
            "b_fast": b_fast,
            "c_fast": c_fast,
        }
        if args.errors:
            row.update(time_error_analysis(gt_c, results))
        if not args.skip_reference:
            k = len(ids) if args.reference_images <= 0 else min(args.reference_images, len(ids))
            sub = batches[: math.ceil(k / args.batch_size)]
            k = sum(len(b) for _, b in sub)
            a_ref_k, ref_results = paste_and_encode(model, sub, fast=False, workers=0)
            row.update(_mask_agreement(results[: len(ref_results)], ref_results))
            b_ref, ref_scores = evaluate(gt, results, "pycocotools")
            for t_ in ("bbox", "segm"):
                diff = float(np.abs(ref_scores.stats[t_] - fast_scores.stats[t_]).max())
                row[f"{t_}_stats_max_diff"] = diff
            t = time.perf_counter()
            _load(ann_file)
            load = time.perf_counter() - t
            a_ref = a_ref_k * len(ids) / k
            row.update(
                a_ref=a_ref, a_ref_measured_images=k, b_ref=b_ref, c_ref=load + a_ref + b_ref
            )
        row["segm_AP"] = fast_scores.metrics["segm"]["AP"]
        row["bbox_AP"] = fast_scores.metrics["bbox"]["AP"]
    _report(row)
    if args.json:
        args.json.write_text(json.dumps(row, indent=2))


def time_error_analysis(gt: COCO, results: list) -> dict:
    """(d): the error analysis of the evaluate stage on the same results, one process."""
    from mrcnn.evaluation.analyze import pr_breakdown
    from mrcnn.evaluation.confusion import confusion_matrix
    from mrcnn.evaluation.tide import error_breakdown

    row: dict = {}
    t = time.perf_counter()
    for iou_type in ("bbox", "segm"):
        t_ = time.perf_counter()
        b = error_breakdown(gt, results, iou_type)
        row[f"{iou_type}_errors_s"] = time.perf_counter() - t_
        row[f"{iou_type}_tide_AP50"] = b["AP50"]
        row[f"{iou_type}_dAP"] = b["dAP"]
    row["d_errors"] = time.perf_counter() - t
    t = time.perf_counter()
    for iou_type in ("bbox", "segm"):
        confusion_matrix(gt, results, iou_type)
    row["d_confusion"] = time.perf_counter() - t
    t = time.perf_counter()
    for iou_type in ("bbox", "segm"):
        pr_breakdown(gt, results, iou_type)
    row["d_pr_breakdown"] = time.perf_counter() - t
    return row


def _mask_agreement(fast: list, reference: list) -> dict:
    """How far the grid RLEs are from pasting then encoding: masks with the same RLE, and the
    pixels that differ (at the threshold: tests/mrcnn/inference/test_grid_masks.py)."""
    from pycocotools import mask as mask_utils

    same = sum(f["segmentation"] == r["segmentation"] for f, r in zip(fast, reference, strict=True))
    differing = [
        (f["segmentation"], r["segmentation"])
        for f, r in zip(fast, reference, strict=True)
        if f["segmentation"] != r["segmentation"]
    ]
    pixels = 0
    for f, r in differing:
        merged = mask_utils.merge([f, r], intersect=True)
        pixels += int(mask_utils.area(f) + mask_utils.area(r) - 2 * mask_utils.area(merged))
    return {"masks_compared": len(fast), "masks_identical": same, "mask_pixels_differing": pixels}


def _load(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _report(row: dict) -> None:
    def cell(key: str) -> str:
        return f"{row[key]:8.1f} s" if key in row else "       -  "

    print(f"\n{'':44s} {'reference':>11s} {'fast':>11s}")
    names = {
        "a": "(a) paste + RLE encode",
        "b": "(b) coco_evaluate bbox + segm",
        "c": "(c) evaluate path minus forward",
    }
    for k, name in names.items():
        ratio = f"  x{row[k + '_ref'] / row[k + '_fast']:.1f}" if k + "_ref" in row else ""
        print(f"{name:44s} {cell(k + '_ref'):>11s} {cell(k + '_fast'):>11s}{ratio}")
    if "a_ref" in row:
        print(
            f"(reference (a) measured on {row['a_ref_measured_images']} images, scaled; "
            f"reference (c) = annotation load + (a) + (b); "
            f"max |stats diff| bbox {row['bbox_stats_max_diff']:.1e} "
            f"segm {row['segm_stats_max_diff']:.1e})"
        )
        print(
            f"masks: {row['masks_identical']} of {row['masks_compared']} with the same RLE as "
            f"pasted + encoded; {row['mask_pixels_differing']} pixels differ in the others"
        )
    if "d_errors" in row:
        print(
            f"(d) error_breakdown bbox + segm {row['d_errors']:.1f} s "
            f"(bbox {row['bbox_errors_s']:.1f} s, segm {row['segm_errors_s']:.1f} s) = "
            f"{100 * row['d_errors'] / row['b_fast']:.0f}% of (b); confusion_matrix "
            f"{row['d_confusion']:.1f} s; pr_breakdown {row['d_pr_breakdown']:.1f} s"
        )
        for t_ in ("bbox", "segm"):
            d = " ".join(f"{k} {v:.2f}" for k, v in row[f"{t_}_dAP"].items())
            print(f"  {t_}: TIDE AP50 {row[f'{t_}_tide_AP50']:.2f}, dAP {d}")
    print(
        f"segm AP {row['segm_AP']:.4f}  bbox AP {row['bbox_AP']:.4f}  "
        f"(the synthetic detections' AP, identical for both backends)"
    )
    commit = provenance.commit()
    print(
        f"commit {commit}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
