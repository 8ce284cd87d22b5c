"""Image files -> the uint8 `H x W x 3` RGB arrays `MaskRCNN.detect` takes.

`read_image` accepts a path or the encoded bytes of a file (what the MLflow pyfunc receives), so
`pipeline.predict` and the registered model decode images identically. Pillow reads the formats
(JPEG, PNG, BMP, WebP, ...); other colour modes are converted to RGB: grayscale is repeated over
three channels, alpha is dropped, CMYK and palettes are converted, 16-bit / float grayscale is
scaled to 8 bits. EXIF orientation is applied only when asked (`orient=True`, what `predict`
does, so phone photos come out upright); by default coordinates refer to the pixels as stored,
as COCO's tools read them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageReadError(ValueError):
    """A file that is not a readable image; the message names the file."""


def read_image(
    source: str | Path | bytes, name: str | None = None, *, orient: bool = False
) -> np.ndarray:
    """Decode an image file (path or encoded bytes) -> uint8 `[H, W, 3]` RGB.

    `name` is used in error messages (defaults to the path; "<bytes>" for bytes). `orient`
    applies the EXIF orientation tag (the image as a viewer shows it).
    Raises `ImageReadError` naming the file when it is missing, empty or not a decodable image.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        data = bytes(source)
        if not data:
            raise ImageReadError(f"cannot read image {label}: it is empty (0 bytes)")
        opener = io.BytesIO(data)
    else:
        path = Path(source)
        label = name or str(path)
        if not path.is_file():
            raise ImageReadError(f"cannot read image {label}: no such file")
        opener = path
    try:
        with Image.open(opener) as im:
            im.load()
            rgb = to_rgb(ImageOps.exif_transpose(im) if orient else im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot read image {label}: {e}") from None
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError(f"cannot read image {label}: it has no pixels")
    return rgb


def to_rgb(im: Image.Image) -> np.ndarray:
    """A decoded Pillow image in any mode -> uint8 `[H, W, 3]` RGB (a new, writable array)."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit or float grayscale -> 8 bits
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(255.0, float(a.max(initial=0)))
        g = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        return np.array(im.convert("RGBA"))[..., :3].copy()  # alpha dropped, not composited
    return np.array(im.convert("RGB"))


def check_images(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """What `detect` accepts: a non-empty list of uint8 `H x W x 3` arrays (else `ValueError`
    saying what was expected)."""
    if isinstance(images, np.ndarray):
        raise ValueError(
            "detect() takes a list of images; wrap a single H x W x 3 array as [image]"
        )
    images = list(images)
    if not images:
        raise ValueError("detect() got no images; pass a non-empty list of H x W x 3 arrays")
    for i, im in enumerate(images):
        if not isinstance(im, np.ndarray):
            raise ValueError(f"image {i} is a {type(im).__name__}, expected a numpy uint8 array")
        if im.dtype != np.uint8:
            raise ValueError(f"image {i} has dtype {im.dtype}, expected uint8 (0..255 RGB)")
        if im.ndim != 3:
            raise ValueError(f"image {i} has shape {im.shape}, expected H x W x 3 (RGB)")
        if im.shape[2] != 3:
            raise ValueError(
                f"image {i} has {im.shape[2]} channels, expected 3 (convert gray/RGBA to RGB)"
            )
        if im.shape[0] == 0 or im.shape[1] == 0:
            raise ValueError(f"image {i} is empty ({im.shape[0]} x {im.shape[1]} pixels)")
    return images
