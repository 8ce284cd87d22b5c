"""One writer per label format for the fuzz tests: it writes generated images in that format,
corrupting records the ways real files are corrupt (drawn by hypothesis), and returns what the
converter must make of them (`Expect`). Each writer's corruption table is the list of what is
covered; the checks come in the order the converter applies them, so each record's expected
reason is the first problem it has.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import yaml
from hypothesis import event
from hypothesis import strategies as st
from PIL import Image

from tests.pipeline.formats.fuzz_data import (
    BAD_FILE_REASON,
    BAD_FILES,
    LABELS,
    Expect,
    Img,
    encode_image,
    write_image,
    write_json,
)

OK = "ok"


def _pick(draw, *choices: str, ok: int = 3) -> str:
    """One of `choices`, or "ok" (weighted `ok` times; hypothesis shrinks towards "ok"). A
    corruption drawn is counted as an event (`--hypothesis-show-statistics` lists them)."""
    choice = draw(st.sampled_from((OK,) * ok + choices))
    if choice != OK:
        event(f"corrupted: {choice}")
    return choice


def _exif(img: Img) -> bool:
    """Whether a format that reads the EXIF tag (labelme, VIA, YOLO) turns this image."""
    return img.kind.startswith("exif")


def _bad_file(draw) -> str:
    return _pick(draw, *BAD_FILES, ok=6)


def _mask_rle(parts: list[list[float]], h: int, w: int) -> dict[str, Any]:
    return mask_utils.merge(mask_utils.frPyObjects(parts, h, w))


def _runs(rle: dict[str, Any]) -> list[int]:
    """COCO's uncompressed counts of an RLE: column-major runs, zeros first."""
    flat = mask_utils.decode(rle).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return ([0] if flat[0] else []) + runs


# A polygon part broken as files break it -> the converter's reason (polygon formats).
PART_CORRUPTIONS = ("few_points", "odd", "nan", "huge", "string")


