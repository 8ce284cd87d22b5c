"""Resize and pad an image into the fixed S x S model frame.

The shards and `MaskRCNN.detect` both call `resize_and_pad`, so training and inference see
identically prepared pixels. Padding goes to the bottom and right: the real image occupies
`window = (0, 0, h', w')` and a box in the padded frame is the original box times `scale`.

Modes (`resize_mode`):
    square      longer side to S, keep aspect ratio (the seeds' default)
    pad64       never upscale: scale = min(1, S / longer side) (matterport's "pad64" for a
                fixed-size batch: small images keep their pixels, padded to S x S)
    short_side  shorter side to `min_size` unless the longer side would pass S (detectron2)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mrcnn.config import RESIZE_MODES


@dataclass(frozen=True)
class Resized:
    image: np.ndarray  # uint8 [S, S, 3]
    window: tuple[int, int, int, int]  # (y1, x1, y2, x2) of the real image
    scale: float


def compute_scale(h: int, w: int, image_size: int, mode: str, min_size: int = 800) -> float:
    """The factor original -> padded frame for an `h x w` image."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode '{mode}' is not one of {RESIZE_MODES}")
    longer, shorter = max(h, w), min(h, w)
    if mode == "square":
        return image_size / longer
    if mode == "pad64":
        return min(1.0, image_size / longer)
    return min(min_size / shorter, image_size / longer)


def resized_shape(h: int, w: int, scale: float, image_size: int) -> tuple[int, int]:
    """Rounded size of the resized image, never larger than the frame nor smaller than 1."""
    nh = min(image_size, max(1, int(round(h * scale))))
    nw = min(image_size, max(1, int(round(w * scale))))
    return nh, nw


def resize_and_pad(
    image: np.ndarray, image_size: int, mode: str = "square", min_size: int = 800
) -> Resized:
    """uint8 `[H, W, 3]` -> uint8 `[S, S, 3]` (bilinear, antialiased when shrinking)."""
    h, w = image.shape[:2]
    scale = compute_scale(h, w, image_size, mode, min_size)
    nh, nw = resized_shape(h, w, scale, image_size)
    out = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    out[:nh, :nw] = resize_image(image, nh, nw)
    return Resized(image=out, window=(0, 0, nh, nw), scale=scale)


def prepare_images(
    images: Sequence[np.ndarray],
    image_size: int,
    mode: str = "square",
    min_size: int = 800,
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize + pad images into one fixed-shape batch, as `MaskRCNN.prepare` and
    `OnnxModel.prepare` feed their graphs: n uint8 `[H, W, 3]` images ->
    pixels uint8 [B, 3, S, S], windows float32 [B, 4] (y1, x1, y2, x2), scales float32 [B].
    B = `batch_size` (>= n; the missing images are all-zero with an empty window) or n."""
    b = len(images) if batch_size is None else batch_size
    if b < len(images):
        raise ValueError(f"{len(images)} images do not fit a batch of {b}")
    pixels = np.zeros((b, image_size, image_size, 3), dtype=np.uint8)
    windows = np.zeros((b, 4), dtype=np.float32)
    scales = np.zeros(b, dtype=np.float32)
    for i, im in enumerate(images):
        r = resize_and_pad(im, image_size, mode, min_size)
        pixels[i], windows[i], scales[i] = r.image, r.window, r.scale
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)), windows, scales


def resize_image(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8 `[H, W, C]` -> uint8 `[h, w, C]`; a no-op when the size already matches.

    Bilinear (antialiased when shrinking) straight on uint8 channels-last pixels: PyTorch's
    vectorised uint8 kernel, ~5x faster than converting to float and back at 1024 px, and within
    one grey level of it. Without torch (an `OnnxModel` process), Pillow's bilinear resize, the
    same filter in its own fixed-point arithmetic: within two grey levels of torch's.
    """
    if image.shape[:2] == (h, w):
        return image
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        from PIL import Image

        resized = Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.BILINEAR)
        return np.asarray(resized).copy()
    with warnings.catch_warnings():
        # A read-only array (np.asarray of a PIL image) is only read here: torch's warning
        # that it cannot protect such an array from writes does not apply.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]  # NCHW view
    shrinking = h < image.shape[0] or w < image.shape[1]
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=shrinking)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())
