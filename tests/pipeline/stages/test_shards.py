"""Every kind of bad record is counted by reason in the shard report; nothing valid is lost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrcnn.data import ShardDataset
from pipeline.params import Params, ShardsParams
from pipeline.stages.shards import ShardsPaths
from pipeline.stages.shards import run as run_stage
from tests.coco_helpers import CATEGORIES, textured_image, write_annotations

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SQUARE = [[10, 10, 50, 10, 50, 40, 10, 40]]  # 40 x 30 px
TRI = [[60, 20, 100, 20, 80, 70]]


def run(shards: ShardsParams, raw: Path, out: Path) -> dict:
    """The stage on the `shards` section alone."""
    return run_stage(Params(shards=shards), ShardsPaths(raw, out))


def _ann(ann_id, image_id, segm=None, cat=3, bbox=None, **extra):
    a = {"id": ann_id, "image_id": image_id, "category_id": cat, "iscrowd": 0, "area": 1.0}
    if segm is not None:
        a["segmentation"] = segm
    if bbox is not None:
        a["bbox"] = bbox
    a.update(extra)
    return a


def _crowd_rle(h, w):
    m = np.zeros((h, w), np.uint8)
    m[80:100, 100:150] = 1
    flat = m.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]]))
    counts = ([0] if flat[0] else []) + runs.tolist()
    return {"size": [h, w], "counts": counts}


@pytest.fixture()
def messy(tmp_path) -> tuple[Path, set[int]]:
    """A train split with one of everything; returns (raw dir, ids of the valid instances)."""
    raw = tmp_path / "raw"
    img_dir = raw / "train"
    img_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = textured_image(rng, 120, 160)
    images = []

    def add(image_id, name, h=120, w=160, save=None):
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        if save is not None:
            save(img_dir / name)

    add(1, "ok.png", save=lambda p: Image.fromarray(rgb).save(p))
    add(2, "ok.jpg", save=lambda p: Image.fromarray(rgb).save(p, quality=90))
    add(3, "gray.png", save=lambda p: Image.fromarray(rgb).convert("L").save(p))
    add(4, "cmyk.jpg", save=lambda p: Image.fromarray(rgb).convert("CMYK").save(p))
    add(5, "alpha.png", save=lambda p: Image.fromarray(rgb).convert("RGBA").save(p))
    add(6, "palette.png", save=lambda p: Image.fromarray(rgb).convert("P").save(p))
    add(7, "missing.jpg")
    add(8, "corrupt.jpg", save=lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg"))
    jpeg = bytearray()

    def truncated(p):
        Image.fromarray(rgb).save(p, quality=90)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])

    add(9, "truncated.jpg", save=truncated)
    add(10, "no_anns.png", save=lambda p: Image.fromarray(rgb).save(p))
    add(11, "only_bad.png", save=lambda p: Image.fromarray(rgb).save(p))
    add(12, "wrong_size.png", h=100, w=100, save=lambda p: Image.fromarray(rgb).save(p))
    wide = textured_image(rng, 100, 1000)
    add(13, "wide.png", h=100, w=1000, save=lambda p: Image.fromarray(wide).save(p))
    images.append({"id": 1, "file_name": "dup.png", "height": 1, "width": 1})  # duplicate id
    images.append({"id": 14})  # no file_name
    del jpeg

    anns = [
        _ann(101, 1, SQUARE, cat=3),
        _ann(102, 1, TRI, cat=11),
        _ann(103, 1, _crowd_rle(120, 160), cat=7, iscrowd=1),
        _ann(104, 1, SQUARE, bbox=[10, 10, 0, 30]),  # zero_area_box
        _ann(105, 1, SQUARE, bbox=[500, 500, 20, 20]),  # box_outside_image
        _ann(106, 1, [[10, 10, 50, 10, 50]]),  # invalid_polygon: odd length
        _ann(107, 1, [[10, 10, 50, 10]]),  # invalid_polygon: 2 points
        _ann(108, 1, [[10, 10, 50, float("nan"), 50, 40]]),  # invalid_polygon: NaN
        _ann(109, 1, []),  # empty_polygon
        _ann(110, 1, [[]]),  # empty_polygon
        _ann(111, 1, [[170, 130, 200, 130, 200, 150]]),  # empty_mask (all outside, no bbox)
        _ann(112, 1, {"size": [10, 10], "counts": [100]}),  # invalid_rle: wrong size
        _ann(113, 1, {"size": [120, 160], "counts": [5, 7]}),  # invalid_rle: bad counts
        _ann(114, 1, None),  # missing_segmentation
        _ann(115, 999, SQUARE),  # unknown_image
        _ann(116, 1, SQUARE, cat=42),  # unknown_category
        _ann(201, 2, SQUARE, cat=7),
        _ann(301, 3, TRI, cat=3),
        _ann(401, 4, SQUARE, cat=11),
        _ann(501, 5, TRI, cat=7),
        _ann(601, 6, SQUARE, cat=3),
        _ann(701, 7, SQUARE),
        _ann(801, 8, SQUARE),
        _ann(901, 9, SQUARE),
        _ann(1101, 11, [[1, 2, 3]]),  # invalid_polygon -> the image has no valid annotation
        _ann(1201, 12, SQUARE),
        _ann(1301, 13, [[500, 50, 503, 50, 503, 53, 500, 53]]),  # 3 px at 0.128 -> box_too_small
        _ann(1302, 13, [[100, 10, 600, 10, 600, 90, 100, 90]], cat=11),
        "not an annotation",  # invalid_annotation_entry
    ]
    write_annotations(
        raw, "train", {"images": images, "annotations": anns, "categories": CATEGORIES}
    )
    valid = {101, 102, 201, 301, 401, 501, 601, 1302}
    return raw, valid


def test_every_bad_record_is_reported_and_nothing_valid_is_lost(messy, tmp_path):
    raw, valid = messy
    params = ShardsParams(image_size=128, mini_mask_shape=28, samples_per_shard=4, num_workers=1)
    summary = run(params, raw, tmp_path / "shards")
    report = json.loads((tmp_path / "shards" / "train" / "report.json").read_text())

    assert report["skipped_images"] == {
        "corrupt_image": 2,  # garbage bytes, truncated JPEG
        "duplicate_image_id": 1,
        "image_size_mismatch": 1,
        "invalid_image_entry": 1,
        "missing_image": 1,
        "no_annotations": 1,
        "no_valid_annotations": 1,
    }
    assert report["skipped_annotations"] == {
        "box_outside_image": 1,
        "box_too_small": 1,
        "empty_mask": 1,
        "empty_polygon": 2,
        "invalid_annotation_entry": 1,
        "invalid_polygon": 4,
        "invalid_rle": 2,
        "missing_segmentation": 1,
        "unknown_category": 1,
        "unknown_image": 1,
        "zero_area_box": 1,
    }
    assert report["converted_images"] == {"alpha": 1, "cmyk": 1, "grayscale": 1, "palette": 1}
    assert report["ignored_regions"] == 1
    by_reason = {
        (s["reason"], s.get("image_id"), s.get("annotation_id")) for s in report["skipped"]
    }
    assert ("missing_image", 7, None) in by_reason and ("zero_area_box", 1, 104) in by_reason

    ds = ShardDataset(tmp_path / "shards" / "train")
    metas = [ds.read_meta(i) for i in range(len(ds))]
    kept_ids = {a for m in metas for a in m["annotation_ids"]}
    assert kept_ids == valid
    assert sorted(m["image_id"] for m in metas) == [1, 2, 3, 4, 5, 6, 13]
    assert summary["train"]["instances"] == len(valid)
    one = ds[int(np.flatnonzero(ds.index[:, 1] == 1)[0])]
    assert one.crowd_boxes.shape == (1, 4) and len(one.labels) == 2
    np.testing.assert_allclose(one.crowd_boxes[0], np.array([100, 80, 150, 100]) * 0.8)
    for i in range(len(ds)):  # converted images decode as 3-channel like the others
        assert ds[i].image.shape == (128, 128, 3)


def test_negatives_kept_when_asked(messy, tmp_path):
    raw, valid = messy
    params = ShardsParams(
        image_size=128, mini_mask_shape=28, keep_negatives_train=True, num_workers=1
    )
    run(params, raw, tmp_path / "shards")
    report = json.loads((tmp_path / "shards" / "train" / "report.json").read_text())
    assert "no_annotations" not in report["skipped_images"]
    assert "no_valid_annotations" not in report["skipped_images"]
    assert report["negatives_kept"] == 2
    ds = ShardDataset(tmp_path / "shards" / "train")
    ids = {ds.read_meta(i)["image_id"]: ds.read_meta(i) for i in range(len(ds))}
    assert ids[10]["labels"] == [] and ids[11]["labels"] == []
    assert ds[list(ids).index(10)].mini_masks.shape == (0, 28, 28)


def test_num_workers_zero_builds_in_this_process(messy, tmp_path, monkeypatch):
    """`shards.num_workers: 0` is no worker process (as in every section), not all cores."""
    from pipeline.stages import shards as stage

    seen = []
    build = stage.build_split

    def spy(*args, **kwargs):
        seen.append(kwargs["num_workers"])
        return build(*args, **kwargs)

    monkeypatch.setattr(stage, "build_split", spy)
    run(ShardsParams(image_size=128, mini_mask_shape=28, num_workers=0), messy[0], tmp_path / "s")
    assert seen == [1]  # the writer's 1: this process


def _damage_split(train: Path, kind: str) -> None:
    if kind == "truncated":
        shard = train / "shard-000001.tar"
        shard.write_bytes(shard.read_bytes()[:3000])
    elif kind == "flipped":
        shard = train / "shard-000000.tar"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif kind == "missing":
        (train / "shard-000001.tar").unlink()
    elif kind == "empty_manifest":
        (train / "manifest.json").write_bytes(b"")
    else:
        (train / "index.npy").write_bytes(b"garbage")


def test_rerunning_the_stage_repairs_what_the_reader_reports(tiny_shards, tmp_path):
    """Issue 23: a damaged split's error says to re-run the shards stage; doing so rebuilds
    exactly what is damaged (truncated, flipped, missing shards, a lost manifest or index)."""
    from mrcnn.data.shard_checks import REBUILD, ShardReadError

    raw = tiny_shards.parent.parent / "data" / "raw" / "shapes"
    out = tmp_path / "shards"
    params = ShardsParams(image_size=64, mini_mask_shape=14, samples_per_shard=8, num_workers=0)
    run(params, raw, out)
    for kind in ("truncated", "flipped", "missing", "empty_manifest", "index_garbage"):
        _damage_split(out / "train", kind)
        with pytest.raises(ShardReadError, match=REBUILD.replace("(", r"\(").replace(")", r"\)")):
            ShardDataset(out / "train").verify()
        run(params, raw, out)
        ShardDataset(out / "train").verify()
