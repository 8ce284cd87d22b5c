"""YOLO segmentation labels (Ultralytics YOLO-seg): one txt per image,
`class x1 y1 x2 y2 ...` per line with coordinates normalised to 0..1.

- Class names: `data.yaml` (`names`: a list or `{index: name}`) or `classes.txt` (one per line).
- Layout: the image folders `data.yaml` names under `train` / `val` (relative to its `path`, else
  to the yaml), or `images/train` + `images/val`, or every image under `images/` (else SRC) split
  by `val_fraction`. An image's labels are at the same place with the last `images` folder
  replaced by `labels` and the suffix by `.txt`.
- A line with only a box (`class cx cy w h`) has no mask and is reported (`unsupported_shape`), as
  are class indices beyond the names (`unknown_category`), label files with no image
  (`missing_label`) and images with no label file (kept as negatives, reported).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mrcnn.data.layout import SPLITS
from pipeline.formats.builder import CocoBuilder, image_files


def is_yolo(src: Path) -> bool:
    has_names = (src / "data.yaml").is_file() or (src / "classes.txt").is_file()
    return has_names and any("labels" in t.relative_to(src).parts for t in src.rglob("*.txt"))


def class_names(src: Path) -> tuple[list[str], dict[str, Any]]:
    """(names, the parsed data.yaml or {})."""
    if (src / "data.yaml").is_file():
        doc = yaml.safe_load((src / "data.yaml").read_text()) or {}
        names = doc.get("names")
        if isinstance(names, dict):
            names = [str(names[k]) for k in sorted(names, key=int)]
        if not isinstance(names, list):
            raise ValueError(f"{src / 'data.yaml'}: 'names' must be a list or {{index: name}}")
        return [str(n) for n in names], doc
    if (src / "classes.txt").is_file():
        lines = (src / "classes.txt").read_text().splitlines()
        return [ln.strip() for ln in lines if ln.strip()], {}
    raise FileNotFoundError(f"{src}: YOLO labels need data.yaml or classes.txt for class names")


def convert_yolo(src: Path, out: Path, *, val_fraction: float, **_: Any) -> dict[str, Any]:
    names, doc = class_names(src)
    builder = CocoBuilder(names, val_fraction=val_fraction)
    for split, folder in _image_folders(src, doc):
        for path in image_files(folder):
            rel = path.relative_to(folder).as_posix()
            image_id = builder.add_image(
                path, rel, split=split, split_key=path.relative_to(src).as_posix()
            )
            label = _label_path(path)
            if image_id is None:
                continue
            if not label.is_file():
                builder.skip(
                    "missing_label",
                    image_id=image_id,
                    file_name=rel,
                    detail="no label file: kept as an image without objects",
                )
                continue
            _add_labels(builder, image_id, label, rel, names)
    labels_root = src / "labels"
    if labels_root.is_dir():
        seen = {_label_path(p) for _, f in _image_folders(src, doc) for p in image_files(f)}
        for txt in sorted(labels_root.rglob("*.txt")):
            if txt not in seen:
                builder.skip(
                    "missing_image",
                    file_name=txt.relative_to(src).as_posix(),
                    detail="a label file without its image",
                )
    return builder.write(out, source=str(src), fmt="yolo")


def _image_folders(src: Path, doc: dict[str, Any]) -> list[tuple[str | None, Path]]:
    base = src / str(doc.get("path") or "") if doc.get("path") else src
    if not base.is_dir():
        base = src
    named = [(s, base / str(doc[s])) for s in SPLITS if isinstance(doc.get(s), str)]
    if named and all(f.is_dir() for _, f in named):
        return named
    if all((src / "images" / s).is_dir() for s in SPLITS):
        return [(s, src / "images" / s) for s in SPLITS]
    return [(None, src / "images" if (src / "images").is_dir() else src)]


def _label_path(image: Path) -> Path:
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _add_labels(
    builder: CocoBuilder, image_id: int, label: Path, rel: str, names: list[str]
) -> None:
    h, w = builder.size(image_id)
    for n, line in enumerate(label.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, coords = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            builder.skip(
                "invalid_entry",
                image_id=image_id,
                file_name=rel,
                detail=f"{label.name}:{n}: not numbers",
            )
            continue
        if not 0 <= cls < len(names):
            builder.skip(
                "unknown_category",
                image_id=image_id,
                file_name=rel,
                detail=f"{label.name}:{n}: class {cls} (names has {len(names)})",
            )
            continue
        if len(coords) == 4:
            builder.skip(
                "unsupported_shape",
                image_id=image_id,
                file_name=rel,
                detail=f"{label.name}:{n}: a box without a polygon",
            )
            continue
        cid = builder.category_id(names[cls], image_id=image_id, file_name=rel)
        if cid:
            poly = [v * (w if i % 2 == 0 else h) for i, v in enumerate(coords)]
            builder.add_instance(image_id, cid, [poly], file_name=f"{rel} ({label.name}:{n})")
