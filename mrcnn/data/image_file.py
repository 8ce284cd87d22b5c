"""Image files -> uint8 `H x W x 3` RGB arrays: the one decoder for training and serving.

The shards (`load_rgb`), `pipeline.predict` and the registered model (`read_image`) decode
with the same `decode_rgb`, so a model sees the same pixels in training and in use. Pillow
reads the formats (JPEG, PNG, BMP, WebP, TIFF, ...); images that are not 8-bit RGB are
converted, not rejected, and the conversion is named: `grayscale` (1-bit, 8-bit, 16/32-bit
integer or float grey; 16/32-bit scaled to 8 bits), `cmyk`, `alpha` (the alpha channel is
dropped, not composited), `palette`, `other_mode`. EXIF orientation is applied only when asked
(`orient=True`, what `predict` does, so phone photos come out upright); by default coordinates
refer to the pixels as stored, as COCO's tools read them.

A file that cannot be used raises `ImageReadError` (a `ValueError`) whose message names the
file and whose `reason` is one of the image-level skip reasons of `mrcnn.data.coco`
(`missing_image`, `corrupt_image`), whatever error the decoder met (empty, truncated, not an
image, a decompression bomb, a corrupt EXIF block when orienting). `probe` decodes a file for
its size and EXIF orientation only (what the label converters check a file with).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# What folders of images are read as (predict's inputs, users' label folders).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


class ImageReadError(ValueError):
    """A file that is not a usable image. The message names the file; `reason` is
    `missing_image` or `corrupt_image` (the skip reasons of `mrcnn.data.coco`)."""

    def __init__(self, message: str, reason: str = "corrupt_image") -> None:
        super().__init__(message)
        self.reason = reason


def read_image(
    source: str | Path | bytes, name: str | None = None, *, orient: bool = False
) -> np.ndarray:
    """Decode an image file (path or encoded bytes, what the MLflow pyfunc receives) -> uint8
    `[H, W, 3]` RGB, writable.

    `name` is used in error messages (defaults to the path; "<bytes>" for bytes). `orient`
    applies the EXIF orientation tag (the image as a viewer shows it).
    Raises `ImageReadError` naming the file when it is missing, empty or not a decodable image.
    """
    return _decode(source, name, orient)[0]


def load_rgb(path: str | Path) -> tuple[np.ndarray, str | None]:
    """Decode an image file for the shards -> (uint8 [H, W, 3], conversion reason or None).

    Raises `ImageReadError` with `reason` "missing_image" or "corrupt_image".
    """
    return _decode(path, None, False)


def decode_rgb(im: Image.Image) -> tuple[np.ndarray, str | None]:
    """A decoded Pillow image in any mode -> (uint8 `[H, W, 3]` RGB, conversion reason or None:
    "grayscale", "cmyk", "alpha", "palette", "other_mode")."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im), None
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        return np.asarray(im.convert("RGBA"))[..., :3], "alpha"
    if mode == "CMYK":
        return np.asarray(im.convert("RGB")), "cmyk"
    if mode in ("1", "L"):
        return np.asarray(im.convert("RGB")), "grayscale"
    if mode.startswith("I") or mode == "F":  # 16/32-bit or float grayscale -> 8 bits
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(255.0, float(a.max(initial=0)))
        g = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2), "grayscale"
    if mode == "P":
        return np.asarray(im.convert("RGB")), "palette"
    return np.asarray(im.convert("RGB")), "other_mode"


def probe(source: str | Path | bytes, name: str | None = None) -> ImageInfo:
    """Decode an image file (path or bytes) in full, so that a truncated one fails here and not
    later -> its stored size and EXIF orientation. Raises `ImageReadError` like `read_image`."""
    with _loaded(source, name) as (im, _):
        return ImageInfo(im.height, im.width, _orientation(im))


@dataclass(frozen=True)
class ImageInfo:
    """An image file's size as stored and its EXIF orientation tag (1..8; 1 = none)."""

    height: int
    width: int
    orientation: int = 1

    @property
    def oriented_size(self) -> tuple[int, int]:
        """(height, width) as a viewer shows it: tags 5..8 turn it by 90 degrees."""
        return (self.width, self.height) if self.orientation >= 5 else (self.height, self.width)


def _decode(
    source: str | Path | bytes, name: str | None, orient: bool
) -> tuple[np.ndarray, str | None]:
    with _loaded(source, name) as (im, label):
        if orient and _orientation(im) != 1:
            # A corrupt EXIF block: the pixels as stored are still an image.
            with contextlib.suppress(Exception):
                im = ImageOps.exif_transpose(im)
        rgb, converted = decode_rgb(im)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError(f"cannot read image {label}: it has no pixels")
    # A new, C-contiguous, writable array: torch.from_numpy warns on read-only ones.
    return np.require(rgb, np.uint8, ["C", "W", "O"]), converted


@contextlib.contextmanager
def _loaded(source: str | Path | bytes, name: str | None) -> Iterator[tuple[Image.Image, str]]:
    """The opened and fully decoded Pillow image, and the name errors use."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        data = bytes(source)
        if not data:
            raise ImageReadError(f"cannot read image {label}: it is empty (0 bytes)")
        opener: io.BytesIO | Path = io.BytesIO(data)
    else:
        path = Path(source)
        label = name or str(path)
        if not path.is_file():
            raise ImageReadError(f"cannot read image {label}: no such file", "missing_image")
        if path.stat().st_size == 0:
            raise ImageReadError(f"cannot read image {label}: it is empty (0 bytes)")
        opener = path
    try:
        with Image.open(opener) as im:
            im.load()
            yield im, label
    except ImageReadError:
        raise
    except Exception as e:
        # Pillow's decoders answer corrupt data with many types (OSError, SyntaxError,
        # ValueError, struct.error, IndexError, EOFError, DecompressionBombError, ...): each is
        # "not a usable image", never a crash of the reader.
        raise ImageReadError(f"cannot read image {label}: {type(e).__name__}: {e}") from None


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1..8), 1 when there is none or the EXIF block is unreadable."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # a corrupt EXIF block does not make the pixels unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1
