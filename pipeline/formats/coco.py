"""COCO sources: `coco` (a folder already in the COCO layout) and `coco_single` (one instances
json beside an image folder, split into train/val by image id).

    coco:        SRC/{train,val}/ + SRC/annotations/instances_{train,val}.json, or Roboflow's
                 export: SRC/{train,valid,test}/_annotations.coco.json beside the images (valid
                 is val; test is not converted, reported `unused_split`; the project's
                 category 0 is not a class, reported `placeholder_category`)
    coco_single: SRC/<any>.json (images / annotations / categories; Label Studio's result.json)
                 or SRC/annotations/<one>.json (CVAT's instances_default.json) + the images it
                 names, looked up relative to the json, its images/, SRC, SRC/images

Image and category ids are kept, except image id 0 (renumbered, reported `image_id_zero`: tools
treat 0 as "no image") and a `_background_` category (not a class, reported). Images sharing an
id are all left out (`duplicate_image_id`: their annotations cannot be told apart), and so is an
image whose height / width the file has in neither orientation (`image_size_mismatch`). Each
segmentation (polygons, compressed or uncompressed RLE) is checked and rasterised by
`mrcnn.data.segmentation`, as the shards stage will; crowd annotations (`iscrowd: 1`) stay crowd
regions, which COCO's tools and the shards ignore. Annotation ids are renumbered 1..N.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from mrcnn.data.layout import SPLITS, annotation_file, image_dir
from pipeline.formats.builder import BACKGROUND, CocoBuilder
from pipeline.formats.files import read_json

logger = logging.getLogger(__name__)


ROBOFLOW_JSON = "_annotations.coco.json"
ROBOFLOW_SPLITS = {"train": "train", "valid": "val", "val": "val", "test": None}


def is_coco(src: Path) -> bool:
    return annotation_file(src, "train").is_file() or bool(roboflow_splits(src))


def roboflow_splits(src: Path) -> dict[str, Path]:
    """Roboflow's COCO export: {folder: its json} for SRC/{train,valid,test}/_annotations.coco.json
    (empty when there is no train one)."""
    found = {
        d: src / d / ROBOFLOW_JSON for d in ROBOFLOW_SPLITS if (src / d / ROBOFLOW_JSON).is_file()
    }
    return found if "train" in found else {}


def single_json(src: Path) -> Path | None:
    """The one COCO instances json at the top of `src`, or else in `src/annotations/` (CVAT's
    export: annotations/instances_default.json beside images/), if there is exactly one."""
    for folder in (src, src / "annotations"):
        found = [p for p in sorted(folder.glob("*.json")) if _looks_like_coco(p)]
        if found:
            return found[0] if len(found) == 1 else None
    return None


def convert_coco(src: Path, out: Path, *, val_fraction: float, **_: Any) -> dict[str, Any]:
    if not annotation_file(src, "train").is_file() and roboflow_splits(src):
        return _convert_roboflow(src, out, val_fraction)
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
    roots = [root, root / "images"] + ([src, src / "images"] if src.is_dir() else [])
    docs = {None: (_read(ann), list(dict.fromkeys(roots)))}
    return _convert(docs, src, out, "coco_single", val_fraction)


def _convert_roboflow(src: Path, out: Path, val_fraction: float) -> dict[str, Any]:
    """train/ (and valid/ as val, else a `val_fraction` of train); test/ is not converted and
    is named in the report (`unused_split`): the pipeline has train and val only. Roboflow's
    category 0, named after the project (supercategory "none", the supercategory of all the
    others, no annotation) is not a class (`placeholder_category`)."""
    found = roboflow_splits(src)
    has_val = any(ROBOFLOW_SPLITS[d] == "val" for d in found)
    docs: dict[str | None, tuple[dict[str, Any], list[Path]]] = {}
    notes = []
    for folder, path in found.items():
        split = ROBOFLOW_SPLITS[folder]
        where = path.relative_to(src).as_posix()
        if split is None or split in docs:
            notes.append(("unused_split", where, "a split the pipeline has no use for: not read"))
            continue
        docs[split if has_val else None] = (_read(path), [path.parent])
    for c in _placeholders([doc for doc, _ in docs.values()]):
        notes.append(("placeholder_category", "", f"category {c['id']} '{c['name']}'"))
        for doc, _ in docs.values():
            doc["categories"] = [k for k in doc["categories"] if k != c]
    return _convert(docs, src, out, "coco", val_fraction, notes=tuple(notes))


def _placeholders(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Roboflow's project category: supercategory "none", the supercategory of every other
    category, and no annotation uses it."""
    cats = [c for doc in docs for c in doc["categories"] if isinstance(c, dict)]
    used = {
        str(a.get("category_id")) for doc in docs for a in doc["annotations"] if isinstance(a, dict)
    }
    out = []
    for c in cats:
        others = [k for k in cats if k.get("id") != c.get("id")]
        if (
            c.get("supercategory") == "none"
            and others
            and all(k.get("supercategory") == c.get("name") for k in others)
            and str(c.get("id")) not in used
            and c not in out
        ):
            out.append(c)
    return out


