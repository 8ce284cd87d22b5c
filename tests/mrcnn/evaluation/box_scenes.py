"""Hand-built scenes of rectangles for the error-analysis tests: objects and detections as xywh
boxes, their masks the same rectangles (so bbox and segm see the same IoUs, up to pixels)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

SIZE = 200  # images are SIZE x SIZE
# A and B share a supercategory, C does not; N has no ground truth anywhere.
A, B, C, N = 1, 2, 3, 9
CATEGORIES = [
    {"id": A, "name": "cat", "supercategory": "animal"},
    {"id": B, "name": "dog", "supercategory": "animal"},
    {"id": C, "name": "car", "supercategory": "vehicle"},
    {"id": N, "name": "never", "supercategory": "vehicle"},
]


def _polygon(box: Sequence[float]) -> list[list[float]]:
    x, y, w, h = box
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def make_gt(objects: dict[int, list[tuple]], n_images: int | None = None) -> COCO:
    """objects {image_id: [(category_id, (x, y, w, h)[, iscrowd])]} -> a COCO ground truth
    (images 1..n_images, default the largest id)."""
    n = n_images or max(objects, default=1)
    anns = []
    for image_id, objs in sorted(objects.items()):
        for cat, box, *crowd in objs:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [float(v) for v in box],
                    "segmentation": _polygon(box),
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(crowd[0]) if crowd else 0,
                }
            )
    images = [
        {"id": i, "height": SIZE, "width": SIZE, "file_name": f"{i}.png"} for i in range(1, n + 1)
    ]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": CATEGORIES}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def det(image_id: int, cat: int, box: Sequence[float], score: float) -> dict:
    """A COCO result with the box and the same rectangle as an RLE mask."""
    rle = mask_utils.merge(mask_utils.frPyObjects(_polygon(box), SIZE, SIZE))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "image_id": image_id,
        "category_id": cat,
        "bbox": [float(v) for v in box],
        "score": float(score),
        "segmentation": rle,
    }


def shifted(box: Sequence[float], dx: float) -> tuple[float, ...]:
    """The box moved right by dx (IoU with the box: (w - dx) / (w + dx) for dx < w)."""
    x, y, w, h = box
    return (x + dx, y, w, h)
