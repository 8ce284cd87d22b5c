"""Ray Train's storage in object storage (`train.storage_path: s3://...`), riding out an outage.

Ray Train writes checkpoints and run files through a pyarrow filesystem it makes from the URL,
whose S3 client gives up after `AwsStandardS3RetryStrategy(max_attempts=3)`: about a second of
a store being unreachable loses a checkpoint upload (the worker fails; `train.max_failures`
restarts it from an older checkpoint). So `for_ray(storage_path)` hands Ray
(`RunConfig(storage_path=..., storage_filesystem=...)`) an S3 filesystem whose SDK retries with
`AwsDefaultS3RetryStrategy`: 25 ms, 50 ms, 100 ms, ... doubling, as many times as it takes to
cover `mrcnn.data.retries.budget()` (`MRCNN_STORAGE_RETRY_S`, default 120 s: 13 retries,
~205 s), the same budget as every other storage call.

pyarrow's `S3FileSystem` forgets its retry strategy when pickled (its `__reduce__` omits it), and
Ray pickles the filesystem to its controller and every worker; so Ray gets a `PyFileSystem`
around `RetryingS3`, a handler that keeps only the URL and the retry count and makes its
`S3FileSystem` in each process: the one Ray would make (`FileSystem.from_uri`: credentials,
region and `AWS_ENDPOINT_URL` from that process's environment) plus the retry strategy.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pyarrow.fs as pafs

from mrcnn.data import retries, storage

FIRST_DELAY_S = 0.025  # the AWS SDK's DefaultRetryStrategy: 25 ms * 2**k before retry k + 1


def retries_for(budget_s: float) -> int:
    """The retries of the SDK's doubling backoff that cover `budget_s` seconds of waiting."""
    return max(1, math.ceil(math.log2(budget_s / FIRST_DELAY_S + 1)))


class RetryingS3(pafs.FileSystemHandler):
    """A `PyFileSystem` handler delegating to the `S3FileSystem` of `url` with `max_attempts`
    retries (`AwsDefaultS3RetryStrategy`), made lazily in each process that uses it."""

    def __init__(self, url: str, max_attempts: int) -> None:
        self.url, self.max_attempts = url, int(max_attempts)
        self._fs: pafs.S3FileSystem | None = None
        self._pid = os.getpid()

    @property
    def fs(self) -> pafs.S3FileSystem:
        if self._fs is None or self._pid != os.getpid():
            base, _ = pafs.FileSystem.from_uri(self.url)  # what Ray would use
            # its options, as pickling spells them (S3FileSystem has no other getter for them)
            _, (options,) = base.__reduce__()
            options["retry_strategy"] = pafs.AwsDefaultS3RetryStrategy(self.max_attempts)
            self._fs, self._pid = pafs.S3FileSystem(**options), os.getpid()
        return self._fs

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "max_attempts": self.max_attempts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["max_attempts"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryingS3) and self.__getstate__() == other.__getstate__()

    def __hash__(self) -> int:
        return hash((self.url, self.max_attempts))

    def get_type_name(self) -> str:
        return "s3+retrying"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.fs.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


def for_ray(storage_path: str) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for Ray's `RunConfig`: an `s3://` URL becomes its
    path inside a retrying S3 filesystem (Ray wants the scheme stripped when it is given a
    filesystem); anything else is left to Ray as it is."""
    if not storage.is_url(storage_path) or not storage_path.startswith(("s3://", "s3a://")):
        return storage_path, None
    handler = RetryingS3(storage_path, retries_for(retries.budget()))
    return storage_path.split("://", 1)[1].rstrip("/"), pafs.PyFileSystem(handler)
