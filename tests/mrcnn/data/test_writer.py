"""The shard writer on five hand-made records: exact counts in the manifest and report, the
index rows, a resumed build that keeps the finished shards untouched, and what makes a shard
be rebuilt (a changed option or class map, a changed image, a shrunken plan). Pixels, boxes and
masks read back are checked in test_shards.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from mrcnn.data import ShardDataset
from mrcnn.data import writer as writer_mod
from mrcnn.data.coco import ImageRecord, Skip
from mrcnn.data.example import ShardOptions
from mrcnn.data.writer import build_split

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 32, 40  # every image; at image_size 32 the scale is 0.8
CLASSES = [(3, "a"), (7, "b"), (9, "c")]  # labels 1, 2, 3; "c" has no instance
OPTIONS = ShardOptions(image_size=32, mini_mask_shape=8, samples_per_shard=2)


def _rect(x1, y1, x2, y2) -> list[list[float]]:
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def _ann(ann_id, cat, segm, **extra) -> dict:
    return {"id": ann_id, "category_id": cat, "segmentation": segm, "iscrowd": 0, **extra}


def _records() -> list[ImageRecord]:
    """Shards by image id, two per shard: [1, 2], [3, 4], [5].
    1: two instances (a, b); 2: one instance (a) and a crowd region (b); 3: no annotation;
    4: only a zero-area box; 5: a grayscale file with one instance (b)."""
    return [
        ImageRecord(5, "5.png", H, W, [_ann(51, 7, _rect(2, 2, 30, 20))]),  # any order in
        ImageRecord(
            1, "1.png", H, W, [_ann(11, 3, _rect(4, 4, 14, 12)), _ann(12, 7, _rect(20, 8, 36, 28))]
        ),
        ImageRecord(
            2,
            "2.png",
            H,
            W,
            [_ann(21, 3, _rect(6, 6, 16, 26)), _ann(22, 7, _rect(20, 2, 38, 30), iscrowd=1)],
        ),
        ImageRecord(3, "3.png", H, W, []),
        ImageRecord(4, "4.png", H, W, [_ann(41, 3, _rect(1, 1, 9, 9), bbox=[1, 1, 0, 8])]),
    ]


@pytest.fixture()
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for image_id in range(1, 6):
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        (image.convert("L") if image_id == 5 else image).save(folder / f"{image_id}.png")
    return folder


def _build(images: Path, out: Path, records=None, classes=CLASSES, options=OPTIONS, **kw):
    return build_split(
        records if records is not None else _records(),
        images,
        out,
        classes,
        options,
        num_workers=1,
        **kw,
    )


def _stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*")}


@pytest.fixture()
def count_builds(monkeypatch) -> list[int]:
    built: list[int] = []
    real = writer_mod.build_shard
    monkeypatch.setattr(writer_mod, "build_shard", lambda t: built.append(t.index) or real(t))
    return built


def test_manifest_counts_and_report(images, tmp_path):
    out = tmp_path / "train"
    source_skips = [
        Skip("duplicate_image_id", 1, file_name="dup.png"),
        Skip("invalid_image_entry", detail="{'id': 'x'}"),
    ]
    manifest = _build(
        images,
        out,
        source_skipped=source_skips,
        source_counts={"images": 6, "annotations": 6},
        extra_manifest={"source": {"images": "raw/train"}},
    )
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {
        "images": 3,
        "instances": 4,
        "instances_per_class": {"a": 2, "b": 2, "c": 0},
        "negatives": 0,
        "ignored_regions": 1,
        "skipped_images": 4,  # the source's two, image 3 and image 4
        "skipped_annotations": 1,
        "converted_images": 1,
        "shards": 3,
        "source_images": 6,
        "source_annotations": 6,
    }
    assert manifest["split"] == "train" and manifest["num_classes"] == 4
    assert manifest["class_names"] == ["background", "a", "b", "c"]
    assert manifest["class_map"]["2"] == {"category_id": 7, "name": "b"}
    assert manifest["params"]["samples_per_shard"] == 2 and manifest["image_size"] == 32
    assert manifest["source"] == {"images": "raw/train"}
    assert [s["samples"] for s in manifest["shards"]] == [2, 0, 1]  # shard 1: both skipped
    assert [s["file"] for s in manifest["shards"]] == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]

    report = json.loads((out / "report.json").read_text())
    assert report["skipped_images"] == {
        "duplicate_image_id": 1,
        "invalid_image_entry": 1,
        "no_annotations": 1,
        "no_valid_annotations": 1,
    }
    assert report["skipped_annotations"] == {"zero_area_box": 1}
    assert report["converted_images"] == {"grayscale": 1}
    assert report["converted"] == [{"reason": "grayscale", "image_id": 5, "file_name": "5.png"}]
    assert (report["ignored_regions"], report["negatives_kept"]) == (1, 0)
    reasons = [(s["reason"], s.get("image_id"), s.get("annotation_id")) for s in report["skipped"]]
    assert reasons == [
        ("duplicate_image_id", 1, None),
        ("invalid_image_entry", None, None),
        ("no_annotations", 3, None),
        ("zero_area_box", 4, 41),
        ("no_valid_annotations", 4, None),
    ]

    index = np.load(out / "index.npy")
    assert index[:, :2].tolist() == [[0, 1], [0, 2], [2, 5]]  # (shard, image id) per sample
    ds = ShardDataset(out)
    assert [ds[i].labels.tolist() for i in range(3)] == [[1, 2], [1], [2]]
    # Boxes: pycocotools' box of the polygon's mask, times the scale (0.8).
    rle = mask_utils.merge(mask_utils.frPyObjects(_rect(20, 8, 36, 28), H, W))
    x, y, w, h = mask_utils.toBbox(rle)
    np.testing.assert_allclose(ds[0].boxes[1], np.array([x, y, x + w, y + h]) * 0.8, atol=1e-5)
    assert ds[1].crowd_boxes.shape == (1, 4)


def test_keep_negatives_counts_them(images, tmp_path):
    options = ShardOptions(**{**OPTIONS.__dict__, "keep_negatives": True})
    manifest = _build(images, tmp_path / "train", options=options)
    assert manifest["counts"]["images"] == 5 and manifest["counts"]["negatives"] == 2
    assert manifest["counts"]["skipped_images"] == 0
    assert manifest["counts"]["instances"] == 4


def test_a_resumed_build_keeps_the_finished_shards(images, tmp_path, count_builds):
    out = tmp_path / "train"
    first = _build(images, out)
    stamps = _stamps(out)
    # As if killed while building the last shard: its record never written, no manifest.
    (out / "shard-000002.json").unlink()
    (out / "manifest.json").unlink()
    (out / "index.npy").unlink()
    count_builds.clear()
    again = _build(images, out)
    assert count_builds == [2]
    after = _stamps(out)
    for name in ("shard-000000.tar", "shard-000000.json", "shard-000001.tar", "shard-000001.json"):
        assert after[name] == stamps[name], name  # not rewritten
    assert again == first  # the same bytes: the same checksums and counts


def test_a_changed_option_or_class_map_rebuilds_every_shard(images, tmp_path, count_builds):
    out = tmp_path / "train"
    _build(images, out)
    count_builds.clear()
    _build(images, out)
    assert count_builds == []  # nothing changed: nothing rebuilt
    options = ShardOptions(**{**OPTIONS.__dict__, "jpeg_quality": 80})
    _build(images, out, options=options)
    assert count_builds == [0, 1, 2]
    count_builds.clear()
    manifest = _build(images, out, options=options, classes=[(3, "a"), (7, "b")])
    assert count_builds == [0, 1, 2]
    assert manifest["params"]["jpeg_quality"] == 80 and manifest["num_classes"] == 3


def test_a_changed_input_rebuilds_only_its_shard(images, tmp_path, count_builds):
    out = tmp_path / "train"
    _build(images, out)
    count_builds.clear()
    Image.new("RGB", (W, H), (9, 9, 9)).save(images / "5.png")  # another file size
    _build(images, out)
    assert count_builds == [2]
    count_builds.clear()
    records = _records()
    records[1].annotations[0]["category_id"] = 7  # image 1's first instance: another class
    manifest = _build(images, out, records=records)
    assert count_builds == [0]
    assert manifest["counts"]["instances_per_class"] == {"a": 1, "b": 3, "c": 0}


def test_a_smaller_plan_drops_the_shards_beyond_it(images, tmp_path):
    out = tmp_path / "train"
    _build(images, out)
    manifest = _build(images, out, records=_records()[1:3])  # images 1 and 2: one shard
    assert manifest["counts"]["shards"] == 1
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-000000.json", "shard-000000.tar"]
    assert len(ShardDataset(out)) == 2
