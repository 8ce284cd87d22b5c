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
      - fast:      masks pasted into their box crops only, RLE built from the crops, encoding
                   over `--workers` processes
  (b) `coco_evaluate` bbox + segm (evaluate, accumulate, summarize), backend pycocotools vs
      faster, on the same results
  (c) the evaluate path end to end minus the model's forward: (a) + (b) as the evaluate stage
      chains them (`mrcnn.evaluation.evaluate_detections`)

    python bench/eval_speed.py                      # 5,000 images (several minutes)
    python bench/eval_speed.py --images 200         # a quick run
    python bench/eval_speed.py --images 500 --skip-reference   # the fast path only

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycocotools.coco import COCO  # noqa: E402

from mrcnn.roi_heads import RawDetections  # noqa: E402
from mrcnn.structures import Batch  # noqa: E402

# COCO's 80 category ids (1..90 with gaps).
COCO_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
PADDED = 1024  # the model's input side (a COCO config): boxes travel in this frame
DETECTIONS = 100  # per image, as torchvision's box_detections_per_img
M = 28  # mask head output side


@dataclass
class Image_:
    id: int
    height: int
    width: int


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
