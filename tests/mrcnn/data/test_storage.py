"""Shards in object storage: a split uploaded to a real S3 server (moto, tests/services.py) reads
back sample for sample, with one ranged GET per sample, or through a per-node cache of whole,
checksummed shards; the training order (and resume) is the same as from the folder."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest

from mrcnn.data import ShardDataset, TrainLoader, storage
from tests.coco_helpers import make_coco
from tests.mrcnn.data.test_shards import SIZES, build

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def local_split(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    make_coco(raw, "train", SIZES, seed=1)
    out = tmp_path_factory.mktemp("shards")
    build(raw, out, samples_per_shard=3)  # 7 samples -> 3 shards (3 + 3 + 1)
    return out / "train"


@pytest.fixture()
def remote_split(s3_bucket, local_split) -> str:
    url = f"{s3_bucket}/shards/train"
    uploaded = storage.upload_split(local_split, url)
    shards = [f"shard-00000{k}.{ext}" for k in range(3) for ext in ("json", "tar")]
    # The manifest last: it marks the split finished.
    assert uploaded == [*shards, "index.npy", "report.json", "manifest.json"]
    return url


def _samples_equal(a, b) -> None:
    assert a.image_id == b.image_id and a.window == b.window and a.scale == b.scale
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.mini_masks, b.mini_masks)


def test_join_and_is_url():
    assert storage.is_url("s3://b/p") and not storage.is_url("data/shards")
    assert not storage.is_url("file:///tmp/x")
    assert storage.join("s3://b/p/", "train", "manifest.json") == "s3://b/p/train/manifest.json"
    assert storage.join("data/shards", "train") == Path("data/shards/train")
    assert storage.join("file:///tmp/x", "val") == Path("/tmp/x/val")


def test_s3_split_reads_the_same_samples_with_one_ranged_get_each(
    local_split, remote_split, monkeypatch
):
    import s3fs

    gets: list[tuple[str, int | None, int | None]] = []
    original = s3fs.S3FileSystem._cat_file

    async def recording(self, path, version_id=None, start=None, end=None):
        gets.append((path.rsplit("/", 1)[-1], start, end))
        return await original(self, path, version_id=version_id, start=start, end=end)

    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", recording)
    s3fs.S3FileSystem.clear_instance_cache()  # its sync methods were bound before the patch
    local, remote = ShardDataset(local_split), ShardDataset(remote_split)
    assert [g[0] for g in gets] == ["manifest.json", "index.npy"]  # read whole, once
    assert len(remote) == len(local) == 7
    assert remote.manifest == local.manifest and remote.class_names == local.class_names
    gets.clear()
    for i in range(len(local)):
        _samples_equal(remote[i], local[i])
    sizes = {s["file"]: s["bytes"] for s in local.manifest["shards"]}
    assert len(gets) == 7  # one GET per sample: its json, image and masks are adjacent
    for name, start, end in gets:
        assert 0 < start < end < sizes[name]
    assert [g[0] for g in gets] == ["shard-000000.tar"] * 3 + ["shard-000001.tar"] * 3 + [
        "shard-000002.tar"
    ]
    assert remote.read_meta(6)["image_id"] == local[6].image_id


def test_s3_cache_downloads_each_shard_once_and_verifies_it(
    local_split, remote_split, s3_server, tmp_path, monkeypatch
):
    import s3fs

    downloads: list[str] = []
    original = s3fs.S3FileSystem._get_file

    async def recording(self, rpath, lpath, **kwargs):
        downloads.append(rpath.rsplit("/", 1)[-1])
        return await original(self, rpath, lpath, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_get_file", recording)
    s3fs.S3FileSystem.clear_instance_cache()
    cache = tmp_path / "cache"
    local = ShardDataset(local_split)
    cached = ShardDataset(remote_split, cache_dir=cache)
    for i in [6, 0, 1, 2, 3, 4, 5, 0]:
        _samples_equal(cached[i], local[i])
    assert downloads == ["shard-000002.tar", "shard-000000.tar", "shard-000001.tar"]
    copies = sorted(cache.glob("*/shard-*.tar"))
    assert [p.name for p in copies] == [f"shard-00000{k}.tar" for k in range(3)]
    for p in copies:  # byte for byte the local build
        assert (
            hashlib.sha256(p.read_bytes()).digest()
            == hashlib.sha256((local_split / p.name).read_bytes()).digest()
        )
    assert not list(cache.glob("*/.*.part"))

    downloads.clear()  # a second reader on the same node uses the copies
    again = ShardDataset(remote_split, cache_dir=cache)
    _samples_equal(again[4], local[4])
    assert downloads == []

    # A tar replaced behind the manifest's back (same size, other bytes) is refused.
    tampered = bytearray((local_split / "shard-000001.tar").read_bytes())
    tampered[600] ^= 0xFF
    s3_server.client().put_object(
        Bucket=remote_split.split("/")[2], Key="shards/train/shard-000001.tar", Body=bytes(tampered)
    )
    fresh = ShardDataset(remote_split, cache_dir=tmp_path / "cache2")
    with pytest.raises(OSError, match="does not match the manifest"):
        fresh[3]
    assert not list((tmp_path / "cache2").glob("*/*"))  # nothing half-written left behind


def test_missing_remote_split_says_what_to_pass(s3_bucket):
    with pytest.raises(FileNotFoundError, match="no manifest.json in s3://.*/nothing/train"):
        ShardDataset(f"{s3_bucket}/nothing/train")


def test_training_order_from_s3_with_forked_workers_matches_the_folder(local_split, remote_split):
    """Two DataLoader workers (forked: each makes its own S3 client), resumed at iteration 2:
    the same batches as from the local folder in this process."""
    ref = TrainLoader(ShardDataset(local_split), 2, seed=3, start_iteration=2, max_gt=8)
    got = TrainLoader(
        ShardDataset(remote_split), 2, seed=3, start_iteration=2, max_gt=8, num_workers=2
    )
    for a, b in zip(itertools.islice(ref, 5), itertools.islice(got, 5), strict=True):
        assert a.image_ids.tolist() == b.image_ids.tolist()
        assert np.array_equal(a.images.numpy(), b.images.numpy())
        assert np.array_equal(a.gt_mini_masks.numpy(), b.gt_mini_masks.numpy())
