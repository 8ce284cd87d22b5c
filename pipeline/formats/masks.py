"""Per-instance mask PNGs (the PennFudan layout): an image folder and a folder of instance-id
masks, one per image, where pixel value k > 0 is instance k and 0 is background.

    SRC/PNGImages/FudanPed00001.png   SRC/PedMasks/FudanPed00001_mask.png
    SRC/images/a.jpg                  SRC/masks/a.png

- Folders: images from `images`, `PNGImages`, `JPEGImages`; masks from `masks`, `PedMasks`,
  `SegmentationObject`. A mask pairs with the image of the same stem, or stem + `_mask`.
- Classes: one, named by `SRC/classes.txt` (first line) or `default_class`. In palette masks
  (VOC's SegmentationObject) value 255 is the void border, not an instance.
- An image without a mask (`missing_mask`) and a mask without an image (`missing_image`) are
  reported and left out; so is a mask whose size differs from its image (`invalid_entry`).
- Splits by `val_fraction`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from pipeline.formats.builder import CocoBuilder
from pipeline.formats.images import image_files

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
    lines = names_txt.read_text().split() if names_txt.is_file() else []
    name = lines[0] if lines else default_class
    builder = CocoBuilder([name], val_fraction=val_fraction)
    masks = {}
    for m in image_files(mask_dir):
        rel = m.relative_to(mask_dir).with_suffix("").as_posix()
        masks[rel.removesuffix("_mask")] = m
    used = set()
    for path in image_files(image_dir):
        rel = path.relative_to(image_dir).as_posix()
        key = path.relative_to(image_dir).with_suffix("").as_posix()
        mask_path = masks.get(key)
        if mask_path is None:
            builder.skip("missing_mask", file_name=rel, detail=f"no mask for it in {mask_dir}")
            continue
        used.add(key)
        image_id = builder.add_image(path, rel)
        if image_id is None:
            continue
        _add_masks(builder, image_id, mask_path, rel)
    for key in sorted(set(masks) - used):
        builder.skip(
            "missing_image",
            file_name=masks[key].name,
            detail=f"a mask without its image in {image_dir}",
        )
    return builder.write(out, source=str(src), fmt="masks")


def _add_masks(builder: CocoBuilder, image_id: int, mask_path: Path, rel: str) -> None:
    try:
        with Image.open(mask_path) as im:
            palette = im.mode == "P"
            ids = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:
        builder.skip(
            "corrupt_image", image_id=image_id, file_name=mask_path.name, detail=f"mask: {e}"
        )
        return
    if ids.ndim == 3:
        ids = ids[..., 0]
    if ids.shape != builder.size(image_id):
        builder.skip(
            "invalid_entry",
            image_id=image_id,
            file_name=rel,
            detail=f"mask {mask_path.name} is {ids.shape}, the image {builder.size(image_id)}",
        )
        return
    values = [int(v) for v in np.unique(ids) if v != 0 and not (palette and v == 255)]
    for v in values:
        rle = mask_utils.encode(np.asfortranarray(ids == v, dtype=np.uint8))
        rle["counts"] = rle["counts"].decode()
        builder.add_instance(image_id, 1, rle, file_name=rel)
