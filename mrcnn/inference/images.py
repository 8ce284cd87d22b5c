"""What `detect` takes: a non-empty list of uint8 `H x W x 3` RGB arrays (numpy only).

Files are decoded to such arrays by `mrcnn.data.image_file.read_image`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
