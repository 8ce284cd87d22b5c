"""YOLO segmentation labels (Ultralytics YOLO-seg): one txt per image,
`class x1 y1 x2 y2 ...` per line with coordinates normalised to 0..1.

- Class names: `data.yaml` (`names`: a list or `{index: name}`) or `classes.txt` (one per line).
- Layout: the image folders `data.yaml` names under `train` / `val` (relative to its `path`, else
  to the yaml), or `images/train` + `images/val`, or every image under `images/` (else SRC) split
  by `val_fraction`. An image's labels are at the same place with the last `images` folder
  replaced by `labels` and the suffix by `.txt`.
- Layouts: Ultralytics' (`images/train`, `labels/train`) and Roboflow's (`train/images`,
  `train/labels`, `valid/...`, data.yaml saying `train: ../train/images`).
- A line with only a box (`class cx cy w h`) has no mask and is reported (`unsupported_shape`), as
  are class indices beyond the names (`unknown_category`), lines that are not numbers and label
  files that are not text (`invalid_entry`), label files with no image (`missing_image`) and
  images with no label file (`missing_label`: kept as negatives). An empty label file is an
  image without objects.
- Coordinates: normalised 0..1 as Ultralytics writes them; a label file whose coordinates are
  mostly beyond 1 is in pixels (some exporters write those), read as such and reported
  (`pixel_coordinates`). Images are read turned by their EXIF tag, as Ultralytics does
  (`exif_orientation`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from mrcnn.data.layout import SPLITS
from pipeline.formats.builder import CocoBuilder
from pipeline.formats.files import image_files, read_text


def is_yolo(src: Path) -> bool:
    has_names = (src / "data.yaml").is_file() or (src / "classes.txt").is_file()
    return has_names and any(_in_labels(t, src) for t in src.rglob("*.txt"))


def class_names(src: Path) -> tuple[list[str], dict[str, Any]]:
    """(names, the parsed data.yaml or {}); `ValueError` naming the file when it is unusable."""
    path = src / "data.yaml"
    if path.is_file():
        try:
            doc = yaml.safe_load(read_text(path)) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
        names = doc.get("names") if isinstance(doc, dict) else None
        if isinstance(names, dict):
            try:
                names = [str(names[k]) for k in sorted(names, key=int)]
            except (TypeError, ValueError):
                raise ValueError(f"{path}: the keys of 'names' must be class indices") from None
        if not isinstance(names, list):
            raise ValueError(f"{path}: 'names' must be a list or {{index: name}}")
        return [str(n) for n in names], doc
    if (src / "classes.txt").is_file():
        lines = read_text(src / "classes.txt").splitlines()
        return [ln.strip() for ln in lines if ln.strip()], {}
    raise FileNotFoundError(f"{src}: YOLO labels need data.yaml or classes.txt for class names")


def convert_yolo(src: Path, out: Path, *, val_fraction: float, **_: Any) -> dict[str, Any]:
    names, doc = class_names(src)
    builder = CocoBuilder(names, val_fraction=val_fraction)
    seen = set()
    for split, folder in _image_folders(src, doc):
        for path in image_files(folder):
            rel = path.relative_to(folder).as_posix()
            label = _label_path(path)
            seen.add(label)
            image_id = builder.add_image(
                path,
                rel,
                split=split,
                split_key=path.relative_to(src).as_posix(),
                orient=True,  # Ultralytics reads images turned by their EXIF tag
            )
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
    for txt in sorted(t for t in src.rglob("*.txt") if _in_labels(t, src) and t not in seen):
        builder.skip(
            "missing_image",
            file_name=txt.relative_to(src).as_posix(),
            detail="a label file without its image",
        )
    return builder.write(out, source=str(src), fmt="yolo")


def _in_labels(txt: Path, src: Path) -> bool:
    return "labels" in txt.relative_to(src).parts[:-1]


def _image_folders(src: Path, doc: dict[str, Any]) -> list[tuple[str | None, Path]]:
    base = src / str(doc.get("path") or "") if doc.get("path") else src
    if not base.is_dir():
        base = src
    named = [(s, _folder(base, src, doc[s])) for s in SPLITS if isinstance(doc.get(s), str)]
    if named and all(f.is_dir() for _, f in named):
        return named
    if all((src / "images" / s).is_dir() for s in SPLITS):
        return [(s, src / "images" / s) for s in SPLITS]
    return [(None, src / "images" if (src / "images").is_dir() else src)]


def _folder(base: Path, src: Path, name: str) -> Path:
    """A split folder data.yaml names: from `path`, or from SRC without the leading '../'
    that Roboflow's exports write (`train: ../train/images`)."""
    if (base / name).is_dir():
        return base / name
    parts = [p for p in Path(name).parts if p not in ("..", ".")]
    return src.joinpath(*parts) if parts else base / name


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
    try:
        lines = read_text(label).splitlines()
    except (OSError, ValueError) as e:
        builder.skip("invalid_entry", image_id=image_id, file_name=rel, detail=str(e)[:200])
        return
    parsed = []
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        try:
            parsed.append((n, int(fields[0]), [float(v) for v in fields[1:]]))
        except ValueError:
            builder.skip(
                "invalid_entry",
                image_id=image_id,
                file_name=rel,
                detail=f"{label.name}:{n}: not numbers",
            )
    finite = [v for _, _, coords in parsed for v in coords if math.isfinite(v)]
    pixels = sum(v > 1.01 for v in finite) > len(finite) / 2  # most coordinates beyond 0..1
    if pixels:
        builder.skip(
            "pixel_coordinates",
            image_id=image_id,
            file_name=rel,
            detail=f"{label.name}: coordinates in pixels, not normalised to 0..1: read as pixels",
        )
    for n, cls, coords in parsed:
        where = f"{label.name}:{n}"
        if not 0 <= cls < len(names):
            builder.skip(
                "unknown_category",
                image_id=image_id,
                file_name=rel,
                detail=f"{where}: class {cls} (names has {len(names)})",
            )
            continue
        if len(coords) == 4:
            builder.skip(
                "unsupported_shape",
                image_id=image_id,
                file_name=rel,
                detail=f"{where}: a box without a polygon",
            )
            continue
        cid = builder.category_id(names[cls], image_id=image_id, file_name=rel)
        if cid:
            poly = (
                coords if pixels else [v * (w if i % 2 == 0 else h) for i, v in enumerate(coords)]
            )
            builder.add_instance(image_id, cid, [poly], file_name=f"{rel} ({where})")
