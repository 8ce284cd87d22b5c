"""One source image -> one shard sample (`prepare_example`), with the options shards are built
with (`ShardOptions`); `mrcnn.data.writer` groups samples into shards.

Per image:
  1. decode (converting grayscale / CMYK / alpha to RGB, noting it), check its size;
  2. rasterise the annotations to RLE and take the boxes from the masks (`mrcnn.data.coco`);
  3. resize with the same function `MaskRCNN.detect` uses (`mrcnn.data.resize`), and scale the
     boxes: a box in the padded frame is the original box times `scale`;
  4. mini-masks: each mask cut to its box in the *original* frame and resized to m x m
     (`make_mini_masks`), so the mask is resampled once; it covers the box exactly in both
     frames, since the resize is a pure scaling.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from mrcnn.data import shards as fmt
from mrcnn.data.coco import ImageRecord, Skip, decode_instances
from mrcnn.data.image_file import ImageReadError, load_rgb
from mrcnn.data.minimask import make_mini_masks, pack_mini_masks
from mrcnn.data.resize import compute_scale, resize_image, resized_shape


@dataclass(frozen=True)
class ShardOptions:
    """How to build shards (`params.yaml` section `shards`, minus the process count)."""

    image_size: int = 1024
    resize_mode: str = "square"
    min_size: int = 800
    mini_mask_shape: int = 56
    image_format: str = "auto"  # auto (PNG for PNG sources, else JPEG) | png | jpeg
    jpeg_quality: int = 95
    samples_per_shard: int = 256
    keep_negatives: bool = False
    min_box_size: float = 1.0


@dataclass
class Example:
    """One encoded sample, ready for a tar: its members and what the report counts."""

    key: str
    members: list[tuple[str, bytes]]
    labels: list[int]
    num_crowd: int
    converted: str | None


def prepare_example(
    record: ImageRecord,
    image_dir: Path,
    labels_by_category: dict[int, int],
    options: ShardOptions,
) -> tuple[Example | None, list[Skip]]:
    """One source image -> an `Example` (None if the image is skipped) and its skips."""
    path = Path(image_dir) / record.file_name
    try:
        image, converted = load_rgb(path)
    except ImageReadError as e:
        return None, [Skip(e.reason, record.image_id, file_name=record.file_name, detail=str(e))]
    h, w = image.shape[:2]
    if (record.height, record.width) != (None, None) and (record.height, record.width) != (h, w):
        detail = f"entry says {record.height}x{record.width}, file is {h}x{w}"
        return None, [Skip("image_size_mismatch", record.image_id, None, record.file_name, detail)]
    inst, skips = decode_instances(record, h, w)

    s = options.image_size
    scale = compute_scale(h, w, s, options.resize_mode, options.min_size)
    nh, nw = resized_shape(h, w, scale, s)
    boxes = _clip(inst.boxes * scale, nh, nw)
    wide = boxes[:, 2] - boxes[:, 0]
    tall = boxes[:, 3] - boxes[:, 1]
    keep = (wide >= max(options.min_box_size, 1e-3)) & (tall >= max(options.min_box_size, 1e-3))
    for i in np.flatnonzero(~keep):
        skips.append(
            Skip(
                "box_too_small",
                record.image_id,
                int(inst.annotation_ids[i]),
                record.file_name,
                f"{wide[i]:.2f}x{tall[i]:.2f} px",
            )
        )
    kept = np.flatnonzero(keep)
    if len(kept) == 0 and not options.keep_negatives:
        reason = "no_annotations" if not record.annotations else "no_valid_annotations"
        return None, [*skips, Skip(reason, record.image_id, file_name=record.file_name)]

    mini = _mini_masks(inst.rles, inst.boxes, kept, options.mini_mask_shape)
    labels = [labels_by_category[int(c)] for c in inst.category_ids[kept]]
    resized = resize_image(image, nh, nw)
    ext, image_bytes = _encode_image(resized, path, options)
    key = f"{record.image_id:012d}"
    meta = {
        "image_id": record.image_id,
        "file_name": record.file_name,
        "original_size": [h, w],
        "scale": scale,
        "window": [0, 0, nh, nw],
        "boxes": boxes[kept].tolist(),
        "labels": labels,
        "category_ids": inst.category_ids[kept].tolist(),
        "annotation_ids": inst.annotation_ids[kept].tolist(),
        "crowd_boxes": _clip(inst.crowd_boxes * scale, nh, nw).tolist(),
        "converted": converted,
    }
    if inst.keypoints is not None:  # (x, y) scale with the image, visibility stays
        meta["keypoints"] = (inst.keypoints[kept] * [scale, scale, 1]).tolist()
    members = [
        (f"{key}.json", json.dumps(meta, separators=(",", ":")).encode()),
        (f"{key}.{ext}", image_bytes),
        (f"{key}.minimasks.npy", fmt.encode_masks(pack_mini_masks(mini))),
    ]
    return Example(key, members, labels, len(inst.crowd_boxes), converted), skips


def _mini_masks(
    rles: list[dict[str, Any]], boxes: np.ndarray, kept: np.ndarray, m: int
) -> np.ndarray:
    """uint8 [len(kept), m, m]: each kept mask cut to its (original-frame) box, resized."""
    out = np.zeros((len(kept), m, m), dtype=np.uint8)
    for j, i in enumerate(kept):
        x1, y1, x2, y2 = (int(v) for v in boxes[i])  # tight integer boxes from toBbox
        with warnings.catch_warnings():  # pycocotools vs numpy 2: a harmless copy= warning
            warnings.simplefilter("ignore", DeprecationWarning)
            full = mask_utils.decode(rles[i])  # uint8 [H, W] (Fortran order)
        crop = np.ascontiguousarray(full[y1:y2, x1:x2])[None]  # [1, h, w]
        local = np.array([[0, 0, x2 - x1, y2 - y1]], dtype=np.float32)
        out[j] = make_mini_masks(crop.astype(bool), local, m)[0]
    return out


def _encode_image(image: np.ndarray, source: Path, options: ShardOptions) -> tuple[str, bytes]:
    fmt_name = options.image_format
    if fmt_name == "auto":
        fmt_name = "png" if source.suffix.lower() == ".png" else "jpeg"
    buf = io.BytesIO()
    if fmt_name == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
        return "png", buf.getvalue()
    Image.fromarray(image).save(buf, format="JPEG", quality=options.jpeg_quality)
    return "jpg", buf.getvalue()


def _clip(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    boxes = boxes.astype(np.float64, copy=True).reshape(-1, 4)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes
