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
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]  # NCHW view of HWC
    shrinking = h < image.shape[0] or w < image.shape[1]
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=shrinking)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())
