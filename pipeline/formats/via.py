"""VIA 2.x (VGG Image Annotator) projects: matterport's balloon format.

A project json is either the exported region data (`via_region_data.json`: `{key: {filename,
size, regions, file_attributes}}`, `regions` a list or, in VIA 1.x exports, a dict) or a whole
saved project (`_via_img_metadata` holds the same mapping). Images are looked up beside the json.

- Layout: `SRC/train/*.json` and `SRC/val/*.json` (the balloon dataset), or one json in SRC
  split by `val_fraction`.
- Shapes: polygon / polyline with an area, rect, circle, ellipse become polygons; point and
  others are reported (`unsupported_shape`).
- Class of a region: the value of its region attribute `class_attribute` (default: the single
  attribute the project uses, if there is exactly one); regions without one get `default_class`
  (balloon has no attributes: every region is a `default_class`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mrcnn.data.layout import SPLITS
from pipeline.formats.builder import CocoBuilder, ellipse, rectangle


def via_images(doc: Any) -> dict[str, Any] | None:
    """The per-image mapping of a VIA project, or None when `doc` is not one."""
    if isinstance(doc, dict) and isinstance(doc.get("_via_img_metadata"), dict):
        return doc["_via_img_metadata"]
    if (
        isinstance(doc, dict)
        and doc
        and all(isinstance(v, dict) and "filename" in v and "regions" in v for v in doc.values())
    ):
        return doc
    return None


def is_via_json(path: Path) -> bool:
    try:
        return via_images(json.loads(path.read_text())) is not None
    except (OSError, ValueError):
        return False


def convert_via(
    src: Path,
    out: Path,
    *,
    val_fraction: float,
    default_class: str = "object",
    class_attribute: str = "",
    **_: Any,
) -> dict[str, Any]:
    projects: list[tuple[str | None, Path]] = []
    for split in SPLITS:
        projects += [(split, p) for p in sorted((src / split).glob("*.json")) if is_via_json(p)]
    if not projects:
        projects = [(None, p) for p in sorted(src.glob("*.json")) if is_via_json(p)]
    if not projects:
        raise FileNotFoundError(f"{src}: no VIA project json (in SRC, or SRC/train and SRC/val)")
    loaded = [(split, path, via_images(json.loads(path.read_text()))) for split, path in projects]
    attr = class_attribute or _single_attribute(loaded)
    names = sorted(
        {
            _class_of(r, attr, default_class)
            for _, _, imgs in loaded
            for e in imgs.values()
            for r in _regions(e)
        }
        - {None}
    )
    builder = CocoBuilder(names, val_fraction=val_fraction)
    for split, path, imgs in loaded:
        for key, entry in imgs.items():
            fname = entry.get("filename") if isinstance(entry, dict) else None
            if not isinstance(fname, str) or not fname:
                builder.skip("invalid_entry", file_name=path.name, detail=f"entry {key!r}")
                continue
            image_id = builder.add_image(
                path.parent / fname, fname, split=split, split_key=f"{split}/{fname}"
            )
            if image_id is None:
                continue
            for i, region in enumerate(_regions(entry)):
                poly = _polygon(
                    region.get("shape_attributes") if isinstance(region, dict) else None
                )
                if isinstance(poly, str):
                    builder.skip(
                        "unsupported_shape",
                        image_id=image_id,
                        file_name=fname,
                        detail=f"region {i}: {poly}",
                    )
                    continue
                name = _class_of(region, attr, default_class)
                cid = builder.category_id(name, image_id=image_id, file_name=fname)
                if cid:
                    builder.add_instance(image_id, cid, [poly], file_name=fname)
    return builder.write(out, source=str(src), fmt="via")


def _regions(entry: Any) -> list[Any]:
    regions = entry.get("regions") if isinstance(entry, dict) else None
    if isinstance(regions, dict):  # VIA 1.x: {"0": region, ...}
        return [regions[k] for k in sorted(regions, key=lambda k: int(k) if k.isdigit() else 0)]
    return regions if isinstance(regions, list) else []


def _single_attribute(loaded: list[tuple[Any, Path, dict[str, Any]]]) -> str:
    keys = {
        k
        for _, _, imgs in loaded
        for e in imgs.values()
        for r in _regions(e)
        if isinstance(r, dict)
        for k in (r.get("region_attributes") or {})
    }
    return next(iter(keys)) if len(keys) == 1 else ""


def _class_of(region: Any, attr: str, default: str) -> str:
    attrs = region.get("region_attributes") if isinstance(region, dict) else None
    value = attrs.get(attr) if attr and isinstance(attrs, dict) else None
    if isinstance(value, dict):  # checkbox attributes: {"cat": true, ...}
        value = next((k for k, on in value.items() if on), None)
    return str(value).strip() if value not in (None, "") else default


def _polygon(sa: Any) -> list[float] | str:
    if not isinstance(sa, dict):
        return "no shape_attributes"
    kind = sa.get("name")
    try:
        if kind in ("polygon", "polyline"):
            xs, ys = sa["all_points_x"], sa["all_points_y"]
            if len(xs) != len(ys):
                return "all_points_x and all_points_y differ in length"
            return [float(v) for xy in zip(xs, ys, strict=True) for v in xy]
        if kind == "rect":
            x, y, w, h = (float(sa[k]) for k in ("x", "y", "width", "height"))
            return rectangle(x, y, x + w, y + h)
        if kind == "circle":
            return ellipse(float(sa["cx"]), float(sa["cy"]), float(sa["r"]), float(sa["r"]))
        if kind == "ellipse":
            return ellipse(
                float(sa["cx"]),
                float(sa["cy"]),
                float(sa["rx"]),
                float(sa["ry"]),
                float(sa.get("theta", 0.0)),
            )
    except (KeyError, TypeError, ValueError) as e:
        return f"{kind}: {e!r}"
    return f"shape {kind!r} has no area"