def _break_part(part: list[float], how: str) -> list[Any]:
    if how == "few_points":
        return part[:4]
    if how == "odd":
        return part[:-1]
    i = 2 * (len(part) // 4)
    return [*part[:i], {"nan": math.nan, "huge": 1e12, "string": "12px"}[how], *part[i + 1 :]]


# ---- COCO: a COCO-layout folder, or one json + images/ ---------------------------------------

COCO_IDS = {"cat": 3, "dog": 7}
COCO_ANN = (
    ("not_dict", "invalid_entry"),
    ("no_image_id", "unknown_image"),
    ("dangling_image", "unknown_image"),
    ("list_image_id", "unknown_image"),
    ("dangling_category", "unknown_category"),
    ("list_category", "unknown_category"),
    ("no_segmentation", "missing_segmentation"),
    ("segmentation_str", "missing_segmentation"),
    ("no_polygon", "empty_polygon"),
    ("extra_keys", ""),
    ("same_id", ""),
)
RLE_CORRUPTIONS = ("rle_size", "rle_sum", "rle_negative", "rle_chars")


def write_coco(draw, src: Path, imgs: list[Img], *, single: bool) -> Expect:
    exp = Expect()
    cats: list[dict[str, Any]] = [{"id": v, "name": k} for k, v in COCO_IDS.items()]
    # The layouts tools export: the COCO one or Roboflow's (train/ valid/ with a json in each,
    # and its project category 0); one json at the top (Label Studio) or in annotations/ (CVAT).
    layout = draw(st.sampled_from(["cvat", "top"] if single else ["coco", "roboflow"]))
    event(f"coco layout: {layout}")
    if layout == "roboflow":
        cats = [{"id": 0, "name": "pets", "supercategory": "none"}] + [
            {**c, "supercategory": "pets"} for c in cats
        ]
        exp.reasons["placeholder_category"] += 1
    splits = [None] if single else ["train", "val"]
    docs = {s: {"images": [], "annotations": [], "categories": cats} for s in splits}
    first = draw(st.sampled_from([1, 0, 1000]))
    ids = [first + i for i in range(len(imgs))]
    where = [draw(st.sampled_from(splits)) for _ in imgs]
    collide = len(imgs) >= 2 and where[0] == where[1] and _pick(draw, "collide") != OK
    if collide:
        ids[1] = ids[0]
    ann_id = 0
    for i, img in enumerate(imgs):
        folder = src / "images" if single else src / where[i]
        if layout == "roboflow" and where[i] == "val":
            folder = src / "valid"
        bad = _bad_file(draw)
        write_image(folder / img.name, img, bad, upright_labels=False)  # pixels as stored
        entry: dict[str, Any] = {"id": ids[i], "file_name": img.name}
        entry_bad = _pick(draw, "no_size", "wrong_size", "no_name", "str_id", ok=6)
        entry_bad = OK if collide and i < 2 else entry_bad
        if entry_bad != "no_size":
            entry.update(height=img.height + (entry_bad == "wrong_size"), width=img.width)
        if entry_bad == "no_name":
            del entry["file_name"]
        if entry_bad == "str_id":
            entry["id"] = str(ids[i])
        docs[where[i]]["images"].append(entry)
        kept = False
        if entry_bad in ("no_name", "str_id"):
            exp.reasons["invalid_entry"] += 1
        elif collide and i < 2:
            exp.reasons["duplicate_image_id"] += 1
        else:
            exp.reasons["image_id_zero"] += ids[i] == 0
            if bad != OK:
                exp.reasons[BAD_FILE_REASON[bad]] += 1
            elif entry_bad == "wrong_size":
                exp.reasons["image_size_mismatch"] += 1
            else:
                kept = True
                exp.image(img.name, (img.height, img.width))
        for obj in img.objects:
            ann_id += 1
            ann = _coco_annotation(draw, exp, img, obj, ids[i], ann_id, kept)
            docs[where[i]]["annotations"].append(ann)
    for split, doc in docs.items():
        path = {
            "top": src / "labels.json",
            "cvat": src / "annotations" / "instances_default.json",
            "coco": src / "annotations" / f"instances_{split}.json",
            "roboflow": src / ("valid" if split == "val" else "train") / "_annotations.coco.json",
        }[layout]
        write_json(path, doc, bom=draw(st.booleans()))
    return exp


def _coco_annotation(draw, exp: Expect, img: Img, obj, image_id, ann_id, kept: bool) -> Any:
    h, w = img.height, img.width
    form = draw(st.sampled_from(["polygon", "rle", "rle_nosize", "rle_str", "rle_str_nosize"]))
    crowd = form != "polygon" and draw(st.booleans())
    ann: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": COCO_IDS[obj.label],
        "iscrowd": int(crowd),
        "bbox": [0, 0, 1, 1],
        "area": 1,
    }
    parts = [list(p) for p in obj.parts]
    if form == "polygon":
        ann["segmentation"] = parts
    else:
        rle = _mask_rle(parts, h, w)
        counts = _runs(rle) if form in ("rle", "rle_nosize") else rle["counts"].decode()
        ann["segmentation"] = {"size": [h, w], "counts": counts}
        if form.endswith("nosize"):
            del ann["segmentation"]["size"]
    table = [c for c, _ in COCO_ANN] + list(
        PART_CORRUPTIONS if form == "polygon" else RLE_CORRUPTIONS
    )
    how = _pick(draw, *table, ok=len(table))
    reason = dict(COCO_ANN).get(how, "invalid_polygon" if form == "polygon" else "invalid_rle")
    reason = "" if how == OK else reason
    segm = ann["segmentation"]
    if how == "not_dict":
        ann = "annotation"  # type: ignore[assignment]
    elif how in ("no_image_id", "no_segmentation"):
        del ann[{"no_image_id": "image_id", "no_segmentation": "segmentation"}[how]]
    elif how in ("dangling_image", "list_image_id"):
        ann["image_id"] = 99999 if how == "dangling_image" else [image_id]
    elif how in ("dangling_category", "list_category"):
        ann["category_id"] = 99 if how == "dangling_category" else [3]
    elif how == "segmentation_str":
        ann["segmentation"] = "polygon"
    elif how == "no_polygon":
        ann["segmentation"] = []
    elif how == "extra_keys":
        ann["attributes"] = {"occluded": False, "track_id": [1, 2]}
    elif how == "same_id":
        ann["id"] = 1
    elif how in PART_CORRUPTIONS:
        segm[0] = _break_part(segm[0], how)
    elif how == "rle_size":
        segm["size"] = [h + 1, w]
    elif how == "rle_sum" or how == "rle_negative":
        counts = (
            segm["counts"] if isinstance(segm["counts"], list) else _runs(_mask_rle(parts, h, w))
        )
        segm["counts"] = [*counts[:-1], counts[-1] + 1] if how == "rle_sum" else [*counts, -1, 1]
    elif how == "rle_chars":
        segm["counts"] = "!!\x7fé"
    # The converter's order: entry, image, category, then the segmentation.
    if how == "not_dict":
        exp.reasons["invalid_entry"] += 1
    elif not kept or reason == "unknown_image":
        exp.reasons["unknown_image"] += 1
    elif reason and how not in PART_CORRUPTIONS:
        exp.reasons[reason] += 1
    else:
        good = parts
        if how in PART_CORRUPTIONS:
            exp.reasons["invalid_polygon"] += 1
            good = parts[1:]
        if good:
            exp.instance(img.name, obj.label, good, crowd)
    return ann


