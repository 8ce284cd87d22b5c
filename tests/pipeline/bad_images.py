"""Image files as users' folders hold them, good and bad, for the predict tests (issue 23):
`image_kinds` writes every kind that must be read, `corruptions` every way a file is broken,
`damaged_folder` a seeded mix of both."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def encode(pixels: np.ndarray, fmt: str, mode: str = "RGB", **kw) -> bytes:
    """`pixels` (uint8 [H, W, 3]) as a `fmt` file in Pillow `mode` (RGB, L, P, CMYK, RGBA,
    I;16, 1)."""
    im = Image.fromarray(pixels)
    if mode == "I;16":
        im = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    elif mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def image_kinds(pixels: np.ndarray) -> dict[str, bytes]:
    """name -> bytes of every kind predict must read (upright size == pixels' unless EXIF)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees
    return {
        "rgb.jpg": encode(pixels, "JPEG"),
        "cmyk.jpg": encode(pixels, "JPEG", "CMYK"),
        "grey.png": encode(pixels, "PNG", "L"),
        "palette.png": encode(pixels, "PNG", "P"),
        "deep16.png": encode(pixels, "PNG", "I;16"),
        "alpha.png": encode(pixels, "PNG", "RGBA"),
        "bilevel.png": encode(pixels, "PNG", "1"),
        "exif rotated.jpg": encode(pixels, "JPEG", exif=exif),
        "one pixel.png": encode(pixels[:1, :1], "PNG"),
        "名前 with spaces é.png": encode(pixels, "PNG"),
    }


def corruptions(good_jpeg: bytes, good_png: bytes) -> dict[str, Callable[[random.Random], bytes]]:
    """reason -> a maker of a broken file's bytes (seeded)."""

    def cut(data: bytes) -> Callable[[random.Random], bytes]:
        return lambda rng: data[: rng.randrange(1, len(data) // 2)]

    def flip(data: bytes) -> Callable[[random.Random], bytes]:
        def made(rng: random.Random) -> bytes:
            out = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
            return bytes(out)

        return made

    return {
        "truncated_jpeg": cut(good_jpeg),
        "truncated_png": cut(good_png),
        "header_only_png": lambda rng: good_png[:33],
        "empty": lambda rng: b"",
        "text": lambda rng: b"this is a text file named like an image\n",
        "flipped_png_header": lambda rng: (
            good_png[:16] + bytes([good_png[16] ^ 0xFF]) + good_png[17:]
        ),
        "zero_tail_jpeg": lambda rng: good_jpeg[: len(good_jpeg) // 3] + bytes(len(good_jpeg)),
        "random_bytes": lambda rng: bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))),
        "html": lambda rng: b"<html><body>404 Not Found</body></html>",
        "flipped_png": flip(good_png),
        "flipped_jpeg": flip(good_jpeg),
    }


def damaged_folder(folder: Path, pixels: np.ndarray, seed: int = 0) -> tuple[list, list]:
    """Every good kind and every corruption (as .jpg / .png) in `folder` -> (good names, bad
    names that cannot be read); flipped bytes may still decode and then count as good."""
    from mrcnn.data.image_file import ImageReadError, read_image

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in image_kinds(pixels).items():
        (folder / name).write_bytes(data)
    jpeg, png = encode(pixels, "JPEG"), encode(pixels, "PNG")
    for i, (reason, make) in enumerate(corruptions(jpeg, png).items()):
        suffix = ".png" if "png" in reason else ".jpg"
        (folder / f"bad {i:02d} {reason}{suffix}").write_bytes(make(rng))
    good, bad = [], []
    for path in sorted(folder.iterdir()):
        try:
            read_image(path, orient=True)
            good.append(path.name)
        except ImageReadError:
            bad.append(path.name)
    return good, bad