def _convert(
    docs: dict[str | None, tuple[dict[str, Any], list[Path]]],
    src: Path,
    out: Path,
    fmt: str,
    val_fraction: float,
    *,
    notes: tuple[tuple[str, str, str], ...] = (),
) -> dict[str, Any]:
    """`notes`: (reason, file name, detail) the report starts with."""
    names, problems = _categories([doc for doc, _ in docs.values()])
    order = sorted(names)
    builder = CocoBuilder([names[k] for k in order], val_fraction=val_fraction)
    for detail in problems:
        builder.skip("invalid_entry", detail=detail)
    for reason, file_name, detail in notes:
        builder.skip(reason, file_name=file_name, detail=detail)
    new_cat = {k: builder.category_id(names[k]) for k in order if names[k] != BACKGROUND}
    used = [im.get("id") for doc, _ in docs.values() for im in doc["images"] if _entry_ok(im)]
    next_free = max(used, default=0) + 1
    for split, (doc, roots) in docs.items():
        ids: dict[int, int] = {}
        counts = Counter(im["id"] for im in doc["images"] if _entry_ok(im))
        shared = {k for k, n in counts.items() if n > 1}
        for im in doc["images"]:
            if not _entry_ok(im):
                builder.skip("invalid_entry", detail=f"image entry {str(im)[:200]}")
                continue
            image_id, file_name = im["id"], im["file_name"]
            if image_id in shared:
                builder.skip(
                    "duplicate_image_id",
                    image_id=image_id,
                    file_name=file_name,
                    detail="several images have this id: whose are its annotations?",
                )
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
            h, w = im.get("height"), im.get("width")
            got = builder.add_image(
                path if path is not None else roots[0] / file_name,
                file_name,
                split=split,
                image_id=new_id,
                split_key=f"{image_id:012d}",
                expect_size=(h, w) if _is_int(h) and _is_int(w) else None,
            )
            if got is not None:
                ids[image_id] = got
        for a in doc["annotations"]:
            _add_annotation(builder, a, ids, new_cat, names, shared)
    summary = builder.write(out, source=str(src), fmt=fmt)
    counts = summary["splits"].values()
    if not sum(c["instances"] for c in counts) and sum(c["ignored_regions"] for c in counts):
        logger.warning(
            "%s: every annotation is a crowd (iscrowd: 1) region, which COCO tools ignore, so "
            "there is nothing to train on; mask exports (CVAT's among them) mark masks as crowd: "
            "export polygons, or set iscrowd 0 where the masks are objects",
            src,
        )
    return summary


def _categories(docs: list[dict[str, Any]]) -> tuple[dict[int, str], list[str]]:
    """{category id: name} over the files, and what was wrong with the rest."""
    names: dict[int, str] = {}
    problems = []
    for doc in docs:
        for c in doc["categories"]:
            if not (
                isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str)
            ):
                problems.append(f"category {str(c)[:200]} (needs an int id and a str name)")
            elif names.setdefault(c["id"], c["name"]) != c["name"]:
                problems.append(f"category id {c['id']} is '{names[c['id']]}' and '{c['name']}'")
    return names, problems


def _add_annotation(
    builder: CocoBuilder,
    a: Any,
    ids: dict[int, int],
    new_cat: dict[int, int],
    names: dict[int, str],
    shared: set[int],
) -> None:
    if not isinstance(a, dict):
        builder.skip("invalid_entry", detail=f"annotation {str(a)[:200]}")
        return
    image_id, cat, ann_id = a.get("image_id"), a.get("category_id"), a.get("id")
    where = f"annotation {str(ann_id)[:40]}"
    if not _is_int(image_id) or image_id not in ids:
        shared_id = _is_int(image_id) and image_id in shared
        why = "its image id is shared" if shared_id else "its image is missing or unusable"
        builder.skip(
            "unknown_image",
            image_id=image_id if _is_int(image_id) else None,
            detail=f"{where} ({why}): image_id={str(image_id)[:40]}",
        )
        return
    cid = new_cat.get(cat, 0) if _is_int(cat) else 0
    if not cid:
        background = _is_int(cat) and names.get(cat) == BACKGROUND
        reason = "background_category" if background else "unknown_category"
        detail = f"{where} category_id={str(cat)[:40]}"
        builder.skip(reason, image_id=image_id, detail=detail)
        return
    builder.add_instance(
        ids[image_id],
        cid,
        a.get("segmentation"),
        iscrowd=a.get("iscrowd") in (1, True, "1"),
        file_name=where,
    )


def _entry_ok(im: Any) -> bool:
    return isinstance(im, dict) and _is_int(im.get("id")) and isinstance(im.get("file_name"), str)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read(path: Path) -> dict[str, Any]:
    doc = read_json(path)
    if not _is_coco_doc(doc):
        raise ValueError(
            f"{path}: not a COCO instances file (needs lists 'images', 'annotations', 'categories')"
        )
    return doc


def _looks_like_coco(path: Path) -> bool:
    try:
        return _is_coco_doc(read_json(path))
    except (OSError, ValueError):
        return False


def _is_coco_doc(doc: Any) -> bool:
    return isinstance(doc, dict) and all(
        isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
    )
