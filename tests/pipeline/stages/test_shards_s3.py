"""`python -m pipeline.shards --out s3://...`: the stage writes its splits to a real S3 server
(moto, tests/services.py) and they read back with `ShardDataset` as the local build does; with
the server unreachable (tests/s3_proxy.py) past the retry budget it stops in one line and the
next run uploads the kept build."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from mrcnn.data import ShardDataset, retries, storage
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


def test_an_outage_past_the_retry_budget_stops_the_upload_in_one_line(
    tiny_shards, s3_bucket, s3_via_proxy, monkeypatch, caplog
):
    monkeypatch.chdir(tiny_shards.parent.parent)
    monkeypatch.setenv(retries.ENV, "1")
    url = f"{s3_bucket}/down/shards"
    s3_via_proxy.outage(None)  # unreachable until switched back
    try:
        with pytest.raises(SystemExit) as e:
            shards.main(["--params", "params.yaml", "--out", url])
        assert e.value.code == 1
        (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert f"{url}/" in line and "gave up after 1 s" in line and "\n" not in line
        assert f"{retries.ENV}=<seconds>" in line and "Traceback" not in caplog.text
        assert (shards.staging_dir(url) / "val" / "manifest.json").is_file()  # the build stays

        s3_via_proxy.outage(0)  # reachable again: the same command finishes the job
        shards.main(["--params", "params.yaml", "--out", url])
        for split in ("train", "val"):
            remote = ShardDataset(storage.join(url, split))
            assert remote.manifest == ShardDataset(tiny_shards / split).manifest
        assert not shards.staging_dir(url).exists()
    finally:
        shutil.rmtree(shards.staging_dir(url), ignore_errors=True)
