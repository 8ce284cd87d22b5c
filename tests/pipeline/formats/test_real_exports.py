"""Folders in the shapes the annotation tools export them, made here (nothing downloaded), each
converted through auto-detection with the expected image and instance counts.

Already covered elsewhere: COCO with crowd uncompressed RLE (tests/pipeline/stages/
test_download.py, issue 23's regression), labelme with group_id + `__ignore__`, VIA 2 polygon /
rect / circle regions, YOLO-seg normalised with data.yaml, PennFudan masks, a COCO single json
(test_formats.py). Here: CVAT's COCO 1.0 export with masks, Label Studio's COCO export,
Roboflow's COCO export, YOLO-seg in pixels (Roboflow layout).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import yaml
from PIL import Image

from pipeline.formats import convert, detect
from pipeline.formats.builder import REPORT
from tests.pipeline.formats.fuzz_data import output_rle

H, W = 40, 60
SQUARE = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]
TRI = [35.0, 5.0, 55.0, 5.0, 45.0, 25.0]


def _image(path: Path, seed: int = 0, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def _uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE as CVAT writes it: column-major runs, zeros first."""
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def _counts(summary: dict) -> dict:
    return {
        s: (c["images"], c["instances"], c["ignored_regions"]) for s, c in summary["splits"].items()
    }


def _skipped(out: Path) -> dict:
    return json.loads((out / REPORT).read_text())["skipped"]


def test_cvat_coco_export_with_masks(tmp_path):
    """CVAT "COCO 1.0": annotations/instances_default.json + images/; polygons are objects,
    masks come as uncompressed RLE with iscrowd 1 (CVAT's choice), so they stay ignore regions."""
    src = tmp_path / "task_17-2024_03_01_10_00_00-coco 1.0"
    disc = np.zeros((H, W), np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    disc[(yy - 20) ** 2 + (xx - 45) ** 2 < 80] = 1
    images, anns = [], []
    for i in range(1, 4):
        name = f"frame_{i - 1:06d}.png"
        _image(src / "images" / name, i)
        images.append(
            {
                "id": i,
                "width": W,
                "height": H,
                "file_name": name,
                "license": 0,
                "flickr_url": "",
                "coco_url": "",
                "date_captured": 0,
            }
        )
        common = {
            "image_id": i,
            "area": 0.0,
            "bbox": [0, 0, 1, 1],
            "attributes": {"occluded": False},
        }
        anns.append(
            {**common, "id": 2 * i - 1, "category_id": 1, "segmentation": [SQUARE], "iscrowd": 0}
        )
        anns.append(
            {
                **common,
                "id": 2 * i,
                "category_id": 2,
                "segmentation": _uncompressed(disc),
                "iscrowd": 1,
            }
        )
    doc = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {
            "contributor": "",
            "date_created": "",
            "description": "",
            "url": "",
            "version": "",
            "year": "",
        },
        "categories": [
            {"id": 1, "name": "car", "supercategory": ""},
            {"id": 2, "name": "road", "supercategory": ""},
        ],
        "images": images,
        "annotations": anns,
    }
    (src / "annotations").mkdir(parents=True)
    (src / "annotations" / "instances_default.json").write_text(json.dumps(doc))
    assert detect(src) == "coco_single"
    out = tmp_path / "out"
    summary = convert(src, out, val_fraction=0.34)
    assert _counts(summary) == {"train": (2, 2, 2), "val": (1, 1, 1)}
    assert _skipped(out) == {}
    val = json.loads((out / "annotations" / "instances_val.json").read_text())
    crowd = next(a for a in val["annotations"] if a["iscrowd"])
    assert (mask_utils.decode(output_rle(crowd["segmentation"], H, W)) == disc).all()


def test_label_studio_coco_export(tmp_path):
    """Label Studio "COCO": result.json whose file_names are `images/<hash>-<name>`, image and
    category ids from 0, polygons."""
    src = tmp_path / "project-3-at-2024-05-01-12-00-8f1c2a"
    images, anns = [], []
    for i in range(5):
        name = f"images/{i:08x}-photo {i}.jpg"
        _image(src / name, i, "JPEG")
        images.append({"width": W, "height": H, "id": i, "file_name": name})
        for k, poly in enumerate([SQUARE, TRI]):
            anns.append(
                {
                    "id": 2 * i + k,
                    "image_id": i,
                    "category_id": k,
                    "segmentation": [poly],
                    "bbox": [0, 0, 1, 1],
                    "ignore": 0,
                    "iscrowd": 0,
                    "area": 1.0,
                }
            )
    doc = {
        "images": images,
        "categories": [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}],
        "annotations": anns,
        "info": {"year": 2024, "version": "1.0", "contributor": "Label Studio"},
    }
    (src / "result.json").write_text(json.dumps(doc))
    assert detect(src) == "coco_single"
    out = tmp_path / "out"
    summary = convert(src, out, val_fraction=0.2)
    assert summary["categories"] == ["cat", "dog"]
    assert _counts(summary) == {"train": (4, 8, 0), "val": (1, 2, 0)}
    assert _skipped(out) == {"image_id_zero": 1}  # renumbered, kept


