"""The files of a labelled folder: label files read whatever their encoding mishaps (a byte-order
mark, not UTF-8, not JSON: one `ValueError` naming the file), and images found, checked, and
turned upright when the labels were drawn on the upright picture.

Every image is decoded in full with the project's one decoder (`mrcnn.data.image_file.probe`),
so a file that converts also shards. EXIF orientation: COCO's tools read the pixels as stored,
while labelme, VIA (a browser) and Ultralytics show, and so label, the picture turned by its
EXIF tag. `decode_for_labels` takes which one the format means (`orient`) and the size the
labels say (`expect`: COCO's height / width, labelme's imageHeight / imageWidth, a mask's size)
and writes the turned picture out when that is the frame the labels are in (reported as a
change, `exif_orientation`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from mrcnn.data.image_file import IMAGE_SUFFIXES, ImageReadError, probe, read_image


@dataclass(frozen=True)
class LabelImage:
    """An image as the labels see it.

    height, width: the frame the labels are in
    data:          the upright picture, encoded (its suffix's format), when it had to be turned;
                   None: the file is used as it is
    """

    height: int
    width: int
    data: bytes | None = None


def decode_for_labels(
    source: Path | bytes,
    name: str,
    *,
    orient: bool = False,
    expect: tuple[int, int] | None = None,
) -> LabelImage:
    """Decode `source` -> the frame the labels are in. Raises `ImageReadError` whose `reason`
    is `missing_image`, `corrupt_image` or `image_size_mismatch` (`expect` fits neither the
    stored nor the upright size).

    orient: the format's tool shows the picture turned by its EXIF tag (labelme, VIA, YOLO)
    expect: (height, width) the labels give; it decides when it tells the two frames apart
    """
    info = probe(source, name)
    stored, upright = (info.height, info.width), info.oriented_size
    frames = [upright, stored] if orient else [stored, upright]
    turn = [info.orientation != 1, False] if orient else [False, info.orientation != 1]
    if expect is None:
        use = 0
    elif expect in frames:
        use = frames.index(expect)
    else:
        raise ImageReadError(
            f"{name}: the labels say {expect[0]}x{expect[1]} (h x w), the file is "
            f"{stored[0]}x{stored[1]}",
            "image_size_mismatch",
        )
    if not turn[use]:
        return LabelImage(*stored)
    pixels = read_image(source, name, orient=True)
    buf = io.BytesIO()
    if PurePosixPath(name).suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    else:
        Image.fromarray(pixels).save(buf, format="PNG")
    return LabelImage(pixels.shape[0], pixels.shape[1], buf.getvalue())


def name_problem(file_name: str) -> str:
    """Why `file_name` cannot be written under a split folder ('' if it can): it must be a
    relative, '/'-separated path that stays inside it."""
    if not file_name or "\0" in file_name:
        return "empty file name" if not file_name else "a NUL in the file name"
    p = PurePosixPath(file_name)
    if p.is_absolute() or ".." in p.parts or p.parts[:1] == ("~",):
        return f"{file_name!r} points outside the dataset folder"
    return ""


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder` (recursive), sorted; hidden ones left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def read_text(path: Path) -> str:
    """A label file's text: UTF-8, a byte-order mark dropped (Windows tools write one).
    `ValueError` naming the file when it is not text; `OSError` when it cannot be read."""
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_json(path: Path) -> Any:
    """A JSON label file (`read_text`); `ValueError` naming the file when it is not JSON."""
    text = read_text(path)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({str(e)[:200]})") from None
