"""COCO sources: `coco` (a folder already in the COCO layout) and `coco_single` (one instances
json beside an image folder, split into train/val by image id).

    coco:        SRC/{train,val}/ + SRC/annotations/instances_{train,val}.json
    coco_single: SRC/<any>.json (images / annotations / categories) + the images it names,
                 looked up relative to the json, SRC, SRC/images

Image and category ids are kept, except image id 0 (renumbered, reported `image_id_zero`: tools
treat 0 as "no image") and a `_background_` category (not a class, reported). Annotations are
copied as they are; the shards stage validates their geometry and reports what it cannot use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mrcnn.data.layout import SPLITS, annotation_file, image_dir
from pipeline.formats.builder import BACKGROUND, CocoBuilder


def is_coco(src: Path) -> bool:
    return annotation_file(src, "train").is_file()


def single_json(src: Path) -> Path | None:
    """The one COCO instances json at the top of `src`, if there is exactly one."""
    found = [p for p in sorted(src.glob("*.json")) if _looks_like_coco(p)]
    return found[0] if len(found) == 1 else None


def convert_coco(src: Path, out: Path, *, val_fraction: float, **_: Any) -> dict[str, Any]:
    docs = {}
    for split in SPLITS:
        ann = annotation_file(src, split)
        if not ann.is_file():
            raise FileNotFoundError(
                f"{src} is not in the COCO layout: no {ann} (use --format coco_single for one "
                "json with an image folder)"
            )
        docs[split] = (_read(ann), [image_dir(src, split)])
    return _convert(docs, src, out, "coco", val_fraction)


def convert_coco_single(src: Path, out: Path, *, val_fraction: float, **_: Any) -> dict[str, Any]:
    ann = src if src.is_file() else single_json(src)
    if ann is None:
        raise FileNotFoundError(
            f"{src}: expected exactly one COCO instances json (with 'images', 'annotations', "
            "'categories') at the top of the folder"
        )
    root = ann.parent
    docs = {None: (_read(ann), [root, root / "images", src if src.is_dir() else root])}
    return _convert(docs, src, out, "coco_single", val_fraction)


def _convert(
    docs: dict[str | None, tuple[dict[str, Any], list[Path]]],
    src: Path,
    out: Path,
    fmt: str,
    val_fraction: float,
) -> dict[str, Any]:
    names: dict[int, str] = {}
    for doc, _ in docs.values():
        for c in doc["categories"]:
            if (
                isinstance(c, dict)
                and isinstance(c.get("id"), int)
                and isinstance(c.get("name"), str)
            ):
                names.setdefault(c["id"], c["name"])
    order = sorted(names)
    builder = CocoBuilder([names[k] for k in order], val_fraction=val_fraction)
    new_cat = {k: builder.category_id(names[k]) for k in order if names[k] != BACKGROUND}
    used = {im["id"] for doc, _ in docs.values() for im in doc["images"] if isinstance(im, dict)}
    next_free = max([i for i in used if isinstance(i, int)], default=0) + 1
    for split, (doc, roots) in docs.items():
        ids: dict[Any, int] = {}
        for im in doc["images"]:
            file_name = im.get("file_name") if isinstance(im, dict) else None
            image_id = im.get("id") if isinstance(im, dict) else None
            if not isinstance(file_name, str) or not isinstance(image_id, int):
                builder.skip("invalid_entry", detail=f"image entry {str(im)[:200]}")
                continue
            new_id = image_id
            if image_id == 0:
                new_id, next_free = next_free, next_free + 1
                builder.skip(
                    "image_id_zero",
                    image_id=0,
                    file_name=file_name,
                    detail=f"renumbered to {new_id}",
                )
            path = next((r / file_name for r in roots if (r / file_name).is_file()), None)
            got = builder.add_image(
                path if path is not None else roots[0] / file_name,
                file_name,
                split=split,
                image_id=new_id,
                split_key=f"{image_id:012d}",
            )
            if got is not None:
                ids[image_id] = got
        for a in doc["annotations"]:
            if not isinstance(a, dict) or "image_id" not in a:
                builder.skip("invalid_entry", detail=f"annotation {str(a)[:200]}")
                continue
            if a["image_id"] not in ids:
                builder.skip(
                    "unknown_image",
                    image_id=a["image_id"],
                    detail=f"annotation {a.get('id')} (its image is missing or unusable)",
                )
                continue
            cid = new_cat.get(a.get("category_id"), 0)
            if not cid:
                builder.skip(
                    "background_category"
                    if names.get(a.get("category_id")) == BACKGROUND
                    else "unknown_category",
                    image_id=a["image_id"],
                    detail=f"annotation {a.get('id')} category_id={a.get('category_id')!r}",
                )
                continue
            segm = a.get("segmentation")
            if not isinstance(segm, (list, dict)):
                builder.skip(
                    "invalid_entry",
                    image_id=a["image_id"],
                    detail=f"annotation {a.get('id')} has no segmentation",
                )
                continue
            builder.add_instance(ids[a["image_id"]], cid, segm, iscrowd=bool(a.get("iscrowd")))
    return builder.write(out, source=str(src), fmt=fmt)


def _read(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    if not _is_coco_doc(doc):
        raise ValueError(
            f"{path}: not a COCO instances file (needs lists 'images', 'annotations', 'categories')"
        )
    return doc


def _looks_like_coco(path: Path) -> bool:
    try:
        return _is_coco_doc(json.loads(path.read_text()))
    except (OSError, ValueError):
        return False


def _is_coco_doc(doc: Any) -> bool:
    return isinstance(doc, dict) and all(
        isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
    )
