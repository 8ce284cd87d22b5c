"""The synthetic shapes dataset (after matterport's `shapes` sample), written in COCO format.

Each image is a random solid-colour background with 1..4 solid-colour squares, circles and
triangles painted in order, so later shapes occlude earlier ones; an instance's mask is its
*visible* pixels. A candidate shape that would leave any instance (itself included) with less
than `min_visible` of its full area visible is rejected and redrawn, so every kept instance stays
recognisable. Colours are redrawn until they differ clearly from the background and from the
other shapes, so every mask boundary is visible in the pixels.

Everything is a pure function of `(spec, split, index)`: image `i` of a split comes from its own
generator `numpy.random.default_rng([seed, split_code, i])`, so the dataset is identical across
runs and machines, and changing `num_train` does not change the images that were already there.

Keypoint variant (`keypoints: true`): every instance also carries 8 keypoint types, COCO-style
`[x, y, v] * 8`: a square's corners (0-3: top-left, top-right, bottom-right, bottom-left), a
triangle's apex and base corners (4-6: apex, base right, base left), a circle's centre (7). An
instance labels only its own class's types (the others have v = 0); v = 1 where a later shape
covers the point, else 2. Coordinates are continuous pixels (pixel i spans [i, i + 1]), in the
frame of the boxes. `KEYPOINT_FLIP_MAP` swaps left and right for mirrored images.

Files (`mrcnn.data.layout`, what `pipeline.download` writes for every source):
    <root>/<split>/<image_id:012d>.png
    <root>/annotations/instances_<split>.json   (segmentations as compressed RLE)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image
from tqdm import tqdm

from mrcnn.data import layout
from mrcnn.mapping import check as _check

CLASS_NAMES = ("square", "circle", "triangle")  # COCO category ids 1, 2, 3
KEYPOINT_NAMES = (
    "square_top_left",
    "square_top_right",
    "square_bottom_right",
    "square_bottom_left",
    "triangle_apex",
    "triangle_base_right",
    "triangle_base_left",
    "circle_centre",
)
KEYPOINT_FLIP_MAP = (1, 0, 3, 2, 4, 6, 5, 7)  # left <-> right in a mirrored image
_SPLIT_CODES = {"train": 0, "val": 1}
_SIN60 = math.sin(math.pi / 3)


@dataclass
class ShapesSpec:
    """What to generate. Sizes are half-extents in pixels: half the side of a square, the radius
    of a circle, half the height of a triangle (objects are 2x that across)."""

    num_train: int = 1000
    num_val: int = 250
    image_size: int = 128
    min_shapes: int = 1
    max_shapes: int = 4
    min_size: int = 10
    max_size: int = 30
    min_visible: float = 0.5  # fraction of an instance's full area that must stay visible
    seed: int = 0
    keypoints: bool = False  # also write keypoint annotations (the keypoint variant)

    def validate(self) -> None:
        _check(self.num_train >= 0 and self.num_val >= 0, "num_train", "counts must be >= 0")
        _check(
            1 <= self.min_shapes <= self.max_shapes,
            "max_shapes",
            "needs 1 <= min_shapes <= max_shapes",
        )
        _check(2 <= self.min_size <= self.max_size, "max_size", "needs 2 <= min_size <= max_size")
        _check(
            2 * _margin(self.max_size) < self.image_size,
            "image_size",
            f"must exceed {2 * _margin(self.max_size)} to fit shapes of max_size",
        )
        _check(0.0 <= self.min_visible <= 1.0, "min_visible", "must be in [0, 1]")

    def count(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val}[split]


@dataclass
class ShapesImage:
    """One generated image: `image` uint8 [H, W, 3], `category_ids` [N] (1..3), `masks` bool
    [N, H, W] (visible pixels, each non-empty), `keypoints` float32 [N, 8, 3] (x, y, v; see the
    module doc)."""

    image: np.ndarray
    category_ids: np.ndarray
    masks: np.ndarray
    keypoints: np.ndarray | None = None


def generate_image(spec: ShapesSpec, split: str, index: int) -> ShapesImage:
    """Image `index` of `split`; a pure function of its arguments."""
    rng = np.random.default_rng([spec.seed, _SPLIT_CODES[split], index])
    size = spec.image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    background = rng.integers(0, 256, 3)
    wanted = int(rng.integers(spec.min_shapes, spec.max_shapes + 1))
    full: list[np.ndarray] = []  # bool [H, W] unoccluded shape, in painting order
    colours: list[np.ndarray] = []
    classes: list[int] = []
    # float [8, 3] per kept shape; computed without random draws, so the images stay what they
    # were before keypoints existed.
    points: list[np.ndarray] = []
    for _ in range(20 * wanted):  # bounded retries; the first shape is always accepted
        if len(full) == wanted:
            break
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        half = int(rng.integers(spec.min_size, spec.max_size + 1))
        margin = _margin(half)
        cy, cx = (int(v) for v in rng.integers(margin, size - margin, 2))
        mask = _shape_mask(cls, cx, cy, half, xx, yy)
        colour = _distinct_colour(rng, background, colours)
        if _all_visible(full + [mask], spec.min_visible):
            full.append(mask)
            colours.append(colour)
            classes.append(cls + 1)
            points.append(_keypoints(cls, cx, cy, half))
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = background
    for mask, colour in zip(full, colours, strict=True):
        image[mask] = colour
    keypoints = np.asarray(points, dtype=np.float32).reshape(-1, len(KEYPOINT_NAMES), 3)
    for i in range(len(full)):  # occluded (v = 1) where a later shape covers the point
        for j in np.flatnonzero(keypoints[i, :, 2] > 0):
            col = min(size - 1, int(keypoints[i, j, 0]))
            row = min(size - 1, int(keypoints[i, j, 1]))
            if any(later[row, col] for later in full[i + 1 :]):
                keypoints[i, j, 2] = 1
    return ShapesImage(
        image=image,
        category_ids=np.asarray(classes, dtype=np.int64),
        masks=_visible_masks(full),
        keypoints=keypoints,
    )


def write_split(spec: ShapesSpec, root: Path, split: str) -> dict[str, int]:
    """Generate `split` into `root` (COCO layout, see module doc) -> counts."""
    image_dir = layout.image_dir(root, split)
    ann_file = layout.annotation_file(root, split)
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in tqdm(range(spec.count(split)), desc=f"shapes {split}", unit="img"):
        sample = generate_image(spec, split, index)
        image_id = index + 1
        file_name = f"{image_id:012d}.png"
        Image.fromarray(sample.image).save(image_dir / file_name, format="PNG")
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": spec.image_size,
                "width": spec.image_size,
            }
        )
        for k, (cat, mask) in enumerate(zip(sample.category_ids, sample.masks, strict=True)):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cat),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [x, y, w, h],
                    "iscrowd": 0,
                }
            )
            if spec.keypoints:
                kp = sample.keypoints[k]
                annotations[-1]["keypoints"] = [float(v) for v in kp.reshape(-1)]
                annotations[-1]["num_keypoints"] = int((kp[:, 2] > 0).sum())
    doc = {
        "info": {"description": "synthetic shapes", "spec": spec.__dict__},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(CLASS_NAMES)
        ],
    }
    if spec.keypoints:
        for category in doc["categories"]:
            category["keypoints"] = list(KEYPOINT_NAMES)
            category["skeleton"] = []
    with open(ann_file, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    return {"images": len(images), "annotations": len(annotations)}


def _margin(half: int) -> int:
    """Distance from a shape's centre to the image edge that keeps it whole (the triangle's
    half-base, half / sin 60, is the widest extent)."""
    return math.ceil(half / _SIN60) + 1


def _shape_mask(
    cls: int, cx: int, cy: int, half: int, xx: np.ndarray, yy: np.ndarray
) -> np.ndarray:
    """bool [H, W]: pixel centres inside the shape."""
    if cls == 0:  # square, side 2 * half
        return (np.abs(xx - cx) < half) & (np.abs(yy - cy) < half)
    if cls == 1:  # circle, radius half
        return (xx - cx) ** 2 + (yy - cy) ** 2 < half**2
    # equilateral triangle pointing up, height 2 * half (matterport's vertices)
    hw = half / _SIN60
    verts = [(cx, cy - half), (cx + hw, cy + half), (cx - hw, cy + half)]  # clockwise on screen
    inside = np.ones_like(xx, dtype=bool)
    for (x0, y0), (x1, y1) in zip(verts, verts[1:] + verts[:1], strict=True):
        inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) > 0
    return inside


def _keypoints(cls: int, cx: int, cy: int, half: int) -> np.ndarray:
    """float [8, 3]: the shape's own keypoint types at v = 2, the others zero (unlabelled)."""
    out = np.zeros((len(KEYPOINT_NAMES), 3), np.float32)
    if cls == 0:  # square: pixel centres with |x - cx| < half span [cx - half, cx + half]
        x1, y1, x2, y2 = cx - half, cy - half, cx + half, cy + half
        out[0:4] = [(x1, y1, 2), (x2, y1, 2), (x2, y2, 2), (x1, y2, 2)]
    elif cls == 1:  # circle: its centre
        out[7] = (cx, cy, 2)
    else:  # triangle: `_shape_mask`'s vertices
        hw = half / _SIN60
        out[4:7] = [(cx, cy - half, 2), (cx + hw, cy + half, 2), (cx - hw, cy + half, 2)]
    return out


def _distinct_colour(
    rng: np.random.Generator, background: np.ndarray, others: list[np.ndarray]
) -> np.ndarray:
    """A colour far from the background (L1 >= 150) and from the other shapes (L1 >= 90)."""
    colour = rng.integers(0, 256, 3)
    for _ in range(50):
        far_bg = np.abs(colour - background).sum() >= 150
        if far_bg and all(np.abs(colour - o).sum() >= 90 for o in others):
            break
        colour = rng.integers(0, 256, 3)
    return colour


def _visible_masks(full: list[np.ndarray]) -> np.ndarray:
    """Painting order -> visible pixels: each shape minus everything painted after it."""
    if not full:
        return np.zeros((0, 0, 0), dtype=bool)
    visible = np.stack(full)
    covered = np.zeros_like(full[0])
    for i in range(len(full) - 1, -1, -1):
        visible[i] &= ~covered
        covered |= full[i]
    return visible


def _all_visible(full: list[np.ndarray], min_visible: float) -> bool:
    visible = _visible_masks(full)
    areas = np.array([m.sum() for m in full])
    return bool(np.all(visible.reshape(len(full), -1).sum(1) >= min_visible * areas))
