"""Shard round trip (pixels, boxes, labels, mini-masks) and determinism / resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from mrcnn.data import ShardDataset, expand_mini_masks, resize_and_pad
from mrcnn.data import example as example_mod
from mrcnn.data import writer as writer_mod
from mrcnn.data.coco import class_map, load_coco_split
from mrcnn.data.minimask import boxes_from_masks
from mrcnn.data.resize import compute_scale
from mrcnn.data.writer import ShardOptions, build_split
from tests.coco_helpers import make_coco

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZES = [(120, 160), (200, 96), (96, 96), (150, 110), (64, 180), (180, 140), (100, 130)]


def build(raw: Path, out: Path, split: str = "train", num_workers: int = 1, **kw) -> dict:
    parsed = load_coco_split(raw / "annotations" / f"instances_{split}.json")
    options = ShardOptions(**{"image_size": 128, "mini_mask_shape": 56, **kw})
    return build_split(
        parsed.records,
        raw / split,
        out / split,
        class_map([parsed.categories]),
        options,
        source_skipped=parsed.skipped,
        num_workers=num_workers,
    )


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    make_coco(root, "train", SIZES, seed=1)
    return root


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    build(raw, out, samples_per_shard=3)
    return out


def test_round_trip_pixels_boxes_labels_masks(raw, built):
    ds = ShardDataset(built / "train")
    coco = COCO(str(raw / "annotations" / "instances_train.json"))
    assert len(ds) == len(SIZES)
    assert ds.class_names == ["background", "blob", "star", "box"]
    label_of = {3: 1, 7: 2, 11: 3}
    ious = []
    for i in range(len(ds)):
        s = ds[i]
        info = coco.loadImgs(s.image_id)[0]
        h, w = info["height"], info["width"]
        from PIL import Image

        original = np.array(Image.open(raw / "train" / info["file_name"]).convert("RGB"))
        expected = resize_and_pad(original, 128, "square")
        assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
        np.testing.assert_array_equal(s.image, expected.image)  # PNG: exact
        assert s.window == expected.window
        assert s.scale == pytest.approx(compute_scale(h, w, 128, "square"))
        assert s.original_size == (h, w)

        anns = coco.loadAnns(coco.getAnnIds(imgIds=s.image_id))
        assert len(anns) == len(s.labels) and s.mini_masks.shape == (len(anns), 56, 56)
        gt = np.stack([coco.annToMask(a).astype(bool) for a in anns])  # [N, h, w]
        np.testing.assert_array_equal(s.labels, [label_of[a["category_id"]] for a in anns])
        # boxes come from the masks (not the polygon bbox), scaled into the padded frame
        np.testing.assert_allclose(s.boxes, boxes_from_masks(gt) * s.scale, atol=1e-3)
        back = expand_mini_masks(s.boxes / s.scale, s.mini_masks, (h, w))
        for g, m in zip(gt, back, strict=True):
            ious.append((g & m).sum() / (g | m).sum())
    assert min(ious) > 0.9, ious
    assert np.mean(ious) > 0.95


def test_manifest_records_what_training_needs(built):
    m = json.loads((built / "train" / "manifest.json").read_text())
    assert (m["image_size"], m["resize_mode"], m["mini_mask_shape"]) == (128, "square", 56)
    assert m["num_classes"] == 4
    assert m["class_names"] == ["background", "blob", "star", "box"]
    assert m["class_map"]["2"] == {"category_id": 7, "name": "star"}
    assert m["counts"]["images"] == len(SIZES) and m["counts"]["shards"] == 3
    for shard in m["shards"]:
        digest = hashlib.sha256((built / "train" / shard["file"]).read_bytes()).hexdigest()
        assert digest == shard["sha256"]
    assert m["params"]["samples_per_shard"] == 3


def test_shards_are_plain_tars_in_webdataset_layout(built):
    import tarfile

    with tarfile.open(built / "train" / "shard-000000.tar") as tf:
        names = tf.getnames()
    assert names[:3] == ["000000000001.json", "000000000001.png", "000000000001.minimasks.npy"]
    assert len(names) == 9


def test_jpeg_and_other_resize_modes(raw, tmp_path):
    build(raw, tmp_path, image_format="jpeg", image_size=96, resize_mode="pad64")
    ds = ShardDataset(tmp_path / "train")
    from PIL import Image

    for i in range(len(ds)):
        s = ds[i]
        h, w = s.original_size
        assert s.scale == pytest.approx(min(1.0, 96 / max(h, w)))
        img = np.array(Image.open(raw / "train" / s.file_name).convert("RGB"))
        expected = resize_and_pad(img, 96, "pad64")
        assert s.window == expected.window
        y1, x1, y2, x2 = s.window
        err = (s.image[y1:y2, x1:x2].astype(float) - expected.image[y1:y2, x1:x2]) ** 2
        assert 10 * np.log10(255**2 / err.mean()) > 35  # JPEG q95: PSNR > 35 dB
        assert not s.image[y2:].any() and not s.image[:, x2:].any()  # padding stays zero


def test_build_is_deterministic_across_process_counts(raw, built, tmp_path):
    build(raw, tmp_path, samples_per_shard=3, num_workers=2)  # process pool
    assert tree_digest(tmp_path / "train") == tree_digest(built / "train")


def test_rerun_resumes_and_rebuilds_only_what_is_missing(raw, built, tmp_path, monkeypatch):
    out = tmp_path / "train"
    import shutil

    shutil.copytree(built / "train", out)
    (out / "shard-000001.json").unlink()  # as if killed between the tar rename and its record
    data = bytearray((out / "shard-000002.tar").read_bytes())
    data[700] ^= 0xFF  # a corrupted shard must not pass as done
    (out / "shard-000002.tar").write_bytes(bytes(data))
    (out / ".shard-000003.tar.tmp-123").write_bytes(b"half")  # leftover of a killed run
    (out / "shard-000009.tar").write_bytes(b"from an older, larger build")

    built_shards = []
    real = writer_mod.build_shard
    monkeypatch.setattr(
        writer_mod, "build_shard", lambda t: built_shards.append(t.index) or real(t)
    )
    build(raw, tmp_path.parent / tmp_path.name, samples_per_shard=3)
    assert sorted(built_shards) == [1, 2]
    assert tree_digest(out) == tree_digest(built / "train")

    built_shards.clear()
    build(raw, tmp_path, samples_per_shard=3, mini_mask_shape=28)  # other params: all redone
    assert sorted(built_shards) == [0, 1, 2]


def test_interrupted_build_leaves_no_half_shard(raw, built, tmp_path, monkeypatch):
    real = writer_mod.prepare_example
    calls = []

    def dying(record, *a, **k):
        calls.append(record.image_id)
        if len(calls) == 5:  # second image of the second shard
            raise KeyboardInterrupt
        return real(record, *a, **k)

    monkeypatch.setattr(writer_mod, "prepare_example", dying)
    with pytest.raises(KeyboardInterrupt):
        build(raw, tmp_path, samples_per_shard=3)
    out = tmp_path / "train"
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.json", "shard-000000.tar"]
    with pytest.raises(FileNotFoundError, match="manifest"):
        ShardDataset(out)

    monkeypatch.setattr(writer_mod, "prepare_example", real)
    build(raw, tmp_path, samples_per_shard=3)
    assert tree_digest(out) == tree_digest(built / "train")


def test_an_interrupted_rebuild_does_not_leave_the_old_manifest(raw, built, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "train"
    shutil.copytree(built / "train", out)  # a finished build, with other params
    real = writer_mod.prepare_example
    calls = []

    def dying(record, *a, **k):
        calls.append(record.image_id)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(record, *a, **k)

    monkeypatch.setattr(writer_mod, "prepare_example", dying)
    with pytest.raises(KeyboardInterrupt):
        build(raw, tmp_path, samples_per_shard=3, mini_mask_shape=28)
    assert not (out / "manifest.json").exists() and not (out / "index.npy").exists()
    with pytest.raises(FileNotFoundError):
        ShardDataset(out)  # old and new shards are mixed: nothing may read them
    monkeypatch.setattr(writer_mod, "prepare_example", real)
    build(raw, tmp_path, samples_per_shard=3, mini_mask_shape=28)
    ds = ShardDataset(out)
    assert ds.mini_mask_shape == 28 and ds[len(ds) - 1].mini_masks.shape[1:] == (28, 28)


def test_an_unforeseen_error_skips_only_that_image(raw, tmp_path, monkeypatch):
    real = example_mod.decode_instances

    def broken(record, h, w):
        if record.image_id == 3:
            raise RuntimeError("boom")
        return real(record, h, w)

    monkeypatch.setattr(example_mod, "decode_instances", broken)
    build(raw, tmp_path)
    report = json.loads((tmp_path / "train" / "report.json").read_text())
    assert report["skipped_images"] == {"unexpected_error": 1}
    assert report["skipped"][0]["image_id"] == 3 and "boom" in report["skipped"][0]["detail"]
    assert len(ShardDataset(tmp_path / "train")) == len(SIZES) - 1
