"""labelme: one json per image (`shapes`, `imagePath`, optionally the image itself as base64
`imageData`), anywhere under SRC.

- Classes: `SRC/labels.txt` (labelme's own convention, one per line; `__ignore__` and
  `_background_` lines are not classes) or else every label seen, sorted.
- Shapes sharing a `group_id` (and label) are one instance (labelme's way to draw an occluded
  object in parts); each shape without a group is an instance of its own.
- `__ignore__` shapes become ignored (crowd) regions, not instances.
- polygon, rectangle, circle and mask-less shape types with an area become polygons; line,
  linestrip and point have none and are reported (`unsupported_shape`).
- Splits: `SRC/train/` and `SRC/val/` when both exist, else by `val_fraction`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from pathlib import Path
from typing import Any

from mrcnn.data.layout import SPLITS
from pipeline.formats.builder import IGNORE, CocoBuilder, ellipse, rectangle


def is_labelme_json(path: Path) -> bool:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "shapes" in doc and "imagePath" in doc


def convert_labelme(src: Path, out: Path, *, val_fraction: float, **_: Any) -> dict[str, Any]:
    files = sorted(p for p in src.rglob("*.json") if not p.name.startswith("."))
    docs: list[tuple[Path, dict[str, Any] | None]] = []
    for p in files:
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            doc = {"_error": str(e)[:200]}
        docs.append((p, doc if isinstance(doc, dict) and "shapes" in doc else None))
    labels_txt = src / "labels.txt"
    if labels_txt.is_file():
        names = [ln.strip() for ln in labels_txt.read_text().splitlines() if ln.strip()]
    else:
        names = sorted(
            {
                s.get("label")
                for _, d in docs
                if d
                for s in d["shapes"]
                if isinstance(s, dict) and isinstance(s.get("label"), str)
            }
        )
    builder = CocoBuilder(names, val_fraction=val_fraction)
    has_splits = all((src / s).is_dir() for s in SPLITS)
    for path, doc in docs:
        rel = path.relative_to(src).as_posix()
        if doc is None:
            builder.skip("invalid_entry", file_name=rel, detail="not a labelme json")
            continue
        split = rel.split("/", 1)[0] if has_splits else None
        split = split if split in SPLITS else None
        image_path = path.parent / str(doc.get("imagePath") or "")
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
        image_id = builder.add_image(image_path, file_name, data=data, split=split, split_key=rel)
        if image_id is None:
            n = len(doc.get("shapes") or [])
            if builder.skipped and n:
                builder.skipped[-1].detail += f" (labels in {rel}: {n} shapes)"
            continue
        _add_shapes(builder, image_id, doc, rel)
    return builder.write(out, source=str(src), fmt="labelme")


def _add_shapes(builder: CocoBuilder, image_id: int, doc: dict[str, Any], rel: str) -> None:
    groups: dict[tuple[str, Any], list[list[float]]] = {}
    order: list[tuple[str, Any]] = []
    for i, shape in enumerate(doc.get("shapes") or []):
        label = shape.get("label") if isinstance(shape, dict) else None
        if not isinstance(label, str):
            builder.skip(
                "invalid_entry", image_id=image_id, file_name=rel, detail=f"shape {i} has no label"
            )
            continue
        poly = _polygon(shape)
        if isinstance(poly, str):
            builder.skip(
                "unsupported_shape",
                image_id=image_id,
                file_name=rel,
                detail=f"shape {i} ({label}): {poly}",
            )
            continue
        gid = shape.get("group_id")
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


def _polygon(shape: dict[str, Any]) -> list[float] | str:
    """A labelme shape -> flat polygon, or why it has none. Point counts are checked later."""
    kind = shape.get("shape_type") or "polygon"
    pts = shape.get("points")
    try:
        pts = [(float(x), float(y)) for x, y in pts]
    except (TypeError, ValueError):
        return "points are not [x, y] pairs"
    if kind == "polygon":
        return [v for p in pts for v in p]
    if kind == "rectangle" and len(pts) == 2:
        return rectangle(*pts[0], *pts[1])
    if kind == "circle" and len(pts) == 2:
        (cx, cy), (px, py) = pts
        r = math.hypot(px - cx, py - cy)
        return ellipse(cx, cy, r, r)
    return f"shape_type {kind!r} with {len(pts)} points has no area"


def _relative(path: Path, root: Path) -> str:
    """`path` relative to `root` ('/' separated), or '' when it lies outside."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return ""
