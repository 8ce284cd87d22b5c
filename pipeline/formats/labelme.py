"""labelme: one json per image (`shapes`, `imagePath`, optionally the image itself as base64
`imageData`), anywhere under SRC.

- Classes: `SRC/labels.txt` (labelme's own convention, one per line; `__ignore__` and
  `_background_` lines are not classes) or else every label seen, sorted.
- Shapes sharing a `group_id` (and label) are one instance (labelme's way to draw an occluded
  object in parts); each shape without a group is an instance of its own.
- `__ignore__` shapes become ignored (crowd) regions, not instances.
- polygon, rectangle and circle shapes become polygons; line, linestrip, point (no area) and
  mask shapes are reported (`unsupported_shape`), as are points that are not [x, y] pairs
  (`invalid_polygon`) and shapes without a label or with a group_id that is not an int / str
  (`invalid_entry`).
- The image: `imagePath` relative to the json (Windows' '\\' separators too), else the file of
  that name beside it, else the embedded `imageData`. labelme labels the picture turned by its
  EXIF tag, so such an image is written out upright (`exif_orientation`); one whose size is
  not `imageHeight` x `imageWidth` either way is left out (`image_size_mismatch`).
- Splits: `SRC/train/` and `SRC/val/` when both exist, else by `val_fraction`.
"""

from __future__ import annotations

import base64
import binascii
import math
from pathlib import Path, PurePosixPath
from typing import Any

from mrcnn.data.image_file import IMAGE_SUFFIXES
from mrcnn.data.layout import SPLITS
from pipeline.formats.builder import IGNORE, CocoBuilder
from pipeline.formats.files import read_json, read_text
from pipeline.formats.shapes import ellipse, rectangle


def is_labelme_json(path: Path) -> bool:
    try:
        doc = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "shapes" in doc and "imagePath" in doc


def convert_labelme(src: Path, out: Path, *, val_fraction: float, **_: Any) -> dict[str, Any]:
    files = sorted(p for p in src.rglob("*.json") if not p.name.startswith("."))
    docs: list[tuple[Path, dict[str, Any] | str]] = []
    for p in files:
        try:
            doc = read_json(p)
        except (OSError, ValueError) as e:
            doc = str(e)[:200]
        if not isinstance(doc, str) and not (isinstance(doc, dict) and "shapes" in doc):
            doc = "not a labelme json (no 'shapes')"
        elif isinstance(doc, dict) and not isinstance(doc["shapes"], list):
            doc = "'shapes' is not a list"
        docs.append((p, doc))
    labels_txt = src / "labels.txt"
    if labels_txt.is_file():
        names = [ln.strip() for ln in read_text(labels_txt).splitlines() if ln.strip()]
    else:
        names = sorted(
            {
                s.get("label")
                for _, d in docs
                if isinstance(d, dict)
                for s in d["shapes"]
                if isinstance(s, dict) and isinstance(s.get("label"), str)
            }
        )
    builder = CocoBuilder(names, val_fraction=val_fraction)
    has_splits = all((src / s).is_dir() for s in SPLITS)
    for path, doc in docs:
        rel = path.relative_to(src).as_posix()
        if isinstance(doc, str):
            builder.skip("invalid_entry", file_name=rel, detail=doc)
            continue
        split = rel.split("/", 1)[0] if has_splits else None
        split = split if split in SPLITS else None
        image_path = _image_path(path, doc.get("imagePath"))
        file_name = (
            _relative(image_path, src)
            or (path.parent / image_path.name).relative_to(src).as_posix()
        )
        if split is not None and file_name.startswith(split + "/"):
            file_name = file_name[len(split) + 1 :]
        data = None
        if not image_path.is_file() and doc.get("imageData"):
            try:
                data = base64.b64decode(doc["imageData"], validate=False)
            except (binascii.Error, ValueError, TypeError):
                data = None
        h, w = doc.get("imageHeight"), doc.get("imageWidth")
        image_id = builder.add_image(
            image_path,
            file_name,
            data=data,
            split=split,
            split_key=rel,
            orient=True,  # labelme shows (and labels) the picture turned by its EXIF tag
            expect_size=(h, w) if _is_size(h) and _is_size(w) else None,
        )
        if image_id is None:
            n = len(doc["shapes"])
            if builder.skipped and n:
                builder.skipped[-1].detail += f" (labels in {rel}: {n} shapes)"
            continue
        _add_shapes(builder, image_id, doc, rel)
    return builder.write(out, source=str(src), fmt="labelme")


def _image_path(json_path: Path, image_path: Any) -> Path:
    """The image a labelme json names: `imagePath` relative to the json ('\\' separated when
    written on Windows), else the file of that name beside the json; without `imagePath`, an
    image beside the json with its stem."""
    name = str(image_path or "").replace("\\", "/")
    if not name:
        same_stem = [json_path.with_suffix(s) for s in IMAGE_SUFFIXES]
        return next((p for p in same_stem if p.is_file()), json_path.with_suffix(".jpg"))
    path = json_path.parent / name
    beside = json_path.parent / PurePosixPath(name).name
    return beside if not path.is_file() and beside.is_file() else path


def _add_shapes(builder: CocoBuilder, image_id: int, doc: dict[str, Any], rel: str) -> None:
    groups: dict[tuple[str, Any], list[list[float]]] = {}
    order: list[tuple[str, Any]] = []
    for i, shape in enumerate(doc["shapes"]):
        label = shape.get("label") if isinstance(shape, dict) else None
        gid = shape.get("group_id") if isinstance(shape, dict) else None
        if not isinstance(label, str) or not (gid is None or isinstance(gid, (int, str))):
            why = "no label" if not isinstance(label, str) else f"group_id {str(gid)[:40]}"
            builder.skip(
                "invalid_entry", image_id=image_id, file_name=rel, detail=f"shape {i}: {why}"
            )
            continue
        poly = _polygon(shape)
        if isinstance(poly, tuple):
            reason, why = poly
            builder.skip(
                reason, image_id=image_id, file_name=rel, detail=f"shape {i} ({label}): {why}"
            )
            continue
        key = (label, gid if gid is not None else f"shape{i}")
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(poly)
    for key in order:
        label = key[0]
        if label == IGNORE:
            builder.add_ignore_region(image_id, groups[key], file_name=rel)
            continue
        cid = builder.category_id(label, image_id=image_id, file_name=rel)
        if cid:
            builder.add_instance(image_id, cid, groups[key], file_name=rel)


def _polygon(shape: dict[str, Any]) -> list[float] | tuple[str, str]:
    """A labelme shape -> flat polygon, or (reason, why) it has none. Point counts are checked
    later (`mrcnn.data.segmentation`)."""
    kind = shape.get("shape_type") or "polygon"
    pts = shape.get("points")
    try:
        pts = [(float(x), float(y)) for x, y in pts]
    except (TypeError, ValueError):
        return "invalid_polygon", "points are not [x, y] pairs"
    if kind == "polygon":
        return [v for p in pts for v in p]
    if kind == "rectangle" and len(pts) == 2:
        return rectangle(*pts[0], *pts[1])
    if kind == "circle" and len(pts) == 2:
        (cx, cy), (px, py) = pts
        r = math.hypot(px - cx, py - cy)
        return ellipse(cx, cy, r, r)
    return "unsupported_shape", f"shape_type {str(kind)[:40]!r} with {len(pts)} points"


def _is_size(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _relative(path: Path, root: Path) -> str:
    """`path` relative to `root` ('/' separated), or '' when it lies outside."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return ""
