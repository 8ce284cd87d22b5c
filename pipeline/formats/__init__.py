"""Label formats people have -> the COCO layout the pipeline reads (`data.local_format`).

    convert(src, out, fmt="auto", val_fraction=0.2) -> summary

writes `out/{train,val}/`, `out/annotations/instances_{train,val}.json` and
`out/conversion_report.json` (every record left out or changed, with its reason; see
`pipeline.formats.builder`). One module per format:

    coco         a COCO-layout folder (pipeline.formats.coco)
    coco_single  one COCO json + an image folder, split by image id (pipeline.formats.coco)
    labelme      one labelme json per image (pipeline.formats.labelme)
    via          VIA 2.x project json, matterport's balloon (pipeline.formats.via)
    yolo         YOLO-seg txt labels + data.yaml / classes.txt (pipeline.formats.yolo)
    masks        per-instance mask PNGs, PennFudan style (pipeline.formats.masks)

`detect(src)` names the format of a folder (what `auto` uses).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mrcnn.data.layout import annotation_file
from pipeline.formats import coco, labelme, masks, via, yolo

CONVERTERS: dict[str, Callable[..., dict[str, Any]]] = {
    "coco": coco.convert_coco,
    "coco_single": coco.convert_coco_single,
    "labelme": labelme.convert_labelme,
    "via": via.convert_via,
    "yolo": yolo.convert_yolo,
    "masks": masks.convert_masks,
}
FORMATS = ("auto", *CONVERTERS)


def detect(src: str | Path) -> str:
    """The format of the dataset at `src`; `ValueError` saying what was looked for if none."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"no dataset at {src}")
    if src.is_file():
        if coco.single_json(src.parent) == src:
            return "coco_single"
        raise ValueError(f"{src} is a file; point at the dataset folder")
    if coco.is_coco(src):
        return "coco"
    if yolo.is_yolo(src):
        return "yolo"
    if masks.folders(src) is not None:
        return "masks"
    top = sorted(src.glob("*.json")) + sorted(src.glob("*/*.json"))
    if any(via.is_via_json(p) for p in top[:20]):
        return "via"
    if coco.single_json(src) is not None:
        return "coco_single"
    if any(labelme.is_labelme_json(p) for p in _first(src.rglob("*.json"), 20)):
        return "labelme"
    raise ValueError(
        f"cannot tell the label format of {src}: looked for {annotation_file('', 'train')} "
        "(coco), data.yaml or classes.txt with labels/*.txt (yolo), an image + mask folder "
        "(masks), a VIA project json, one COCO json (coco_single) and labelme jsons; name it "
        f"with data.local_format / --format (one of {', '.join(CONVERTERS)})"
    )


def convert(
    src: str | Path,
    out: str | Path,
    fmt: str = "auto",
    *,
    val_fraction: float = 0.2,
    default_class: str = "object",
) -> dict[str, Any]:
    """Convert `src` (format `fmt`, or detected) into the COCO layout at `out` -> summary:
    `{"format", "source", "splits": {split: {images, instances, ignored_regions}},
    "categories", "skipped": {reason: count}}`. Bad records never raise (they are reported);
    a missing folder, an unknown format or a dataset with no usable image do."""
    src, out = Path(src), Path(out)
    if fmt not in FORMATS:
        raise ValueError(f"unknown label format '{fmt}' (one of {', '.join(FORMATS)})")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if fmt == "auto":
        fmt = detect(src)
    return CONVERTERS[fmt](src, out, val_fraction=val_fraction, default_class=default_class)


def _first(it, n: int) -> list[Path]:
    out = []
    for p in it:
        out.append(p)
        if len(out) >= n:
            break
    return out
