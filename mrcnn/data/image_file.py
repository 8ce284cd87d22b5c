"""Image files -> uint8 RGB arrays, whatever their mode; a file that cannot be used raises
`ImageError` with one of the image-level skip reasons of `mrcnn.data.coco`.

Images that are not 8-bit RGB are converted, not rejected, and the conversion is returned as
a reason: `grayscale` (1-bit, 8-bit, 16/32-bit integer or float grey), `cmyk`, `alpha` (the
alpha channel is dropped), `palette`, `other_mode`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


class ImageError(Exception):
    """An image that cannot be used; `reason` is one of the image-level skip reasons."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def load_rgb(path: str | Path) -> tuple[np.ndarray, str | None]:
    """Decode an image file -> (uint8 [H, W, 3], conversion reason or None).

    Raises `ImageError("missing_image" | "corrupt_image")`.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError("missing_image", str(path))
    try:
        with Image.open(path) as im:
            im.load()
            image, converted = _to_rgb(im)
        return np.require(image, requirements=["C", "W"]), converted  # torch wants writable
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError("corrupt_image", f"{path.name}: {e}") from None


def _to_rgb(im: Image.Image) -> tuple[np.ndarray, str | None]:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im), None
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        return np.asarray(im.convert("RGBA"))[..., :3].copy(), "alpha"
    if mode == "CMYK":
        return np.asarray(im.convert("RGB")), "cmyk"
    if mode in ("1", "L"):
        return np.asarray(im.convert("RGB")), "grayscale"
    if mode.startswith("I") or mode == "F":  # 16/32-bit or float grayscale -> 8 bit
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(255.0, float(a.max()))
        g = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2), "grayscale"
    if mode == "P":
        return np.asarray(im.convert("RGB")), "palette"
    return np.asarray(im.convert("RGB")), "other_mode"