# ---- labelme: one json per image --------------------------------------------------------------

LABELME_SHAPE = (
    ("no_label", "invalid_entry"),
    ("list_group", "invalid_entry"),
    ("not_dict", "invalid_entry"),
    ("bad_points", "invalid_polygon"),
    ("line", "unsupported_shape"),
    ("unknown_label", "unknown_category"),
    ("extra_keys", ""),
) + tuple((c, "invalid_polygon") for c in ("few_points", "nan", "huge"))


def write_labelme(draw, src: Path, imgs: list[Img]) -> Expect:
    exp = Expect()
    with_labels_txt = draw(st.booleans())
    if with_labels_txt:
        src.mkdir(parents=True, exist_ok=True)
        (src / "labels.txt").write_text("__ignore__\n_background_\ncat\ndog\n")
        exp.reasons["background_category"] += 1
    records, seen = [], set()
    for img in imgs:
        layout = draw(st.sampled_from(["beside", "windows", "embedded"]))
        bad = _bad_file(draw)
        stem = img.name.rsplit(".", 1)[0]
        if layout == "windows":
            image_path, json_path = f"..\\images\\{img.name}", src / "labels" / f"{stem}.json"
            write_image(src / "images" / img.name, img, bad)
        else:
            image_path, json_path = img.name, src / f"{stem}.json"
            if layout == "beside":
                write_image(src / img.name, img, bad)
        doc = {"version": "5.4.1", "flags": {}, "shapes": [], "imagePath": image_path}
        doc.update(imageHeight=img.height, imageWidth=img.width, imageData=None)
        if layout == "embedded" and bad != "missing":
            data = encode_image(img, upright_labels=True)
            data = {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\0" * 9}.get(
                bad, data
            )
            doc["imageData"] = base64.b64encode(data).decode()
        size_bad = _pick(draw, "no_size", "wrong_size", ok=6)
        if size_bad == "no_size":
            del doc["imageHeight"], doc["imageWidth"]
        elif size_bad == "wrong_size":
            doc["imageHeight"] = img.height + 1
        doc_bad = _pick(draw, "empty_json", "truncated_json", "no_shapes", "shapes_str", ok=8)
        name = f"images/{img.name}" if layout == "windows" else img.name
        records.append((img, doc, json_path, name, layout, bad, size_bad, doc_bad))
    objects = []
    for img, doc, *_, doc_bad in records:
        objs, labels = _labelme_shapes(draw, doc, img, with_labels_txt)
        objects.append(objs)
        seen |= labels if doc_bad == OK else set()  # the classes the converter will see
    names = ["cat", "dog"] if with_labels_txt else sorted(seen - {"__ignore__"})
    for record, objs in zip(records, objects, strict=True):
        img, doc, json_path, name, layout, bad, size_bad, doc_bad = record
        if doc_bad == "empty_json":
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_bytes(b"")
        elif doc_bad == "truncated_json":
            write_json(json_path, doc)
            json_path.write_bytes(json_path.read_bytes()[:-7])
        else:
            if doc_bad == "no_shapes":
                del doc["shapes"]
            elif doc_bad == "shapes_str":
                doc["shapes"] = "none"
            write_json(json_path, doc, bom=draw(st.booleans()))
        if doc_bad != OK:
            exp.reasons["invalid_entry"] += 1
            continue
        if layout == "embedded" and bad == "empty":
            bad = "missing"  # empty imageData is no imageData
        if bad != OK:
            exp.reasons[BAD_FILE_REASON[bad]] += 1
        elif size_bad == "wrong_size":
            exp.reasons["image_size_mismatch"] += 1
        else:
            exp.image(name, (img.height, img.width), turned=_exif(img))
            for label, parts, reasons in objs:
                exp.reasons.update(reasons)
                if not parts:
                    continue
                if label == "__ignore__":
                    _ignore(exp, name, parts, names)
                else:
                    exp.instance(name, label, parts)
    return exp


