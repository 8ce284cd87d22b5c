"""Object storage unreachable for a while (`mrcnn.data.retries`): a real proxy process between the
clients and the S3 server (tests/s3_proxy.py) refuses connections and drops the open ones for a
few seconds while a split is read (ranged GETs, the shard cache) or uploaded. Every call rides it
out and the bytes are the folder's; past the retry budget the error is one line naming the URL
and the budget."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from mrcnn.data import ShardDataset, retries, storage
from tests.coco_helpers import make_coco
from tests.mrcnn.data.test_shards import SIZES, build
from tests.mrcnn.data.test_storage import _samples_equal

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

OUTAGE_S = 4  # shorter than the 60 s budget of `s3_via_proxy`; several retries (0.5, 1, 2 s)


@pytest.fixture(scope="module")
def local_split(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    make_coco(raw, "train", SIZES, seed=1)
    out = tmp_path_factory.mktemp("shards")
    build(raw, out, samples_per_shard=3)  # 7 samples -> 3 shards
    return out / "train"


def _retried(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == retries.__name__]


def test_reads_ride_out_an_outage_byte_for_byte(local_split, s3_bucket, s3_via_proxy, caplog):
    url = f"{s3_bucket}/shards/train"
    storage.upload_split(local_split, url)
    local = ShardDataset(local_split)
    caplog.set_level(logging.WARNING, retries.__name__)

    s3_via_proxy.outage(OUTAGE_S)  # the manifest and index are read while it is down
    remote = ShardDataset(url)
    assert remote.manifest == local.manifest
    assert any(f"reading {url}/manifest.json" in m for m in _retried(caplog))

    caplog.clear()
    s3_via_proxy.outage(OUTAGE_S)  # the samples (ranged GETs on pooled connections) too
    for i in range(len(local)):
        _samples_equal(remote[i], local[i])
        raw_remote, raw_local = remote.read_raw(i), local.read_raw(i)
        assert raw_remote == raw_local  # the very bytes (json, image, masks) of the folder
    assert any(f"reading {url}/shard-000000.tar" in m for m in _retried(caplog))


def test_shard_cache_rides_out_an_outage(local_split, s3_bucket, s3_via_proxy, tmp_path, caplog):
    url = f"{s3_bucket}/shards/train"
    storage.upload_split(local_split, url)
    cache = tmp_path / "cache"
    remote = ShardDataset(url, cache_dir=cache)
    caplog.set_level(logging.WARNING, retries.__name__)

    s3_via_proxy.outage(OUTAGE_S)
    local = ShardDataset(local_split)
    for i in [6, 0, 3]:  # one sample of each shard: each tar is downloaded while it is down
        _samples_equal(remote[i], local[i])
    assert any(f"caching {url}/shard-000002.tar" in m for m in _retried(caplog))
    for p in sorted(cache.glob("*/shard-*.tar")):  # whole and checked against the manifest
        assert hashlib.sha256(p.read_bytes()).digest() == (
            hashlib.sha256((local_split / p.name).read_bytes()).digest()
        )
    assert len(list(cache.glob("*/shard-*.tar"))) == 3
    assert not list(cache.glob("*/.*.part"))


def test_upload_rides_out_an_outage(local_split, s3_bucket, s3_server, s3_via_proxy, caplog):
    url = f"{s3_bucket}/up/train"
    caplog.set_level(logging.WARNING, retries.__name__)
    s3_via_proxy.outage(OUTAGE_S)
    uploaded = storage.upload_split(local_split, url)

    assert _retried(caplog)  # it was down when the upload began
    bucket = s3_bucket.removeprefix("s3://")
    for name in uploaded:  # every file, byte for byte, read straight from the server
        body = s3_server.client().get_object(Bucket=bucket, Key=f"up/train/{name}")["Body"].read()
        assert body == (local_split / name).read_bytes(), name


def test_past_the_budget_one_line_names_the_url_and_the_budget(
    local_split, s3_bucket, s3_via_proxy, monkeypatch
):
    url = f"{s3_bucket}/shards/train"
    storage.upload_split(local_split, url)
    remote = ShardDataset(url)
    monkeypatch.setenv(retries.ENV, "2")
    s3_via_proxy.outage(None)  # down for good

    with pytest.raises(retries.StorageUnavailableError) as read_error:
        remote[0]
    message = str(read_error.value)
    assert f"reading {url}/shard-000000.tar" in message and "after 2 s" in message
    assert f"{retries.ENV}=" in message and "\n" not in message
    with pytest.raises(retries.StorageUnavailableError, match=f"{url}/.*after 2 s"):
        storage.upload_split(local_split, url)

    s3_via_proxy.outage(0)  # back: the same reader goes on
    _samples_equal(remote[0], ShardDataset(local_split)[0])


def test_missing_objects_and_bad_budgets_are_not_retried(s3_bucket, s3_via_proxy, monkeypatch):
    with pytest.raises(FileNotFoundError):  # at once: a missing object is no outage
        storage.read_bytes(f"{s3_bucket}/nothing.json")
    monkeypatch.setenv(retries.ENV, "soon")
    with pytest.raises(ValueError, match="MRCNN_STORAGE_RETRY_S='soon': expected a number"):
        storage.read_bytes(f"{s3_bucket}/nothing.json")
