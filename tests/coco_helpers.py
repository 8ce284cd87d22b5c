"""Tiny COCO-format datasets for the data tests: realistic polygon shapes, written to disk."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CATEGORIES = [  # non-contiguous ids on purpose: they must map to labels 1..K
    {"id": 3, "name": "blob", "supercategory": "thing"},
    {"id": 7, "name": "star", "supercategory": "thing"},
    {"id": 11, "name": "box", "supercategory": "thing"},
]


def star_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float) -> list[float]:
    """A random star-shaped polygon (12..20 vertices), flattened [x0, y0, x1, y1, ...]."""
    k = int(rng.integers(12, 21))
    angles = np.sort(rng.uniform(0, 2 * math.pi, k))
    radii = radius * rng.uniform(0.55, 1.0, k)
    xs = cx + radii * np.cos(angles)
    ys = cy + radii * np.sin(angles)
    return np.stack([xs, ys], axis=1).round(2).reshape(-1).tolist()


def textured_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random colours (a gradient plus low-frequency noise), uint8 [h, w, 3]."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.uniform(0, 255, 3)
    grad = rng.uniform(-80, 80, (2, 3))
    img = base + yy[..., None] * grad[0] + xx[..., None] * grad[1]
    noise = rng.normal(0, 12, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def make_coco(
    root: Path,
    split: str,
    sizes: list[tuple[int, int]],
    *,
    seed: int = 0,
    per_image: tuple[int, int] = (1, 4),
    ext: str = "png",
    first_id: int = 1,
) -> dict[str, Any]:
    """Write `root/<split>/*.{ext}` and `root/annotations/instances_<split>.json` with random
    polygon instances; returns the COCO dict (also written)."""
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for k, (h, w) in enumerate(sizes):
        image_id = first_id + k
        name = f"{image_id:012d}.{ext}"
        Image.fromarray(textured_image(rng, h, w)).save(root / split / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for _ in range(int(rng.integers(per_image[0], per_image[1] + 1))):
            radius = float(rng.uniform(0.12, 0.3) * min(h, w))
            cx = float(rng.uniform(radius, w - radius))
            cy = float(rng.uniform(radius, h - radius))
            poly = star_polygon(rng, cx, cy, radius)
            xs, ys = poly[0::2], poly[1::2]
            anns.append(
                {
                    "id": 1000 * image_id + len(anns),
                    "image_id": image_id,
                    "category_id": CATEGORIES[int(rng.integers(0, 3))]["id"],
                    "segmentation": [poly],
                    "area": 0.0,
                    "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                    "iscrowd": 0,
                }
            )
    doc = {"images": images, "annotations": anns, "categories": CATEGORIES}
    write_annotations(root, split, doc)
    return doc


def write_annotations(root: Path, split: str, doc: dict[str, Any]) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    with open(root / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump(doc, f)