def _ignore(exp: Expect, name: str, parts: list[list[float]], names: list[str]) -> None:
    """An `__ignore__` region: one crowd annotation per class, or one `empty_mask`."""
    h, w = exp.sizes[name]
    rle = _mask_rle(parts, h, w)
    if mask_utils.area(rle) == 0:
        exp.reasons["empty_mask"] += 1
        return
    for label in names:
        exp.kept[name].append((label, True, rle))


def _labelme_shapes(draw, doc, img: Img, labels_txt: bool) -> tuple[list, set[str]]:
    """Append the shapes of `img`'s objects to `doc` -> ([(label, valid parts, reasons)] per
    object, for when the image is kept; the labels the shapes carry)."""
    out, seen = [], set()
    table = [c for c, _ in LABELME_SHAPE if labels_txt or c != "unknown_label"]
    for n, obj in enumerate(img.objects):
        label = "__ignore__" if _pick(draw, "ignore", ok=5) != OK else obj.label
        group = n + 1 if len(obj.parts) > 1 else draw(st.sampled_from([None, 100 + n]))
        parts, reasons = [], {}
        for part in obj.parts:
            how = _pick(draw, *table, ok=len(table))
            shape: Any = {"label": label, "points": _pairs(part), "group_id": group}
            shape.update(shape_type="polygon", flags={}, description="")
            if how == "no_label":
                del shape["label"]
            elif how == "list_group":
                shape["group_id"] = [group]
            elif how == "not_dict":
                shape = 5
            elif how == "bad_points":
                shape["points"] = "12,13 14,15"
            elif how == "line":
                shape["shape_type"] = "line"
            elif how == "unknown_label":
                shape["label"] = "horse"
            elif how == "extra_keys":
                shape["mask"] = None
            elif how != OK:
                shape["points"] = _pairs(_break_part(part, how))
            if isinstance(shape, dict) and isinstance(shape.get("label"), str):
                seen.add(shape["label"])
            reason = dict(LABELME_SHAPE).get(how, "")
            if reason:
                reasons[reason] = reasons.get(reason, 0) + 1
            else:
                parts.append(part)
            doc["shapes"].append(shape)
        if reasons.get("unknown_category", 0) > 1:  # parts of one group, one unknown instance
            reasons["unknown_category"] = 1
        out.append((label, parts, reasons))
    return out, seen


def _pairs(flat: list[Any]) -> list[list[Any]]:
    return [flat[i : i + 2] for i in range(0, len(flat) - 1, 2)] + (
        [[flat[-1]]] if len(flat) % 2 else []
    )


# ---- VIA: a project json (one, or train/ and val/) ---------------------------------------------

VIA_REGION = (
    ("not_dict", "invalid_entry"),
    ("no_shape", "invalid_entry"),
    ("xy_lengths", "invalid_polygon"),
    ("point", "unsupported_shape"),
    ("rect_no_width", "invalid_polygon"),
    ("extra_keys", ""),
) + tuple((c, "invalid_polygon") for c in PART_CORRUPTIONS)


