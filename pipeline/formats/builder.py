"""`CocoBuilder`: what every format converter fills in, written out as a COCO-layout folder.

    OUT/{train,val}/...                          the images (hard links where possible)
    OUT/annotations/instances_{train,val}.json   COCO instances files
    OUT/conversion_report.json                   counts and every record left out or changed

A converter calls `add_image` per image (which reads it, so unreadable files are caught here)
and `add_instance` per object; whatever it cannot use it passes to `skip`. Nothing raises on a
bad record and nothing is dropped without a report entry. The reasons are those of the COCO
reader (`mrcnn.data.coco`) where the problem is the same, plus the format-level ones:

    missing_image        a label file / entry names an image that does not exist
    corrupt_image        the image cannot be decoded
    invalid_polygon      fewer than 3 points, odd length, non-numbers or NaN (that part only)
    unknown_category     a class that is not in the declared class list
    unsupported_shape    a shape type with no area (line, point) or that the format cannot say
    missing_mask         (masks) an image without its instance-mask file
    image_id_zero        (coco) image id 0, renumbered (recorded, the image is kept)
    background_category  a `_background_` class (label 0 is background already), not a class
    missing_label        (yolo, masks) a label or mask with no image, or an image with no label
    invalid_entry        a record the format cannot parse (detail says where)
    duplicate_image      a second record for an image already added

Image ids are 1..N in the order images are added (converters add them sorted by path), unless
the format has its own (COCO). Categories are 1..K in the order given.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mrcnn.data.coco import Skip, group_reasons
from mrcnn.data.image_file import IMAGE_SUFFIXES
from mrcnn.data.layout import SPLITS, annotation_file, image_dir
from mrcnn.fileio import write_json_atomic

logger = logging.getLogger(__name__)

REPORT = "conversion_report.json"
BACKGROUND = "_background_"
IGNORE = "__ignore__"


@dataclass
class _Image:
    image_id: int
    file_name: str  # relative to the split folder
    source: Path | None  # a file to link; None when `data` holds the bytes
    data: bytes | None
    height: int
    width: int
    split: str | None  # None: decided by `val_fraction`
    split_key: str


@dataclass
class CocoBuilder:
    """Collects images, categories and instances; `write(out)` makes the COCO folder.

    categories:   class names in label order (category ids 1..K); `_background_` and
                  `__ignore__` are not classes (the first is reported)
    val_fraction: share of images that go to val when the format has no split of its own,
                  chosen deterministically by each image's split key (see `split_for`)
    """

    categories: list[str]
    val_fraction: float = 0.2
    images: list[_Image] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    _by_name: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = []
        for name in self.categories:
            if name == BACKGROUND:
                self.skip("background_category", detail=f"'{name}' is not a class (label 0 is)")
            elif name != IGNORE and name not in names:
                names.append(name)
        self.categories = names
        self._category_ids = {n: i + 1 for i, n in enumerate(names)}

    def category_id(self, name: str, *, image_id: int | None = None, file_name: str = "") -> int:
        """Category id of a class name, or 0 after reporting it (`unknown_category`)."""
        cid = self._category_ids.get(name, 0)
        if not cid:
            reason = "background_category" if name == BACKGROUND else "unknown_category"
            self.skip(reason, image_id=image_id, file_name=file_name, detail=f"class {name!r}")
        return cid

    def skip(
        self,
        reason: str,
        *,
        image_id: int | None = None,
        file_name: str | None = None,
        detail: str = "",
    ) -> None:
        self.skipped.append(Skip(reason, image_id, None, file_name or None, detail))

    def add_image(
        self,
        path: Path | None,
        file_name: str,
        *,
        data: bytes | None = None,
        split: str | None = None,
        image_id: int | None = None,
        split_key: str | None = None,
    ) -> int | None:
        """Read one image (from `path`, or its encoded bytes `data`) -> its handle (1, 2, ...: what
        `add_instance` and `size` take), or None after reporting why it cannot be used
        (`missing_image`, `corrupt_image`, `duplicate_image`).

        file_name: where it goes under the split folder (relative, '/' separated)
        split:     'train' / 'val', or None to decide by `val_fraction`
        image_id:  keep this id (COCO sources); default the handle
        """
        if (split, file_name) in self._by_name:
            self.skip("duplicate_image", file_name=file_name)
            return None
        if data is None and (path is None or not path.is_file()):
            self.skip("missing_image", file_name=file_name, detail=str(path))
            return None
        try:
            import io

            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                im.load()
                width, height = im.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            self.skip("corrupt_image", file_name=file_name, detail=str(e)[:200])
            return None
        handle = len(self.images) + 1
        if image_id is None:
            image_id = handle
        self.images.append(
            _Image(
                image_id,
                file_name,
                path,
                data,
                height,
                width,
                split,
                split_key if split_key is not None else file_name,
            )
        )
        self._by_name[(split, file_name)] = handle
        return handle

    def size(self, handle: int) -> tuple[int, int]:
        """(height, width) of an added image."""
        im = self.images[handle - 1]
        return im.height, im.width

    def add_instance(
        self,
        handle: int,
        category_id: int,
        segmentation: list[list[float]] | dict[str, Any],
        *,
        iscrowd: bool = False,
        file_name: str = "",
    ) -> bool:
        """One object: polygons (flat `[x0, y0, x1, y1, ...]` lists, pixels) or an RLE.

        Invalid polygons are reported (`invalid_polygon`) and left out of the instance; an
        instance with none left is not added. Returns whether it was added.
        """
        if isinstance(segmentation, list):
            good = []
            for poly in segmentation:
                problem = polygon_problem(poly)
                if problem:
                    self.skip(
                        "invalid_polygon",
                        image_id=self.images[handle - 1].image_id,
                        file_name=file_name,
                        detail=problem,
                    )
                else:
                    good.append([float(v) for v in poly])
            if not good:
                return False
            segmentation = good
            xs = [v for p in good for v in p[0::2]]
            ys = [v for p in good for v in p[1::2]]
            bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        else:
            import pycocotools.mask as mask_utils

            x, y, w, h = (float(v) for v in mask_utils.toBbox(segmentation))
            bbox = [x, y, w, h]
        self.annotations.append(
            {
                "id": len(self.annotations) + 1,
                "image_id": handle,  # replaced by the image's id in `write`
                "category_id": category_id,
                "segmentation": segmentation,
                "bbox": bbox,
                "area": float(bbox[2] * bbox[3]),
                "iscrowd": int(iscrowd),
            }
        )
        return True

    def add_ignore_region(
        self, handle: int, polygons: list[list[float]], file_name: str = ""
    ) -> None:
        """An ignored region (`__ignore__`): one crowd annotation per category, so COCOeval
        ignores detections of any class there and training never treats it as background."""
        for cid in range(1, len(self.categories) + 1):
            self.add_instance(handle, cid, polygons, iscrowd=True, file_name=file_name)

    def write(self, out: Path, *, source: str = "", fmt: str = "") -> dict[str, Any]:
        """Write the COCO folder at `out` (complete or not at all) -> summary dict."""
        out = Path(out)
        val = split_for([im.split_key for im in self.images if im.split is None], self.val_fraction)
        split_of = [im.split or ("val" if im.split_key in val else "train") for im in self.images]
        tmp = out.with_name(f".{out.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        categories = [
            {"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(self.categories)
        ]
        summary: dict[str, Any] = {"format": fmt, "source": source, "splits": {}}
        for split in SPLITS:
            image_dir(tmp, split).mkdir(parents=True)
            handles = {h for h in range(1, len(self.images) + 1) if split_of[h - 1] == split}
            images = [self.images[h - 1] for h in sorted(handles)]
            anns = [
                {**a, "image_id": self.images[a["image_id"] - 1].image_id}
                for a in self.annotations
                if a["image_id"] in handles
            ]
            for im in images:
                dst = image_dir(tmp, split) / im.file_name
                dst.parent.mkdir(parents=True, exist_ok=True)
                if im.data is not None:
                    dst.write_bytes(im.data)
                else:
                    _link(im.source, dst)
            doc = {
                "images": [
                    {
                        "id": im.image_id,
                        "file_name": im.file_name,
                        "height": im.height,
                        "width": im.width,
                    }
                    for im in sorted(images, key=lambda i: i.image_id)
                ],
                "annotations": anns,
                "categories": categories,
            }
            write_json_atomic(annotation_file(tmp, split), doc, indent=None)
            summary["splits"][split] = {
                "images": len(images),
                "instances": sum(1 for a in anns if not a["iscrowd"]),
                "ignored_regions": sum(1 for a in anns if a["iscrowd"]),
            }
        summary["categories"] = self.categories
        summary["skipped"] = group_reasons(self.skipped)
        report = {**summary, "records": [s.to_dict() for s in self.skipped]}
        write_json_atomic(tmp / REPORT, report)
        if not any(summary["splits"][s]["images"] for s in SPLITS):
            shutil.rmtree(tmp)
            raise ValueError(
                f"{source}: no usable image found as {fmt} ({len(self.skipped)} records left "
                f"out: {summary['skipped']}); check the folder and --format"
            )
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        logger.info("%s", summary_line(summary, out))
        return summary


def summary_line(summary: dict[str, Any], out: Path) -> str:
    """One line: what was converted and what was left out, and where the report is."""
    parts = [
        f"{s} {c['images']} images / {c['instances']} instances"
        for s, c in summary["splits"].items()
    ]
    skipped = summary["skipped"]
    left = (
        (
            f"; {sum(skipped.values())} records left out or changed ("
            + ", ".join(f"{k} {v}" for k, v in skipped.items())
            + f"), see {out / REPORT}"
        )
        if skipped
        else "; nothing left out"
    )
    return f"{summary['format']} {summary['source']} -> {out}: " + ", ".join(parts) + left


def split_for(keys: list[str], val_fraction: float) -> set[str]:
    """The keys that go to val: the `round(n * val_fraction)` smallest by sha1 of the key (at
    least one when the fraction is > 0 and there are two keys or more). Deterministic, and an
    image keeps its split when others are added unless it sits at the boundary."""
    if val_fraction <= 0 or len(keys) < 2:
        return set()
    n_val = min(len(keys) - 1, max(1, round(len(keys) * val_fraction)))
    ranked = sorted(keys, key=lambda k: hashlib.sha1(k.encode()).hexdigest())
    return set(ranked[:n_val])


def polygon_problem(poly: Any) -> str:
    """Why a flat polygon cannot be used, or '' if it can."""
    if not isinstance(poly, (list, tuple)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly
    ):
        return "not a list of numbers"
    if not all(math.isfinite(v) for v in poly):
        return "non-finite coordinate"
    if len(poly) % 2:
        return f"odd number of coordinates ({len(poly)})"
    if len(poly) < 6:
        return f"{len(poly) // 2} points (a polygon needs 3)"
    return ""


def rectangle(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def ellipse(
    cx: float, cy: float, rx: float, ry: float, theta: float = 0.0, n: int = 32
) -> list[float]:
    """A polygon with `n` vertices on the ellipse (radians `theta` rotation)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(theta), math.sin(theta)
    pts = np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)
    return pts.round(2).reshape(-1).tolist()


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder` (recursive), sorted."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
