"""What the converters' fuzz tests generate and check: labelled images as a tool would have drawn
them, image files in the shapes real folders hold them (and corrupt ones), and the expectation
each format's writer builds beside the files it writes (`Expect`), checked against the output.

The oracle is pycocotools: an object's expected mask is pycocotools' decoding of the polygons
the converter will read back (after the format's own rounding), at the frame the labels are in.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from hypothesis import strategies as st
from PIL import Image

from mrcnn.data.segmentation import MAX_OUTSIDE

LABELS = ("cat", "dog")
# Image files as folders hold them: colour modes, EXIF-turned JPEGs (6 and 8 swap the sides).
KINDS = ("rgb", "jpeg", "gray", "gray16", "palette", "rgba", "cmyk", "exif3", "exif6", "exif8")
BAD_FILES = ("missing", "empty", "truncated", "garbage")
BAD_FILE_REASON = {
    "missing": "missing_image",
    "empty": "corrupt_image",
    "truncated": "corrupt_image",
    "garbage": "corrupt_image",
}
# Names with spaces and beyond ASCII, as people's folders have them.
STEMS = ("img", "IMG 0001", "café", "写真", "a b  c", "ü-ß_é", "x.y")
SIDES = (1, 2, 5, 16, 23, 32)


@dataclass
class Obj:
    """One object: its class and its polygon parts (pixels, in the frame the labels use)."""

    label: str
    parts: list[list[float]]
    crowd: bool = False


@dataclass
class Img:
    name: str  # file name, suffix included
    height: int  # the frame the labels are in
    width: int
    kind: str
    objects: list[Obj]
    seed: int


@dataclass
class Expect:
    """What the converter must do with the files written.

    kept:    file name (as the output names it) -> [(label, crowd, expected RLE)] in order
    sizes:   file name -> (height, width) the output image must have
    reasons: every report entry expected, counted by reason
    error:   set when the whole run must stop with one clear error (a substring of it)
    """

    kept: dict[str, list[tuple[str, bool, dict[str, Any]]]] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    reasons: Counter = field(default_factory=Counter)
    error: str = ""  # a substring of the one error the run must end with; "" when none

    def image(self, file_name: str, size: tuple[int, int], *, turned: bool = False) -> None:
        """A kept image; `turned`: written out upright, as the labelling tool showed it (an EXIF
        kind in a format that reads the tag), which the report names `exif_orientation`."""
        self.kept.setdefault(file_name, [])
        self.sizes[file_name] = size
        self.reasons["exif_orientation"] += turned

    def instance(self, file_name: str, label: str, parts: list[list[float]], crowd=False) -> None:
        """An object whose valid parts are `parts`: kept, or `empty_mask` when they cover no
        pixel (pycocotools decides). A part with a vertex more than `MAX_OUTSIDE` image sides
        outside the image (the documented limit; YOLO pixels read as 0..1 reach it) is an
        `invalid_polygon`, and left out."""
        h, w = self.sizes[file_name]
        near = [p for p in parts if _near(p, h, w)]
        self.reasons["invalid_polygon"] += len(parts) - len(near)
        if not near:
            return
        rle = mask_utils.merge(mask_utils.frPyObjects(near, h, w))
        if mask_utils.area(rle) == 0:
            self.reasons["empty_mask"] += 1
        else:
            self.kept[file_name].append((label, crowd, rle))


def _near(part: list[float], h: int, w: int) -> bool:
    xs, ys = part[0::2], part[1::2]
    mx, my = MAX_OUTSIDE * w, MAX_OUTSIDE * h
    return min(xs) >= -mx and max(xs) <= w + mx and min(ys) >= -my and max(ys) <= h + my


@st.composite
def polygons(draw, h: int, w: int) -> list[float]:
    """A star-shaped polygon (3..8 vertices) around a point of the image, sometimes with two
    vertices swapped (self-intersecting) and reaching past the border; 2 decimals, as tools
    write them."""
    k = draw(st.integers(3, 8))
    cx, cy = draw(st.floats(0, w)), draw(st.floats(0, h))
    r = draw(st.floats(0.25, 0.5)) * max(min(h, w), 2)
    angles = sorted(draw(st.lists(st.floats(0, 2 * math.pi), min_size=k, max_size=k)))
    radii = draw(st.lists(st.floats(0.4, 1.0), min_size=k, max_size=k))
    pts = [
        [cx + r * q * math.cos(a), cy + r * q * math.sin(a)]
        for a, q in zip(angles, radii, strict=True)
    ]
    if k >= 4 and draw(st.booleans()):
        pts[0], pts[2] = pts[2], pts[0]
    return [round(v, 2) for p in pts for v in p]


@st.composite
def images(draw, *, kinds=KINDS, max_images=4, max_objects=3, max_parts=1) -> list[Img]:
    n = draw(st.integers(1, max_images))
    stems = draw(st.lists(st.sampled_from(STEMS), min_size=n, max_size=n))
    out = []
    for i, stem in enumerate(stems):
        kind = draw(st.sampled_from(kinds))
        ext = ".jpg" if kind in ("jpeg", "cmyk") or kind.startswith("exif") else ".png"
        h, w = draw(st.sampled_from(SIDES)), draw(st.sampled_from(SIDES))
        objs = [
            Obj(
                draw(st.sampled_from(LABELS)),
                [draw(polygons(h, w)) for _ in range(draw(st.integers(1, max_parts)))],
            )
            for _ in range(draw(st.integers(0, max_objects)))
        ]
        out.append(Img(f"{stem} {i}{ext}", h, w, kind, objs, i))
    return out


def encode_image(img: Img, *, upright_labels: bool) -> bytes:
    """The image file's bytes. EXIF kinds: with `upright_labels` the stored pixels are turned so
    that the picture a viewer shows (EXIF applied) is `height x width`, the frame the labels
    are in; without, the stored pixels are that frame and the tag is only a tag (COCO)."""
    rng = np.random.default_rng(img.seed)
    pixels = Image.fromarray(rng.integers(0, 256, (img.height, img.width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    if img.kind.startswith("exif"):
        tag = int(img.kind[4:])
        stored = pixels
        if upright_labels:  # what exif_transpose undoes: 3 = 180, 6 = 270, 8 = 90 (degrees)
            undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90}
            stored = pixels.transpose(undo.get(tag, Image.Transpose.ROTATE_270))
        exif = Image.Exif()
        exif[0x0112] = tag
        stored.save(buf, format="JPEG", exif=exif.tobytes())
        return buf.getvalue()
    converted = {
        "rgb": pixels,
        "jpeg": pixels,
        "gray": pixels.convert("L"),
        "gray16": Image.fromarray(rng.integers(0, 65536, (img.height, img.width), dtype=np.uint16)),
        "palette": pixels.convert("P"),
        "rgba": pixels.convert("RGBA"),
        "cmyk": pixels.convert("CMYK"),
    }[img.kind]
    fmt = "JPEG" if img.kind in ("jpeg", "cmyk") else "PNG"
    converted.save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: Path, img: Img, bad: str, *, upright_labels: bool = True) -> None:
    """Write the image (or the broken file `bad` names: missing, empty, truncated, garbage)."""
    if bad == "missing":
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode_image(img, upright_labels=upright_labels)
    data = {
        "empty": b"",
        "truncated": data[: max(1, len(data) // 2)],
        "garbage": bytes(np.random.default_rng(len(data)).integers(0, 256, 64, dtype=np.uint8)),
    }.get(bad, data)
    path.write_bytes(data)


def write_json(path: Path, doc: Any, *, bom: bool = False) -> None:
    """JSON as tools write it: NaN as the bare `NaN` Python writes, sometimes behind a BOM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + json.dumps(doc).encode())


def output_rle(segm: Any, h: int, w: int) -> dict[str, Any]:
    """An output annotation's mask as pycocotools' `COCO.annToRLE` reads it."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, h, w)
    return {"size": segm["size"], "counts": segm["counts"].encode()}


def iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    return float(mask_utils.iou([a], [b], [0])[0][0])