def write_via(draw, src: Path, imgs: list[Img]) -> Expect:
    exp = Expect()
    split_layout = draw(st.booleans())
    projects: dict[Any, dict[str, Any]] = {}
    for img in imgs:
        split = draw(st.sampled_from(["train", "val"])) if split_layout else None
        folder = src / split if split else src
        bad = _bad_file(draw)
        write_image(folder / img.name, img, bad)
        entry_bad = _pick(draw, "no_filename", "regions_str", "not_dict", ok=8)
        regions: Any = []
        entry: Any = {"filename": img.name, "size": 1234, "regions": regions, "file_attributes": {}}
        if entry_bad == "no_filename":
            del entry["filename"]
        elif entry_bad == "regions_str":
            entry["regions"] = "none"
        elif entry_bad == "not_dict":
            entry = [img.name]
        projects.setdefault(split, {})[f"{img.name}1234"] = entry
        kept = entry_bad == OK and bad == OK
        if entry_bad != OK:
            exp.reasons["invalid_entry"] += 1
        elif bad != OK:
            exp.reasons[BAD_FILE_REASON[bad]] += 1
        else:
            exp.image(img.name, (img.height, img.width), turned=_exif(img))
        for obj in img.objects:
            part = [float(round(v)) for v in obj.parts[0]]  # VIA writes whole pixels
            rect = draw(st.booleans())
            xs, ys = part[0::2], part[1::2]
            sa: dict[str, Any] = {"name": "polygon", "all_points_x": xs, "all_points_y": ys}
            if rect:
                x, y = min(xs), min(ys)
                sa = {"name": "rect", "x": x, "y": y, "width": max(xs) - x, "height": max(ys) - y}
                part = [x, y, max(xs), y, max(xs), max(ys), x, max(ys)]
            table = [c for c, _ in VIA_REGION if not rect or c not in PART_CORRUPTIONS]
            how = _pick(draw, *table, ok=len(table))
            region: Any = {"shape_attributes": sa, "region_attributes": {"animal": obj.label}}
            if how == "not_dict":
                region = "region"
            elif how == "no_shape":
                del region["shape_attributes"]
            elif how == "xy_lengths":
                region["shape_attributes"] = {**sa, "name": "polygon", "all_points_x": [1, 2, 3]}
                region["shape_attributes"]["all_points_y"] = [1, 2]
            elif how == "point":
                region["shape_attributes"] = {"name": "point", "cx": 1, "cy": 1}
            elif how == "rect_no_width":
                region["shape_attributes"] = {"name": "rect", "x": 1, "y": 1, "height": 2}
            elif how == "extra_keys":
                region["shape_attributes"]["color"] = "#ff0000"
            elif how in PART_CORRUPTIONS:
                broken = _break_part(part, how)
                sa["all_points_x"], sa["all_points_y"] = broken[0::2], broken[1::2]
                if how == "odd":  # lists of different lengths
                    sa["all_points_y"] = sa["all_points_y"][:-1]
            if isinstance(entry, dict) and isinstance(entry.get("regions"), list):
                regions.append(region)
            if not kept:
                continue
            reason = dict(VIA_REGION).get(how, "")
            if reason:
                exp.reasons[reason] += 1
            else:
                exp.instance(img.name, obj.label, [part])
    for split, meta in projects.items():
        folder = src / split if split else src
        write_json(folder / "via_region_data.json", meta, bom=draw(st.booleans()))
    return exp


# ---- YOLO-seg: images/ + labels/ + data.yaml or classes.txt ------------------------------------

YOLO_LINE = (
    ("few_points", "invalid_polygon"),
    ("odd", "invalid_polygon"),
    ("nan", "invalid_polygon"),
    ("huge", "invalid_polygon"),
    ("string", "invalid_entry"),
    ("box", "unsupported_shape"),
    ("bad_class", "unknown_category"),
)


