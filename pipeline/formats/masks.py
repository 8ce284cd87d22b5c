"""Per-instance mask PNGs (the PennFudan layout): an image folder and a folder of instance-id
masks, one per image, where pixel value k > 0 is instance k and 0 is background.

    SRC/PNGImages/FudanPed00001.png   SRC/PedMasks/FudanPed00001_mask.png
    SRC/images/a.jpg                  SRC/masks/a.png

- Folders: images from `images`, `PNGImages`, `JPEGImages`; masks from `masks`, `PedMasks`,
  `SegmentationObject`. A mask pairs with the image of the same stem, or stem + `_mask`.
- Masks: 8/16/32-bit grey (value k > 0 is instance k), palette (VOC's SegmentationObject: value
  255 is the void border, not an instance) or colour (each colour but black is an instance).
- Classes: one, named by `SRC/classes.txt` (first line) or `default_class`.
- An image without a mask (`missing_mask`), a mask without an image (`missing_image`), a mask
  that cannot be decoded (`corrupt_image`, the image with it) and a second mask for one image
  (`invalid_entry`) are reported and left out; so is an image whose size is not its mask's,
  EXIF-turned or not (`image_size_mismatch`).
- Splits by `val_fraction`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from mrcnn.data.image_file import ImageReadError
from pipeline.formats.builder import CocoBuilder
from pipeline.formats.files import image_files, read_text

IMAGE_DIRS = ("images", "PNGImages", "JPEGImages")
MASK_DIRS = ("masks", "PedMasks", "SegmentationObject")


def folders(src: Path) -> tuple[Path, Path] | None:
    images = next((src / d for d in IMAGE_DIRS if (src / d).is_dir()), None)
    masks = next((src / d for d in MASK_DIRS if (src / d).is_dir()), None)
    return (images, masks) if images and masks else None


def convert_masks(
    src: Path, out: Path, *, val_fraction: float, default_class: str = "object", **_: Any
) -> dict[str, Any]:
    found = folders(src)
    if found is None:
        raise FileNotFoundError(
            f"{src}: expected an image folder ({' / '.join(IMAGE_DIRS)}) and an instance-mask "
            f"folder ({' / '.join(MASK_DIRS)})"
        )
    image_dir, mask_dir = found
    names_txt = src / "classes.txt"
    lines = read_text(names_txt).split() if names_txt.is_file() else []
    name = lines[0] if lines else default_class
    builder = CocoBuilder([name], val_fraction=val_fraction)
    masks: dict[str, Path] = {}
    for m in image_files(mask_dir):
        key = m.relative_to(mask_dir).with_suffix("").as_posix().removesuffix("_mask")
        if key in masks:
            builder.skip(
                "invalid_entry",
                file_name=m.relative_to(mask_dir).as_posix(),
                detail=f"a second mask for {key} (first: {masks[key].name}): left out",
            )
            continue
        masks[key] = m
    used = set()
    for path in image_files(image_dir):
        rel = path.relative_to(image_dir).as_posix()
        key = path.relative_to(image_dir).with_suffix("").as_posix()
        mask_path = masks.get(key)
        if mask_path is None:
            builder.skip("missing_mask", file_name=rel, detail=f"no mask for it in {mask_dir}")
            continue
        used.add(key)
        try:
            ids, void = instance_ids(mask_path)
        except ImageReadError as e:
            builder.skip("corrupt_image", file_name=rel, detail=f"its mask: {e}"[:200])
            continue
        image_id = builder.add_image(path, rel, expect_size=ids.shape)
        if image_id is not None:
            _add_masks(builder, image_id, ids, void, rel)
    for key in sorted(set(masks) - used):
        builder.skip(
            "missing_image",
            file_name=masks[key].name,
            detail=f"a mask without its image in {image_dir}",
        )
    return builder.write(out, source=str(src), fmt="masks")


def instance_ids(path: Path) -> tuple[np.ndarray, int | None]:
    """An instance-mask file -> (int64 [H, W] instance ids, 0 = background; the void value to
    leave out or None). Grey (8/16/32-bit), palette (void 255, VOC's border) or colour masks
    (each colour but black an instance). `ImageReadError` when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            a = np.asarray(im)
    except Exception as e:  # Pillow's decoders raise many types on corrupt data
        raise ImageReadError(f"cannot read {path.name}: {type(e).__name__}: {e}") from None
    if a.ndim == 3 and a.shape[2] >= 3 and mode not in ("LA", "PA"):
        rgb = a[..., :3].astype(np.int64)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2], None
    if a.ndim == 3:
        a = a[..., 0]
    return a.astype(np.int64), 255 if mode == "P" else None


def _add_masks(
    builder: CocoBuilder, image_id: int, ids: np.ndarray, void: int | None, rel: str
) -> None:
    for v in (int(v) for v in np.unique(ids) if v != 0 and v != void):
        rle = mask_utils.encode(np.asfortranarray(ids == v, dtype=np.uint8))
        builder.add_instance(image_id, 1, rle, file_name=rel)
