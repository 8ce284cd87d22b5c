"""COCO-format annotations -> validated image records, and one record -> instance masks.

Nothing here raises on a bad record: every image or annotation that cannot be used becomes a
`Skip` with a reason (one of the names below), so the shard report can count them and nothing
is dropped silently. Reasons:

    image level (the whole image is left out)
        invalid_image_entry    image entry without an int id / file_name
        duplicate_image_id     a second image entry with an id already seen
        missing_image          the file does not exist
        corrupt_image          the file cannot be decoded (truncated, not an image, too large)
        image_size_mismatch    decoded size differs from the entry's height / width
        no_annotations         no annotations at all (unless negatives are kept)
        no_valid_annotations   annotations, but none usable (unless negatives are kept)
        unexpected_error       anything else that went wrong (logged with its traceback)
    annotation level (the instance is left out, the image stays)
        invalid_annotation_entry  not a mapping / no int id
        unknown_image          image_id not among the images
        unknown_category       category_id not among the categories
        missing_segmentation   no segmentation, or neither a list nor a mapping
        empty_polygon          a polygon list that is empty (or holds an empty polygon)
        invalid_polygon        odd length, < 3 points, non-numbers, NaN, far outside the image
        invalid_rle            RLE of another size, or counts malformed / not adding up
        zero_area_box          the annotation's bbox has width or height <= 0
        box_outside_image      the annotation's bbox lies entirely outside the image
        empty_mask             the segmentation covers no pixel of the image
        box_too_small          after resizing, the box is thinner than `min_box_size`
        invalid_keypoints      keypoints that are not [x, y, v] * K numbers, or whose K differs
                               from the image's other annotations

The segmentation checks (missing_segmentation .. invalid_rle, empty_mask) are those of
`mrcnn.data.segmentation.segmentation_rle`, which the label converters (`pipeline.formats`)
share: polygons, compressed and uncompressed RLE, with or without `size`.

Keypoints (COCO `person_keypoints_*.json`: `"keypoints": [x1, y1, v1, ...]` per annotation,
v = 0 unlabelled, 1 labelled but occluded, 2 visible) are kept as float [N, K, 3] in the same
pixel frame as the boxes; an annotation without them in an image whose others have them gets K
unlabelled keypoints.

Images that are not 8-bit RGB are converted, not skipped, and noted with a reason
(`mrcnn.data.image_file.load_rgb`). Crowd annotations
(`iscrowd=1`) never become training targets; their boxes are kept beside the sample, one per
region: COCO writes an ignored region as one crowd annotation per category (COCOeval ignores
only the detections of a crowd's own category), so the copies of one region (same geometry on
the same image) are one box here and one region in every count (`count_annotations`).

Boxes are computed from the masks (pycocotools `toBbox` on the RLE: tight, x2/y2 exclusive, the
`boxes_from_masks` convention), never taken from the annotation's bbox.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from mrcnn.data.segmentation import SegmentationError, segmentation_rle


@dataclass
class ImageRecord:
    """One image entry and its (entry-level valid) annotations, as in the COCO json."""

    image_id: int
    file_name: str
    height: int | None
    width: int | None
    annotations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Skip:
    """A record left out, and why."""

    reason: str
    image_id: int | None = None
    annotation_id: int | None = None
    file_name: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


@dataclass
class CocoSplit:
    """A parsed annotation file: records sorted by image id, categories sorted by id."""

    records: list[ImageRecord]
    categories: list[dict[str, Any]]
    skipped: list[Skip]
    num_images: int
    num_annotations: int  # entries in the file, crowd copies included
    num_instances: int = 0  # non-crowd annotations (`count_annotations`)
    num_ignored_regions: int = 0  # crowd regions, each counted once


@dataclass
class Instances:
    """One image's usable instances, in the original image frame.

    rles:         N pycocotools RLEs (non-crowd)
    boxes:        float64 [N, 4] tight xyxy from the masks (x2/y2 exclusive)
    category_ids: int64 [N]
    annotation_ids: int64 [N]
    crowd_boxes:  float64 [C, 4] boxes of crowd regions (not targets)
    keypoints:    float64 [N, K, 3] (x, y, visibility), or None when no annotation has any
    """

    rles: list[dict[str, Any]]
    boxes: np.ndarray
    category_ids: np.ndarray
    annotation_ids: np.ndarray
    crowd_boxes: np.ndarray
    keypoints: np.ndarray | None = None


def load_coco_split(ann_file: str | Path) -> CocoSplit:
    """Parse a COCO instances json; entry-level problems become `Skip`s.

    A file that is not valid JSON or lacks `images` / `annotations` / `categories` raises
    `ValueError` (that is not a bad record but a wrong input).
    """
    with open(ann_file, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is no error
        try:
            doc = json.load(f)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"{ann_file}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise ValueError(
            f"{ann_file}: not a COCO instances file (needs lists 'images', "
            "'annotations', 'categories')"
        )
    categories = validate_categories(doc["categories"], str(ann_file))
    cat_ids = {c["id"] for c in categories}
    skipped: list[Skip] = []
    records: dict[int, ImageRecord] = {}
    for entry in doc["images"]:
        image_id = entry.get("id") if isinstance(entry, dict) else None
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        if not _is_int(image_id) or not isinstance(file_name, str) or not file_name:
            skipped.append(Skip("invalid_image_entry", detail=repr(entry)[:200]))
            continue
        if image_id in records:
            skipped.append(Skip("duplicate_image_id", image_id, file_name=file_name))
            continue
        h, w = entry.get("height"), entry.get("width")
        records[image_id] = ImageRecord(
            image_id, file_name, h if _is_int(h) else None, w if _is_int(w) else None
        )
    for ann in doc["annotations"]:
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            skipped.append(Skip("invalid_annotation_entry", detail=repr(ann)[:200]))
            continue
        image_id, ann_id = ann.get("image_id"), ann["id"]
        if not _is_int(image_id) or image_id not in records:
            skipped.append(Skip("unknown_image", image_id if _is_int(image_id) else None, ann_id))
        elif not _is_int(ann.get("category_id")) or ann["category_id"] not in cat_ids:
            skipped.append(
                Skip(
                    "unknown_category",
                    image_id,
                    ann_id,
                    detail=f"category_id={ann.get('category_id')!r}",
                )
            )
        else:
            records[image_id].annotations.append(ann)
    return CocoSplit(
        records=[records[k] for k in sorted(records)],
        categories=categories,
        skipped=skipped,
        num_images=len(doc["images"]),
        num_annotations=len(doc["annotations"]),
        **{f"num_{k}": v for k, v in count_annotations(doc["annotations"]).items()},
    )


def count_annotations(annotations: Iterable[Any]) -> dict[str, int]:
    """COCO annotations -> {"instances": non-crowd ones, "ignored_regions": crowd regions},
    what a user is told. The crowd annotations of one image with the same geometry are one
    region: an ignored region (labelme's `__ignore__`) is written as one crowd annotation per
    category, since COCOeval ignores only the detections of a crowd's own category, so K
    annotations stand for one region. Entries that are not mappings are not counted."""
    instances, regions = 0, set()
    for a in annotations:
        if not isinstance(a, dict):
            continue
        if a.get("iscrowd"):
            regions.add((repr(a.get("image_id")), _geometry_key(a)))
        else:
            instances += 1
    return {"instances": instances, "ignored_regions": len(regions)}


def _geometry_key(ann: dict[str, Any]) -> str:
    """The segmentation (else the bbox) of an annotation as a canonical string."""
    seg = ann.get("segmentation", ann.get("bbox"))
    try:
        return json.dumps(seg, sort_keys=True)
    except (TypeError, ValueError):
        return repr(seg)


def validate_categories(categories: list[Any], where: str) -> list[dict[str, Any]]:
    """Categories sorted by id; malformed or duplicate ids raise `ValueError`."""
    seen: dict[int, str] = {}
    for c in categories:
        if (
            not isinstance(c, dict)
            or not _is_int(c.get("id"))
            or not isinstance(c.get("name"), str)
        ):
            raise ValueError(f"{where}: malformed category {c!r} (needs int id and str name)")
        if c["id"] in seen:
            raise ValueError(f"{where}: duplicate category id {c['id']}")
        seen[c["id"]] = c["name"]
    return [{"id": k, "name": seen[k]} for k in sorted(seen)]


def class_map(category_lists: list[list[dict[str, Any]]]) -> list[tuple[int, str]]:
    """Union of the splits' categories, sorted by id -> [(category_id, name)], where contiguous
    label `i + 1` is entry `i` (label 0 = background). Conflicting names raise `ValueError`."""
    names: dict[int, str] = {}
    for cats in category_lists:
        for c in cats:
            if names.setdefault(c["id"], c["name"]) != c["name"]:
                raise ValueError(
                    f"category {c['id']} is '{names[c['id']]}' in one split and "
                    f"'{c['name']}' in another"
                )
    return [(k, names[k]) for k in sorted(names)]


def decode_instances(record: ImageRecord, height: int, width: int) -> tuple[Instances, list[Skip]]:
    """Validate and rasterise one image's annotations (RLE, not pixels) at `height x width`."""
    rles, boxes, cats, ann_ids, crowd, kps = [], [], [], [], [], []
    skipped: list[Skip] = []
    num_kp = _keypoint_count(record.annotations)
    for ann in record.annotations:
        try:
            rle = _annotation_rle(ann, height, width)
            kp = _annotation_keypoints(ann, num_kp)
        except _BadAnnotation as e:
            skipped.append(Skip(e.reason, record.image_id, ann["id"], record.file_name, e.detail))
            continue
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        box = [x, y, x + w, y + h]
        if ann.get("iscrowd"):
            if box not in crowd:  # one region's copies (one per category): one box
                crowd.append(box)
        else:
            rles.append(rle)
            boxes.append(box)
            cats.append(int(ann["category_id"]))
            ann_ids.append(int(ann["id"]))
            kps.append(kp)
    return (
        Instances(
            rles=rles,
            boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            category_ids=np.asarray(cats, dtype=np.int64),
            annotation_ids=np.asarray(ann_ids, dtype=np.int64),
            crowd_boxes=np.asarray(crowd, dtype=np.float64).reshape(-1, 4),
            keypoints=(
                np.asarray(kps, dtype=np.float64).reshape(-1, num_kp, 3) if num_kp else None
            ),
        ),
        skipped,
    )


def _keypoint_count(annotations: list[dict[str, Any]]) -> int:
    """K of an image's keypoint annotations: the most common length / 3, the first annotation's
    on a tie (0 if none has any)."""
    counts = Counter(
        len(a["keypoints"]) // 3 for a in annotations if isinstance(a.get("keypoints"), list)
    )
    return counts.most_common(1)[0][0] if counts else 0


def _annotation_keypoints(ann: dict[str, Any], k: int) -> np.ndarray | None:
    """An annotation's keypoints as float [K, 3] (zeros if it has none), or `_BadAnnotation`."""
    if not k:
        return None
    kp = ann.get("keypoints")
    if kp is None:
        return np.zeros((k, 3))
    if not (isinstance(kp, list) and len(kp) == 3 * k and all(_is_number(v) for v in kp)):
        n = len(kp) if isinstance(kp, list) else type(kp).__name__
        raise _BadAnnotation("invalid_keypoints", f"{n} values, expected {3 * k} (x, y, v) * K")
    out = np.asarray(kp, dtype=np.float64).reshape(k, 3)
    if not np.isfinite(out).all() or not np.isin(out[:, 2], (0, 1, 2)).all():
        raise _BadAnnotation("invalid_keypoints", "non-finite values or visibility not 0/1/2")
    return out


def group_reasons(skips: list[Skip]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for s in skips:
        counts[s.reason] += 1
    return dict(sorted(counts.items()))


class _BadAnnotation(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _annotation_rle(ann: dict[str, Any], h: int, w: int) -> dict[str, Any]:
    """One annotation -> a single RLE at h x w, or `_BadAnnotation`."""
    bbox = ann.get("bbox")
    if bbox is not None:
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise _BadAnnotation("invalid_annotation_entry", f"bbox={bbox!r}")
        bx, by, bw, bh = bbox
        if bw <= 0 or bh <= 0:
            raise _BadAnnotation("zero_area_box", f"bbox={bbox!r}")
        if bx >= w or by >= h or bx + bw <= 0 or by + bh <= 0:
            raise _BadAnnotation("box_outside_image", f"bbox={bbox!r} image={w}x{h}")
    try:
        return segmentation_rle(ann.get("segmentation"), h, w)
    except SegmentationError as e:
        raise _BadAnnotation(e.reason, e.detail) from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