def write_yolo(draw, src: Path, imgs: list[Img]) -> Expect:
    exp = Expect()
    layout = draw(st.sampled_from(["ultralytics", "roboflow", "flat"]))
    src.mkdir(parents=True, exist_ok=True)
    if layout == "flat":
        (src / "classes.txt").write_text("cat\ndog\n")
    else:
        val = "valid" if layout == "roboflow" else "val"
        names: Any = list(LABELS) if draw(st.booleans()) else dict(enumerate(LABELS))
        doc = {"names": names, "nc": 2}
        if layout == "roboflow":
            doc.update(train="../train/images", val="../valid/images", test="../test/images")
        else:
            doc.update(path=".", train="images/train", val="images/val")
        (src / "data.yaml").write_text(yaml.safe_dump(doc))
        for s in ("train", val):
            folder = src / s / "images" if layout == "roboflow" else src / "images" / s
            folder.mkdir(parents=True, exist_ok=True)
    for img in imgs:
        if layout == "flat":
            image_dir = src / "images"
        else:
            split = draw(st.sampled_from(["train", "valid" if layout == "roboflow" else "val"]))
            image_dir = src / split / "images" if layout == "roboflow" else src / "images" / split
        label_dir = Path(str(image_dir).replace("images", "labels"))
        bad = _bad_file(draw)
        write_image(image_dir / img.name, img, bad)
        label = label_dir / (img.name.rsplit(".", 1)[0] + ".txt")
        _yolo_labels(draw, exp, img, label, bad)
    if not any("labels" in t.relative_to(src).parts[:-1] for t in src.rglob("*.txt")):
        exp.error = "cannot tell the label format"  # no label file: nothing says it is YOLO
    return exp


def _yolo_labels(draw, exp: Expect, img: Img, label: Path, bad: str) -> None:
    h, w = img.height, img.width
    file_bad = _pick(draw, "no_label", "not_text", "empty", ok=8)
    pixels = draw(st.booleans())
    lines, outcomes = [], []
    for obj in img.objects:
        how = _pick(draw, *(c for c, _ in YOLO_LINE), ok=len(YOLO_LINE))
        cls = LABELS.index(obj.label) if how != "bad_class" else 7
        coords = [v if pixels else v / (w if i % 2 == 0 else h) for i, v in enumerate(obj.parts[0])]
        fields = [f"{v:.2f}" if pixels else f"{v:.6f}" for v in coords]
        if how in ("few_points", "odd", "box"):
            fields = fields[: {"few_points": 2, "odd": len(fields) - 1, "box": 4}[how]]
        elif how in ("nan", "huge", "string"):
            fields[2] = {"nan": "nan", "huge": "1e12", "string": "x"}[how]
        lines.append(" ".join([str(cls), *fields]))
        outcomes.append((obj.label, dict(YOLO_LINE).get(how, ""), fields))
    # The documented rule: a file whose parsed, finite coordinates are mostly beyond 1 (1.01) is
    # in pixels. The expectation follows the rule, not what was written: pixels on a tiny image
    # (all <= 1) are read as 0..1, and the masks expected are those.
    finite = [v for ln in lines if (vs := _numbers(ln)) for v in vs if math.isfinite(v)]
    in_pixels = sum(v > 1.01 for v in finite) > len(finite) / 2
    event(
        f"yolo file: {'pixels' if pixels else 'normalised'}, read as "
        f"{'pixels' if in_pixels else 'normalised'}"
    )
    if file_bad != "no_label":
        label.parent.mkdir(parents=True, exist_ok=True)
        text = "\r\n".join(lines) if draw(st.booleans()) else "\n".join(lines) + "\n"
        bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
        data = {"empty": b"", "not_text": b"0 \xff\xfe 0.5\n"}.get(file_bad, bom + text.encode())
        label.write_bytes(data)
    if bad == "missing":  # the label file names an image that is not there
        exp.reasons["missing_image"] += file_bad != "no_label"
        return
    if bad != OK:
        exp.reasons[BAD_FILE_REASON[bad]] += 1
        return
    exp.image(img.name, (h, w), turned=_exif(img))
    if file_bad in ("no_label", "not_text"):
        exp.reasons["missing_label" if file_bad == "no_label" else "invalid_entry"] += 1
        return
    if file_bad == "empty":
        return  # an image without objects, as Ultralytics reads it
    exp.reasons["pixel_coordinates"] += in_pixels
    for name, reason, fields in outcomes:
        if reason:
            exp.reasons[reason] += 1
            continue
        scale = [1.0, 1.0] if in_pixels else [w, h]
        exp.instance(img.name, name, [[float(f) * scale[i % 2] for i, f in enumerate(fields)]])


