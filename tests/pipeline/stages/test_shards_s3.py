"""`python -m pipeline.shards --out s3://...`: the stage writes its splits to a real S3 server
(moto, tests/services.py) and they read back with `ShardDataset` as the local build does."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mrcnn.data import ShardDataset, storage
from pipeline.stages import shards
from tests.mrcnn.data.test_storage import _samples_equal

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_shards_stage_writes_to_s3_what_it_writes_to_a_folder(
    tiny_shards, s3_bucket, s3_server, monkeypatch
):
    root = tiny_shards.parent.parent  # the tiny project, built by the same stage into a folder
    monkeypatch.chdir(root)  # the same relative paths as that build, so the same manifests
    url = f"{s3_bucket}/project/shards"
    shards.main(["--params", "params.yaml", "--out", url])

    bucket = s3_bucket.removeprefix("s3://")
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="project/shards/")
    keys = {o["Key"].removeprefix("project/shards/") for o in listed["Contents"]}
    local_files = {f"{s}/{p.name}" for s in ("train", "val") for p in (tiny_shards / s).iterdir()}
    assert keys == local_files | {"val/annotations.json"}  # index, report, manifest, all shards
    assert not shards.staging_dir(url).exists()  # the local copy is gone once uploaded

    for split in ("train", "val"):
        local = ShardDataset(tiny_shards / split)
        remote = ShardDataset(storage.join(url, split))
        assert remote.manifest == local.manifest  # same shards (sha256 each), index and counts
        assert len(remote) == len(local) == {"train": 16, "val": 6}[split]
        for i in range(len(local)):
            _samples_equal(remote[i], local[i])

    # The val ground truth rides along, the very file the manifest's checksum names.
    gt = storage.read_text(f"{url}/val/annotations.json").encode()
    assert gt == (root / "data/raw/shapes/annotations/instances_val.json").read_bytes()
    expected = ShardDataset(tiny_shards / "val").manifest["source"]["annotations_sha256"]
    assert hashlib.sha256(gt).hexdigest() == expected


def test_a_split_the_raw_folder_lacks_is_removed_from_the_bucket(
    tiny_shards, s3_bucket, tmp_path: Path
):
    """As in a folder: a stale split (here train, from an earlier source) must not be read as
    part of the new data."""
    from pipeline.params import Params, ShardsParams

    raw = tiny_shards.parent.parent / "data/raw/shapes"
    only_val = tmp_path / "raw"
    (only_val / "annotations").mkdir(parents=True)
    (only_val / "val").symlink_to(raw / "val")
    ann = raw / "annotations/instances_val.json"
    (only_val / "annotations/instances_val.json").write_bytes(ann.read_bytes())
    url = f"{s3_bucket}/shards"
    storage.write_text(f"{url}/train/manifest.json", "{}")  # an earlier build's train split
    params = ShardsParams(image_size=64, mini_mask_shape=14, samples_per_shard=8, num_workers=1)

    summary = shards.run(Params(shards=params), shards.ShardsPaths(only_val, url))

    assert sorted(summary) == ["val"] and summary["val"]["images"] == 6
    fs, path = storage.filesystem(url)
    assert not fs.exists(f"{path}/train/manifest.json")
    assert len(ShardDataset(f"{url}/val")) == 6
