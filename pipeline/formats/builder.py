"""`CocoBuilder`: what every format converter fills in, written out as a COCO-layout folder.

    OUT/{train,val}/...                          the images (hard links where possible)
    OUT/annotations/instances_{train,val}.json   COCO instances files
    OUT/conversion_report.json                   counts and every record left out or changed

A converter calls `add_image` per image (which decodes it, so unreadable files are caught here)
and `add_instance` per object; whatever it cannot use it passes to `skip`. Nothing raises on a
bad record and nothing is dropped without a report entry. The reasons are those of the COCO
reader (`mrcnn.data.coco`) where the problem is the same, plus the format-level ones:

    left out, image level (with the image, its objects)
    missing_image        a label file / entry names an image that does not exist (or the reverse)
    corrupt_image        the image cannot be decoded (empty, truncated, not an image)
    image_size_mismatch  the labels give a size the image has in neither orientation
    duplicate_image      a second record for an image already added
    duplicate_image_id   (coco) image entries sharing an id: all of them (whose are the labels?)
    missing_mask         (masks) an image without its instance-mask file
    missing_label        (yolo) an image without a label file: kept, as an image with no object
    unused_split         (coco, Roboflow's export) its test/ split: the pipeline has train and val
    placeholder_category (coco, Roboflow's export) category 0, named after the project: not a class
    left out, object level
    invalid_entry        a record the format cannot parse (detail says where)
    unknown_image        (coco) an annotation whose image is not there or not usable
    unknown_category     a class that is not in the declared class list
    background_category  a `_background_` class (label 0 is background already), not a class
    unsupported_shape    a shape type with no area (line, point, a box without a polygon)
    missing_segmentation, empty_polygon, invalid_polygon, invalid_rle, empty_mask
                         the segmentation checks of `mrcnn.data.segmentation` (a bad polygon
                         of an object in several parts leaves out that part only)
    changed, kept
    image_id_zero        (coco) image id 0, renumbered
    exif_orientation     an image turned upright, as the labelling tool showed it
    pixel_coordinates    (yolo) a label file in pixels, not 0..1: read as pixels

Image ids are 1..N in the order images are added (converters add them sorted by path), unless
the format has its own (COCO). Categories are 1..K in the order given.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycocotools.mask as mask_utils

from mrcnn.data.coco import Skip, count_annotations, group_reasons
from mrcnn.data.image_file import ImageReadError
from mrcnn.data.layout import SPLITS, annotation_file, image_dir
from mrcnn.data.segmentation import (
    SegmentationError,
    check_polygon,
    rle_to_json,
    segmentation_rle,
)
from mrcnn.fileio import write_json_atomic
from pipeline.formats.files import decode_for_labels, name_problem

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
        orient: bool = False,
        expect_size: tuple[int, int] | None = None,
    ) -> int | None:
        """Read one image (from `path`, or its encoded bytes `data`) -> its handle (1, 2, ...: what
        `add_instance` and `size` take), or None after reporting why it cannot be used
        (`invalid_entry`, `duplicate_image`, `missing_image`, `corrupt_image`,
        `image_size_mismatch`).

        file_name:   where it goes under the split folder (relative, '/' separated)
        split:       'train' / 'val', or None to decide by `val_fraction`
        image_id:    keep this id (COCO sources); default the handle
        orient, expect_size: the frame the labels are in (`pipeline.formats.files`); a picture
                     turned upright is written out as such and reported (`exif_orientation`)
        """
        problem = name_problem(file_name)
        if problem:
            self.skip("invalid_entry", file_name=file_name, detail=problem)
            return None
        if (split, file_name) in self._by_name:
            self.skip("duplicate_image", file_name=file_name)
            return None
        if data is None and (path is None or not path.is_file()):
            self.skip("missing_image", file_name=file_name, detail=str(path))
            return None
        source = data if data is not None else path
        try:
            got = decode_for_labels(source, file_name, orient=orient, expect=expect_size)
        except ImageReadError as e:
            self.skip(e.reason, image_id=image_id, file_name=file_name, detail=str(e)[:200])
            return None
        handle = len(self.images) + 1
        if image_id is None:
            image_id = handle
        if got.data is not None:
            detail = f"turned upright ({got.height}x{got.width}), as the labels were drawn"
            self.skip("exif_orientation", image_id=image_id, file_name=file_name, detail=detail)
            data = got.data
        self.images.append(
            _Image(
                image_id,
                file_name,
                path,
                data,
                got.height,
                got.width,
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
        segmentation: Any,
        *,
        iscrowd: bool = False,
        file_name: str = "",
    ) -> bool:
        """One object: polygons (flat `[x0, y0, x1, y1, ...]` lists, pixels) or an RLE (compressed
        or not, with or without `size`: `mrcnn.data.segmentation`).

        Invalid polygons are reported (`invalid_polygon`, `empty_polygon`) and left out of the
        instance; an instance with none left, an invalid RLE, or a mask with no pixel in the
        image is reported and not added. Returns whether it was added.
        """
        checked = self._checked(handle, segmentation, file_name)
        if checked is not None:
            self._append(handle, category_id, *checked, iscrowd=iscrowd)
        return checked is not None

    def add_ignore_region(
        self, handle: int, polygons: list[list[float]], file_name: str = ""
    ) -> None:
        """An ignored region (`__ignore__`, of no class): one crowd annotation per category,
        since COCOeval ignores only the detections of a crowd annotation's own category; so
        detections of any class there are ignored. Every count a user sees (`write`'s summary,
        the download stage, the shards' manifest, the overlays) takes the copies as one region
        (`mrcnn.data.coco.count_annotations`)."""
        checked = self._checked(handle, polygons, file_name)
        for cid in range(1, len(self.categories) + 1) if checked is not None else ():
            self._append(handle, cid, *checked, iscrowd=True)

    def _checked(
        self, handle: int, segmentation: Any, file_name: str
    ) -> tuple[Any, dict[str, Any], list[float]] | None:
        """(segmentation as written, its RLE, COCO bbox), or None after reporting why not."""
        h, w = self.size(handle)
        image_id = self.images[handle - 1].image_id
        polygons = isinstance(segmentation, list) and not any(
            isinstance(p, dict) for p in segmentation
        )
        if polygons and segmentation:  # each part on its own: a bad one leaves the others
            good = []
            for poly in segmentation:
                try:
                    check_polygon(poly, h, w)
                    good.append([float(v) for v in poly])
                except SegmentationError as e:
                    self.skip(e.reason, image_id=image_id, file_name=file_name, detail=e.detail)
            if not good:
                return None
            segmentation = good
        try:
            rle = segmentation_rle(segmentation, h, w)
        except SegmentationError as e:
            self.skip(e.reason, image_id=image_id, file_name=file_name, detail=e.detail)
            return None
        if polygons:  # kept as polygons, with COCO's bbox: the polygons' extent
            xs = [v for p in segmentation for v in p[0::2]]
            ys = [v for p in segmentation for v in p[1::2]]
            return segmentation, rle, [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        return rle_to_json(rle), rle, [float(v) for v in mask_utils.toBbox(rle)]

    def _append(
        self,
        handle: int,
        category_id: int,
        segmentation: Any,
        rle: dict[str, Any],
        bbox: list[float],
        *,
        iscrowd: bool,
    ) -> None:
        self.annotations.append(
            {
                "id": len(self.annotations) + 1,
                "image_id": handle,  # replaced by the image's id in `write`
                "category_id": category_id,
                "segmentation": segmentation,
                "bbox": bbox,
                "area": float(mask_utils.area(rle)),
                "iscrowd": int(iscrowd),
            }
        )

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
            summary["splits"][split] = {"images": len(images), **count_annotations(anns)}
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
        return summary


def summary_line(summary: dict[str, Any], out: Path) -> str:
    """One line: what was converted and what was left out, and where the report is (`out`: the
    folder where it will be read, which a caller writing to a temporary folder names)."""
    parts = [
        f"{s} {c['images']} images / {c['instances']} instances"
        + (f" / {plural(c['ignored_regions'], 'ignored region')}" if c["ignored_regions"] else "")
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


def plural(n: int, noun: str) -> str:
    """'1 ignored region', '2 ignored regions'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def split_for(keys: list[str], val_fraction: float) -> set[str]:
    """The keys that go to val: the `round(n * val_fraction)` smallest by sha1 of the key (at
    least one when the fraction is > 0 and there are two keys or more). Deterministic, and an
    image keeps its split when others are added unless it sits at the boundary."""
    if val_fraction <= 0 or len(keys) < 2:
        return set()
    n_val = min(len(keys) - 1, max(1, round(len(keys) * val_fraction)))
    ranked = sorted(keys, key=lambda k: hashlib.sha1(k.encode()).hexdigest())
    return set(ranked[:n_val])


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