def _numbers(line: str) -> list[float] | None:
    """A label line's coordinates as the converter parses them, or None for a line it cannot."""
    fields = line.split()
    try:
        int(fields[0])
        return [float(v) for v in fields[1:]]
    except (ValueError, IndexError):
        return None


# ---- masks: an image folder and a folder of instance-id masks ---------------------------------

COLOURS = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 90, 200), (9, 9, 9)]


def write_masks(draw, src: Path, imgs: list[Img]) -> Expect:
    exp = Expect()
    image_dir, mask_dir = draw(st.sampled_from([("PNGImages", "PedMasks"), ("images", "masks")]))
    suffix = draw(st.sampled_from(["_mask", ""]))
    (src / mask_dir).mkdir(parents=True)
    (src / image_dir).mkdir(parents=True)
    for img in imgs:
        h, w = img.height, img.width
        bad = _bad_file(draw)
        write_image(src / image_dir / img.name, img, bad, upright_labels=False)
        mode = draw(st.sampled_from(["L", "P", "I;16", "RGB"]))
        event(f"mask mode: {mode}")
        ids = np.zeros((h, w), np.int64)
        for k, obj in enumerate(img.objects, 1):
            ids[mask_utils.decode(_mask_rle(obj.parts, h, w)) > 0] = k
        if mode == "P" and h > 2:
            ids[0, :] = 255  # VOC's void border: not an instance
        mask_bad = _pick(draw, "no_mask", "wrong_size", "truncated", ok=6)
        path = src / mask_dir / (img.name.rsplit(".", 1)[0] + suffix + ".png")
        if mask_bad != "no_mask":
            _save_mask(path, ids, mode, grow=mask_bad == "wrong_size")
            if mask_bad == "truncated":
                path.write_bytes(path.read_bytes()[:40])
        if bad == "missing":
            exp.reasons["missing_image"] += mask_bad != "no_mask"  # a mask without its image
        elif mask_bad == "no_mask":
            exp.reasons["missing_mask"] += 1
        elif mask_bad == "truncated" or bad != OK:
            exp.reasons["corrupt_image"] += 1
        elif mask_bad == "wrong_size":
            exp.reasons["image_size_mismatch"] += 1
        else:
            exp.image(img.name, (h, w))
            keys = [k for k in range(1, len(img.objects) + 1) if (ids == k).any()]
            if mode == "RGB":  # instances come in the order of their colours' values
                keys.sort(
                    key=lambda k: (
                        COLOURS[k - 1][0] << 16 | COLOURS[k - 1][1] << 8 | COLOURS[k - 1][2]
                    )
                )
            for k in keys:
                exp.kept[img.name].append(
                    ("object", False, mask_utils.encode(np.asfortranarray(ids == k, np.uint8)))
                )
    if _pick(draw, "orphan", ok=4) != OK:
        _save_mask(src / mask_dir / f"orphan{suffix}.png", np.ones((3, 3), np.int64), "L")
        exp.reasons["missing_image"] += 1
    return exp


def _save_mask(path: Path, ids: np.ndarray, mode: str, grow: bool = False) -> None:
    if grow:
        ids = np.concatenate([ids, np.zeros((1, ids.shape[1]), ids.dtype)])
    if mode == "RGB":
        rgb = np.zeros((*ids.shape, 3), np.uint8)
        for k, colour in enumerate(COLOURS, 1):
            rgb[ids == k] = colour
        Image.fromarray(rgb).save(path)
    elif mode == "I;16":
        Image.fromarray((ids * 300).astype(np.uint16)).save(path)
    elif mode == "P":
        im = Image.fromarray(ids.astype(np.uint8), mode="P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
        im.save(path)
    else:
        Image.fromarray(ids.astype(np.uint8)).save(path)
