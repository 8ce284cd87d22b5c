"""Ray Train's storage in S3 through `pipeline.training.run_storage.for_ray`: the filesystem Ray
gets, pickled as Ray ships it to its controller and workers, uploads a checkpoint folder with
`pyarrow.fs.copy_files` (what Ray Train does to persist one) while a real proxy process
(tests/s3_proxy.py) keeps the S3 server unreachable for a few seconds, byte for byte; past a
short retry budget the upload fails instead of hanging."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow.fs as pafs
import pytest

from mrcnn.data import retries
from pipeline.training import run_storage


def _checkpoint(folder):
    folder.mkdir()
    files = {
        "state.pt": np.random.default_rng(0).bytes(1 << 20),
        "rng_rank0.pt": b"rng",
        "meta.json": b"{}",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_local_storage_is_left_to_ray():
    assert run_storage.for_ray("/runs") == ("/runs", None)
    assert run_storage.retries_for(120) == 13  # 25 ms * (2**13 - 1) = 205 s of waiting >= 120 s


def test_checkpoint_upload_rides_out_an_outage(s3_bucket, s3_server, s3_via_proxy, tmp_path):
    path, fs = run_storage.for_ray(f"{s3_bucket}/runs/")
    assert path == f"{s3_bucket.removeprefix('s3://')}/runs"
    fs = pickle.loads(pickle.dumps(fs))  # as Ray hands it to every process
    files = _checkpoint(tmp_path / "checkpoint")

    s3_via_proxy.outage(4)
    pafs.copy_files(
        str(tmp_path / "checkpoint"), f"{path}/run/checkpoint_000001", destination_filesystem=fs
    )

    client, bucket = s3_server.client(), s3_bucket.removeprefix("s3://")
    for name, data in files.items():
        key = f"runs/run/checkpoint_000001/{name}"
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_past_the_budget_the_upload_fails(s3_bucket, s3_via_proxy, tmp_path, monkeypatch):
    monkeypatch.setenv(retries.ENV, "0.5")  # 5 retries: 0.8 s
    path, fs = run_storage.for_ray(f"{s3_bucket}/runs")
    _checkpoint(tmp_path / "checkpoint")
    s3_via_proxy.outage(None)
    with pytest.raises(OSError, match="(?i)connect"):
        pafs.copy_files(
            str(tmp_path / "checkpoint"), f"{path}/run/checkpoint_1", destination_filesystem=fs
        )