def test_roboflow_coco_export(tmp_path):
    """Roboflow "COCO Segmentation": train/ valid/ test/, each with _annotations.coco.json;
    image ids from 0; a category 0 named after the project (supercategory "none")."""
    src = tmp_path / "cells.v2i.coco-segmentation"
    cats = [
        {"id": 0, "name": "cells-Xb3k", "supercategory": "none"},
        {"id": 1, "name": "cell", "supercategory": "cells-Xb3k"},
        {"id": 2, "name": "nucleus", "supercategory": "cells-Xb3k"},
    ]
    for split, n in (("train", 3), ("valid", 2), ("test", 1)):
        images, anns = [], []
        for i in range(n):
            name = f"{split}{i}_png.rf.{i:032x}.jpg"
            _image(src / split / name, i, "JPEG")
            images.append(
                {
                    "id": i,
                    "license": 1,
                    "file_name": name,
                    "height": H,
                    "width": W,
                    "date_captured": "",
                }
            )
            anns += [
                {
                    "id": 2 * i,
                    "image_id": i,
                    "category_id": 1,
                    "bbox": [10, 10, 20, 20],
                    "area": 400,
                    "segmentation": [SQUARE],
                    "iscrowd": 0,
                },
                {
                    "id": 2 * i + 1,
                    "image_id": i,
                    "category_id": 2,
                    "bbox": [35, 5, 20, 20],
                    "area": 200,
                    "segmentation": [TRI],
                    "iscrowd": 0,
                },
            ]
        doc = {
            "info": {},
            "licenses": [],
            "categories": cats,
            "images": images,
            "annotations": anns,
        }
        (src / split / "_annotations.coco.json").write_text(json.dumps(doc))
    assert detect(src) == "coco"
    out = tmp_path / "out"
    summary = convert(src, out)
    assert _counts(summary) == {"train": (3, 6, 0), "val": (2, 4, 0)}
    assert summary["categories"] == ["cell", "nucleus"]
    assert _skipped(out) == {
        "image_id_zero": 2,  # one per split file, renumbered
        "placeholder_category": 1,  # category 0, the project's name, is not a class
        "unused_split": 1,  # test/ is named in the report, not converted
    }


def test_yolo_seg_in_pixels_roboflow_layout(tmp_path):
    """YOLO-seg with pixel coordinates (some exporters write them) in Roboflow's layout: read as
    pixels, reported once per label file (`pixel_coordinates`); normalised files beside them
    read as usual."""
    src = tmp_path / "yolo"
    src.mkdir()
    (src / "data.yaml").write_text(
        yaml.safe_dump(
            {"train": "../train/images", "val": "../valid/images", "nc": 2, "names": ["cat", "dog"]}
        )
    )
    norm = [v / (W if i % 2 == 0 else H) for i, v in enumerate(TRI)]
    for split, n in (("train", 3), ("valid", 1)):
        for i in range(n):
            _image(src / split / "images" / f"{split}{i}.jpg", i, "JPEG")
            label = src / split / "labels" / f"{split}{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            pixels = i % 2 == 0  # train0, train2, valid0 in pixels
            sq = (
                " ".join(f"{v:.1f}" for v in SQUARE)
                if pixels
                else " ".join(f"{v / (W if j % 2 == 0 else H):.6f}" for j, v in enumerate(SQUARE))
            )
            tri = (
                " ".join(f"{v:.1f}" for v in TRI) if pixels else " ".join(f"{v:.6f}" for v in norm)
            )
            label.write_text(f"0 {sq}\n1 {tri}\n")
    assert detect(src) == "yolo"
    out = tmp_path / "out"
    summary = convert(src, out)
    assert _counts(summary) == {"train": (3, 6, 0), "val": (1, 2, 0)}
    assert _skipped(out) == {"pixel_coordinates": 3}
    for split in ("train", "val"):
        doc = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
        for a in doc["annotations"]:
            np.testing.assert_allclose(
                a["segmentation"][0], SQUARE if a["category_id"] == 1 else TRI, atol=0.01
            )
