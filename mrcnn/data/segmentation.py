"""Any COCO segmentation -> one validated RLE: the function the label converters
(`pipeline.formats`) and the shards reader (`mrcnn.data.coco`) share.

    segmentation_rle(segm, height, width) -> {"size": [height, width], "counts": bytes}

The result is pycocotools' compressed RLE (what `mask_utils.decode`, `area`, `toBbox` take).
`segm` may be any form COCO files and the tools writing them use:

    polygons          [[x0, y0, x1, y1, ...], ...] in pixels, one list per part
    compressed RLE    {"size": [h, w], "counts": "..."}  (str; bytes as pycocotools returns it)
    uncompressed RLE  {"size": [h, w], "counts": [n0, n1, ...]}  (COCO's `iscrowd: 1` records,
                      CVAT's mask exports)
    several RLEs      [{...}, {...}] (merged)

`size` may be left out (the image's is taken); when given it must be the image's. Nothing is
handed to pycocotools before it is checked: its C code trusts counts that add up and allocates
by polygon extent, so a bad record would otherwise read past a buffer or exhaust memory.
What cannot be used raises `SegmentationError` (a `ValueError`) whose `reason` is a skip reason
of `mrcnn.data.coco`:

    missing_segmentation  none, or neither a list nor a mapping
    empty_polygon         an empty polygon list
    invalid_polygon       fewer than 3 points, odd length, non-numbers, NaN / inf, or a vertex
                          farther than `MAX_OUTSIDE` image sides outside the image
    invalid_rle           size not the image's, counts of the wrong type, negative, not adding
                          up to height * width, or a malformed compressed string
    empty_mask            a valid segmentation that covers no pixel of the image
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

# A polygon vertex may lie outside the image (pycocotools clips), but not by more than this many
# image sides: farther is a corrupt coordinate, and rasterising it costs memory in proportion.
MAX_OUTSIDE = 1.0


class SegmentationError(ValueError):
    """A segmentation that cannot be used; `reason` names why (a skip reason), `detail` says
    where."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def segmentation_rle(segm: Any, height: int, width: int) -> dict[str, Any]:
    """One annotation's segmentation (any form above) -> a single compressed RLE at
    `height x width`, or `SegmentationError`."""
    if isinstance(segm, list) and segm and all(isinstance(p, dict) for p in segm):
        rle = mask_utils.merge([_checked_rle(p, height, width) for p in segm])
    elif isinstance(segm, list):
        if not segm:
            raise SegmentationError("empty_polygon", "no polygon")
        for poly in segm:
            check_polygon(poly, height, width)
        polys = [[float(v) for v in p] for p in segm]
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segm, dict):
        rle = _checked_rle(segm, height, width)
    elif segm is None:
        raise SegmentationError("missing_segmentation")
    else:
        raise SegmentationError("missing_segmentation", f"type {type(segm).__name__}")
    if mask_utils.area(rle) == 0:
        raise SegmentationError("empty_mask", "covers no pixel of the image")
    return rle


def check_polygon(poly: Any, height: int, width: int) -> None:
    """Raise `SegmentationError` (`empty_polygon`, `invalid_polygon`) unless `poly` is a flat
    `[x0, y0, x1, y1, ...]` list of at least 3 finite points near the image."""
    problem = polygon_problem(poly)
    if problem:
        reason = "empty_polygon" if isinstance(poly, list) and not poly else "invalid_polygon"
        raise SegmentationError(reason, problem)
    a = np.asarray(poly, dtype=np.float64)
    limit_x, limit_y = MAX_OUTSIDE * width, MAX_OUTSIDE * height
    xs, ys = a[0::2], a[1::2]
    if (
        xs.min() < -limit_x
        or xs.max() > width + limit_x
        or ys.min() < -limit_y
        or ys.max() > height + limit_y
    ):
        raise SegmentationError(
            "invalid_polygon",
            f"a vertex far outside the {width}x{height} image "
            f"(x {xs.min():.4g}..{xs.max():.4g}, y {ys.min():.4g}..{ys.max():.4g})",
        )


def polygon_problem(poly: Any) -> str:
    """Why a flat polygon cannot be used, whatever the image, or '' if it can."""
    if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
        return "not a list of numbers"
    if not all(math.isfinite(v) for v in poly):
        return "non-finite coordinate"
    if len(poly) % 2:
        return f"odd number of coordinates ({len(poly)})"
    if len(poly) < 6:
        return f"{len(poly) // 2} points (a polygon needs 3)"
    return ""


def rle_to_json(rle: dict[str, Any]) -> dict[str, Any]:
    """A compressed RLE as JSON can hold it: `{"size": [h, w], "counts": str}`."""
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def _checked_rle(segm: dict[str, Any], h: int, w: int) -> dict[str, Any]:
    """Validate an RLE mapping before pycocotools sees it -> compressed RLE."""
    size, counts = segm.get("size"), segm.get("counts")
    if size is not None and not (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(_is_int(v) for v in size)
        and (int(size[0]), int(size[1])) == (h, w)
    ):
        raise SegmentationError("invalid_rle", f"size {str(size)[:40]} is not the image's {[h, w]}")
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
            raise SegmentationError("invalid_rle", "counts are not non-negative integers")
        runs = [int(c) for c in counts]
        if sum(runs) != h * w:
            raise SegmentationError(
                "invalid_rle", f"counts add up to {sum(runs)}, not height * width = {h * w}"
            )
        return mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)
    if isinstance(counts, (str, bytes)):
        text = counts.decode("latin-1") if isinstance(counts, bytes) else counts
        decoded = _rle_string_counts(text)
        if decoded is None or min(decoded, default=0) < 0 or sum(decoded) != h * w:
            raise SegmentationError(
                "invalid_rle", "compressed counts are malformed or do not add up"
            )
        return {"size": [h, w], "counts": text.encode("ascii")}
    raise SegmentationError("invalid_rle", f"counts of type {type(counts).__name__}")


def _rle_string_counts(s: str) -> list[int] | None:
    """Decode COCO's compressed RLE string as pycocotools' `rleFrString` does; None if
    malformed (a character outside its alphabet, a run cut short)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                return None
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _is_int(v: Any) -> bool:
    """An integer, or a float holding one (some tools write counts as 12.0)."""
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and v.is_integer())


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
