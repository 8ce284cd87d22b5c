"""Every label format converts to the COCO layout; every bad record is reported, none crash."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import yaml
from PIL import Image

from mrcnn.data.coco import decode_instances, load_coco_split
from pipeline.convert import main as convert_main
from pipeline.formats import convert, detect
from pipeline.formats.builder import REPORT, split_for

H, W = 40, 60
SQUARE = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]  # 20 x 20 px
TRI = [35.0, 5.0, 55.0, 5.0, 45.0, 25.0]


def _png(path: Path, seed: int = 0, size=(H, W)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _load(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"instances_{split}.json").read_text())


def _reasons(out: Path) -> dict[str, int]:
    return json.loads((out / REPORT).read_text())["skipped"]


def _labelme(path: Path, image: str, shapes: list[dict], data: bytes | None = None) -> None:
    doc = {
        "version": "5.2.1",
        "shapes": shapes,
        "imagePath": image,
        "imageHeight": H,
        "imageWidth": W,
        "imageData": base64.b64encode(data).decode() if data else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _shape(label, pts, kind="polygon", group=None):
    return {"label": label, "points": pts, "shape_type": kind, "group_id": group}


def _pairs(flat):
    return [[flat[i], flat[i + 1]] for i in range(0, len(flat), 2)]


def test_labelme_groups_ignores_and_reports(tmp_path):
    src = tmp_path / "lm"
    (src).mkdir()
    (src / "labels.txt").write_text("__ignore__\n_background_\ncat\ndog\n")
    _png(src / "a.png", 0)
    _labelme(
        src / "a.json",
        "a.png",
        [
            _shape("cat", _pairs(SQUARE), group=1),
            _shape("cat", _pairs(TRI), group=1),  # same group: one instance, two polygons
            _shape("dog", [[40, 30], [50, 38]], kind="rectangle"),
            _shape("__ignore__", _pairs(TRI)),
            _shape("cat", [[1, 1], [5, 5]]),  # 2 points
            _shape("horse", _pairs(SQUARE)),  # not in labels.txt
            _shape("dog", [[1, 1], [9, 9]], kind="line"),
        ],
    )
    buf = io.BytesIO()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(buf, format="PNG")
    _labelme(src / "sub" / "b.json", "b.png", [_shape("dog", _pairs(SQUARE))], buf.getvalue())
    _labelme(src / "c.json", "gone.png", [_shape("dog", _pairs(SQUARE))])  # image missing
    (src / "d.png").write_bytes(b"\x89PNG broken")
    _labelme(src / "d.json", "d.png", [_shape("dog", _pairs(SQUARE))])
    for i in range(6):  # plain images so that the split has something to split
        _png(src / f"e{i}.png", i + 1)
        _labelme(src / f"e{i}.json", f"e{i}.png", [_shape("cat", _pairs(TRI))])
    assert detect(src) == "labelme"
    out = tmp_path / "out"
    summary = convert(src, out, "auto", val_fraction=0.25)
    assert summary["format"] == "labelme"
    assert summary["categories"] == ["cat", "dog"]
    assert _reasons(out) == {
        "background_category": 1,
        "corrupt_image": 1,
        "invalid_polygon": 1,
        "missing_image": 1,
        "unknown_category": 1,
        "unsupported_shape": 1,
    }
    splits = {s: _load(out, s) for s in ("train", "val")}
    assert sum(len(d["images"]) for d in splits.values()) == 8  # a, sub/b, e0..e5
    assert len(splits["val"]["images"]) == 2  # round(8 * 0.25)
    docs = {im["file_name"]: (s, im["id"]) for s, d in splits.items() for im in d["images"]}
    s_a, a_id = docs["a.png"]
    anns = [x for x in splits[s_a]["annotations"] if x["image_id"] == a_id]
    crowd = [x for x in anns if x["iscrowd"]]
    objs = [x for x in anns if not x["iscrowd"]]
    assert [len(x["segmentation"]) for x in objs] == [2, 1]  # the group, the rectangle
    assert [x["category_id"] for x in objs] == [1, 2]
    assert sorted(x["category_id"] for x in crowd) == [1, 2]  # ignored for every class
    assert objs[1]["bbox"] == [40.0, 30.0, 10.0, 8.0]
    rle = mask_utils.merge(mask_utils.frPyObjects(objs[0]["segmentation"], H, W))
    assert int(mask_utils.area(rle)) == 400 + 200  # square 20x20 + triangle 20x20/2
    # The embedded image was written out, in its subfolder.
    s, _ = docs["sub/b.png"]
    assert (out / s / "sub" / "b.png").is_file()
    assert (out / "train" / "e0.png").exists() or (out / "val" / "e0.png").exists()
    # The shards stage's reader takes it without a complaint: crowd regions stay crowd, and
    # the ignore shape's two copies (one per class) are one region there.
    parsed = load_coco_split(out / "annotations" / f"instances_{s_a}.json")
    assert parsed.skipped == []
    rec = next(r for r in parsed.records if r.file_name == "a.png")
    inst, bad = decode_instances(rec, H, W)
    assert bad == [] and len(inst.rles) == 2 and len(inst.crowd_boxes) == 1
    assert parsed.num_ignored_regions == 1  # of the file's 2 crowd annotations
    assert parsed.num_instances == parsed.num_annotations - 2
    # Deterministic: the same split again.
    convert(src, tmp_path / "again", "labelme", val_fraction=0.25)
    assert _load(tmp_path / "again", "val")["images"] == splits["val"]["images"]


def test_via_balloon_layout(tmp_path):
    src = tmp_path / "balloon"
    for split, n in (("train", 3), ("val", 1)):
        meta = {}
        for i in range(n):
            name = f"{split}{i}.jpg"
            _png(src / split / name, i)
            regions = [
                {
                    "shape_attributes": {
                        "name": "polygon",
                        "all_points_x": SQUARE[0::2],
                        "all_points_y": SQUARE[1::2],
                    },
                    "region_attributes": {},
                },
                {
                    "shape_attributes": {
                        "name": "rect",
                        "x": 35,
                        "y": 5,
                        "width": 10,
                        "height": 20,
                    },
                    "region_attributes": {},
                },
            ]
            if i == 0 and split == "train":
                regions.append(
                    {
                        "shape_attributes": {"name": "point", "cx": 1, "cy": 1},
                        "region_attributes": {},
                    }
                )
                regions.append(
                    {
                        "shape_attributes": {
                            "name": "polygon",
                            "all_points_x": [1, 2],
                            "all_points_y": [1, 2],
                        },
                        "region_attributes": {},
                    }
                )
            meta[f"{name}123"] = {
                "filename": name,
                "size": 123,
                "regions": regions,
                "file_attributes": {},
            }
        meta["missing.jpg1"] = {"filename": f"missing_{split}.jpg", "size": 1, "regions": []}
        (src / split / "via_region_data.json").write_text(json.dumps(meta))
    assert detect(src) == "via"
    out = tmp_path / "out"
    summary = convert(src, out, default_class="balloon")
    assert summary["categories"] == ["balloon"]
    assert {s: c["images"] for s, c in summary["splits"].items()} == {"train": 3, "val": 1}
    assert {s: c["instances"] for s, c in summary["splits"].items()} == {"train": 6, "val": 2}
    assert _reasons(out) == {"invalid_polygon": 1, "missing_image": 2, "unsupported_shape": 1}
    rect = _load(out, "val")["annotations"][1]
    assert rect["bbox"] == [35.0, 5.0, 10.0, 20.0]
    # A whole saved VIA project (not the export), one json, a class attribute, split by fraction.
    proj = tmp_path / "project"
    meta = {}
    for i, kind in enumerate(["cat", "dog", "cat", "dog"]):
        _png(proj / f"p{i}.jpg", i)
        region = {
            "shape_attributes": {"name": "circle", "cx": 20, "cy": 20, "r": 8},
            "region_attributes": {"animal": kind},
        }
        meta[f"p{i}.jpg0"] = {"filename": f"p{i}.jpg", "size": 0, "regions": [region]}
    (proj / "via_project.json").write_text(
        json.dumps({"_via_settings": {}, "_via_img_metadata": meta, "_via_attributes": {}})
    )
    assert detect(proj) == "via"
    summary = convert(proj, tmp_path / "out2", val_fraction=0.25)
    assert summary["categories"] == ["cat", "dog"]
    assert {s: c["images"] for s, c in summary["splits"].items()} == {"train": 3, "val": 1}
    circle = _load(tmp_path / "out2", "train")["annotations"][0]
    assert len(circle["segmentation"][0]) == 64  # 32 vertices
    np.testing.assert_allclose(circle["bbox"], [12, 12, 16, 16], atol=0.1)


def test_yolo_seg_with_data_yaml(tmp_path):
    src = tmp_path / "yolo"
    (src).mkdir()
    (src / "data.yaml").write_text(
        yaml.safe_dump(
            {
                "path": ".",
                "train": "images/train",
                "val": "images/val",
                "names": {0: "cat", 1: "dog"},
            }
        )
    )
    norm = [v / (W if i % 2 == 0 else H) for i, v in enumerate(SQUARE)]
    for split, names in (("train", ["a", "b", "nolabel"]), ("val", ["c"])):
        for k, name in enumerate(names):
            _png(src / "images" / split / f"{name}.png", k)
            if name == "nolabel":
                continue
            lines = ["0 " + " ".join(f"{v:.6f}" for v in norm), "1 0.5 0.5 0.6 0.9 0.7 0.1"]
            if name == "a":
                lines += ["7 0.1 0.1 0.2 0.2 0.3 0.1", "1 0.5 0.5 0.2 0.2", "0 0.1 0.1 0.2 0.2 0.3"]
            (src / "labels" / split).mkdir(parents=True, exist_ok=True)
            (src / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (src / "labels" / "train" / "orphan.txt").write_text("0 0.1 0.1 0.2 0.2 0.3 0.1\n")
    assert detect(src) == "yolo"
    out = tmp_path / "out"
    summary = convert(src, out)
    assert summary["categories"] == ["cat", "dog"]
    assert {s: c["images"] for s, c in summary["splits"].items()} == {"train": 3, "val": 1}
    assert {s: c["instances"] for s, c in summary["splits"].items()} == {"train": 4, "val": 2}
    assert _reasons(out) == {
        "invalid_polygon": 1,
        "missing_image": 1,
        "missing_label": 1,
        "unknown_category": 1,
        "unsupported_shape": 1,
    }
    first = _load(out, "val")["annotations"][0]
    np.testing.assert_allclose(first["segmentation"][0], SQUARE, atol=1e-3)
    assert first["category_id"] == 1


def test_pennfudan_instance_masks(tmp_path):
    src = tmp_path / "PennFudanPed"
    (src / "PedMasks").mkdir(parents=True)
    areas = []
    for i in range(4):
        _png(src / "PNGImages" / f"FudanPed{i:05d}.png", i)
        ids = np.zeros((H, W), np.uint8)
        ids[5:20, 5 + i : 15 + i] = 1
        ids[22:38, 30:50] = 2
        areas.append([int((ids == 1).sum()), int((ids == 2).sum())])
        Image.fromarray(ids).save(src / "PedMasks" / f"FudanPed{i:05d}_mask.png")
    _png(src / "PNGImages" / "FudanPed00009.png")  # no mask
    Image.fromarray(np.zeros((H, W), np.uint8)).save(src / "PedMasks" / "Other_mask.png")
    (src / "classes.txt").write_text("person\n")
    assert detect(src) == "masks"
    out = tmp_path / "out"
    summary = convert(src, out, val_fraction=0.25)
    assert summary["categories"] == ["person"]
    assert {s: c["images"] for s, c in summary["splits"].items()} == {"train": 3, "val": 1}
    assert _reasons(out) == {"missing_image": 1, "missing_mask": 1}
    got = {}
    for s in ("train", "val"):
        d = _load(out, s)
        names = {im["id"]: im["file_name"] for im in d["images"]}
        for a in d["annotations"]:
            got.setdefault(names[a["image_id"]], []).append(
                int(
                    mask_utils.area(
                        {
                            "size": a["segmentation"]["size"],
                            "counts": a["segmentation"]["counts"].encode(),
                        }
                    )
                )
            )
    assert got == {f"FudanPed{i:05d}.png": areas[i] for i in range(4)}


def test_coco_single_splits_by_image_id_and_reports_bad_records(tmp_path):
    src = tmp_path / "single"
    images, anns = [], []
    for i in range(10):
        _png(src / "images" / f"{i}.png", i)
        images.append({"id": i, "file_name": f"{i}.png", "height": H, "width": W})
        anns.append(
            {
                "id": 100 + i,
                "image_id": i,
                "category_id": 5,
                "segmentation": [SQUARE],
                "iscrowd": 0,
                "bbox": [10, 10, 20, 20],
                "area": 400,
            }
        )
    images.append({"id": 50, "file_name": "absent.png", "height": H, "width": W})
    anns += [
        {"id": 200, "image_id": 50, "category_id": 5, "segmentation": [SQUARE]},
        {"id": 201, "image_id": 1, "category_id": 9, "segmentation": [SQUARE]},
        {"id": 202, "image_id": 2, "category_id": 0, "segmentation": [SQUARE]},
        {"id": 203, "image_id": 3, "category_id": 5, "segmentation": [[1, 2, 3, 4]]},
        {"id": 204, "image_id": 777, "category_id": 5, "segmentation": [SQUARE]},
    ]
    cats = [{"id": 0, "name": "_background_"}, {"id": 5, "name": "widget"}]
    (src / "labels.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    assert detect(src) == "coco_single"
    out = tmp_path / "out"
    summary = convert(src, out, val_fraction=0.3)
    assert _reasons(out) == {
        "background_category": 2,
        "image_id_zero": 1,
        "invalid_polygon": 1,
        "missing_image": 1,
        "unknown_category": 1,
        "unknown_image": 2,
    }
    val_ids = sorted(im["id"] for im in _load(out, "val")["images"])
    assert val_ids == sorted(int(k) for k in split_for([f"{i:012d}" for i in range(10)], 0.3))
    assert len(val_ids) == 3
    all_ids = val_ids + [im["id"] for im in _load(out, "train")["images"]]
    assert 0 not in all_ids and 51 in all_ids  # id 0 renumbered after the largest (50)
    assert summary["splits"]["train"]["instances"] + summary["splits"]["val"]["instances"] == 10


def test_coco_layout_passes_through_and_cli(tmp_path, capsys):
    src = tmp_path / "c"
    for split in ("train", "val"):
        _png(src / split / "x.png")
        (src / "annotations").mkdir(parents=True, exist_ok=True)
        (src / "annotations" / f"instances_{split}.json").write_text(
            json.dumps(
                {
                    "images": [{"id": 3, "file_name": "x.png", "height": H, "width": W}],
                    "annotations": [
                        {
                            "id": 1,
                            "image_id": 3,
                            "category_id": 2,
                            "segmentation": [TRI],
                            "iscrowd": 0,
                        }
                    ],
                    "categories": [{"id": 2, "name": "tri"}],
                }
            )
        )
    assert detect(src) == "coco"
    assert convert_main([str(src), str(tmp_path / "out")]) == 0
    line = capsys.readouterr().out
    assert "train 1 images / 1 instances, val 1 images / 1 instances; nothing left out" in line
    doc = _load(tmp_path / "out", "val")
    assert doc["images"] == [{"id": 3, "file_name": "x.png", "height": H, "width": W}]
    assert doc["annotations"][0]["segmentation"] == [TRI]
    # A folder in no known format: one clear line, exit code 2, nothing written.
    (tmp_path / "empty").mkdir()
    assert convert_main([str(tmp_path / "empty"), str(tmp_path / "o2")]) == 2
    assert "cannot tell the label format" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_coco_ids_of_the_wrong_type_are_reported_not_raised(tmp_path):
    """Found by the fuzz tests (tests/pipeline/formats/test_fuzz_formats.py): an annotation whose
    image_id or category_id is a list (unhashable) crashed the COCO reader with a TypeError
    while it chose the report's wording."""
    src = tmp_path / "c"
    _png(src / "images" / "a.png")
    anns = [
        {"id": 1, "image_id": [1], "category_id": 2, "segmentation": [SQUARE]},
        {"id": 2, "image_id": 1, "category_id": [2], "segmentation": [SQUARE]},
        {"id": 3, "image_id": 1, "category_id": {"id": 2}, "segmentation": [SQUARE]},
        {"id": 4, "image_id": 1, "category_id": 2, "segmentation": [SQUARE]},
    ]
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "annotations": anns,
        "categories": [{"id": 2, "name": "square"}],
    }
    (src / "labels.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    summary = convert(src, out)
    assert _reasons(out) == {"unknown_image": 1, "unknown_category": 2}
    assert sum(s["instances"] for s in summary["splits"].values()) == 1
