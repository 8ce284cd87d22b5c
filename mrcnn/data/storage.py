"""Where a split's shards live: a local folder, or a URL in an object store (`s3://bucket/prefix`).

`ShardDataset` reads a split through a `SplitReader`: `LocalSplit` (`os.pread` on descriptors
opened lazily per process) or `RemoteSplit` (ranged GETs through `fsspec`, e.g. `s3fs` for
`s3://`), optionally caching each whole tar on local disk the first time it is touched
(`cache_dir`; one copy per node, shared by the processes on it). `upload_split` copies a finished
local split to a URL, manifest last, so a reader never sees a manifest without its shards.

Credentials and endpoint come from the environment, as for any S3 client (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` for a non-AWS server, or an instance role);
`storage_options` passes anything else to `fsspec` (e.g. `{"anon": True}`).

Every call to a URL rides out an outage of the store (connection refused or dropped, timeouts,
HTTP 5xx) for `MRCNN_STORAGE_RETRY_S` seconds (default 120), then raises
`retries.StorageUnavailableError` naming the URL and the budget (`mrcnn.data.retries`).

Naming: a *location* is either a folder (`str` or `Path`) or a URL (`str` with a scheme);
`join(location, name)` works for both (`Path("s3://b/p") / "x"` would lose a slash).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from mrcnn.data import retries
from mrcnn.data.layout import MANIFEST

logger = logging.getLogger(__name__)

Location = str | Path


def is_url(location: Location) -> bool:
    """True for `scheme://...` (s3, gs, az, memory, ...), False for a folder or `file://`."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def join(location: Location, *names: str) -> str | Path:
    """`location / name / ...` for a folder (-> Path) or a URL (-> str, '/'-joined)."""
    if is_url(location):
        return "/".join([str(location).rstrip("/"), *(n.strip("/") for n in names)])
    return Path(str(location).removeprefix("file://")).joinpath(*names)


def filesystem(url: str, storage_options: dict[str, Any] | None = None):
    """(fsspec filesystem, path inside it) for `url`; a clear error when its driver is missing."""
    import fsspec

    options = dict(storage_options or {})
    if fsspec.core.split_protocol(url)[0] in ("s3", "s3a"):  # botocore: short, known retries
        options.setdefault("config_kwargs", {"retries": retries.BOTOCORE_RETRIES})
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as e:
        raise ImportError(
            f"reading {url} needs the fsspec driver for its scheme ({e}); for s3:// "
            "`pip install s3fs` (in the project: `pip install -e .[cloud]`)"
        ) from e


class SplitReader(Protocol):
    def read(self, name: str) -> bytes:
        """The whole file `name` of the split (manifest, index)."""
        ...

    def pread(self, shard: int, ranges: Sequence[tuple[int, int]]) -> list[bytearray]:
        """The bytes at each `(offset, size)` of shard number `shard`."""
        ...

    def close(self) -> None: ...


class LocalSplit:
    """A split in a local folder: `os.preadv` on per-process descriptors (fork- and spawn-safe)."""

    def __init__(self, root: Path, shard_files: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.shard_files = [self.root / f for f in shard_files]
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def pread(self, shard: int, ranges: Sequence[tuple[int, int]]) -> list[bytearray]:
        fd = self._fd(shard)
        out = []
        for offset, size in ranges:
            buf = bytearray(size)
            got = os.preadv(fd, [buf], offset)
            if got != size:
                raise OSError(f"{self.shard_files[shard]}: short read at {offset} ({got}/{size})")
            out.append(buf)
        return out

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker: the parent's descriptors are shared
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.shard_files[shard], os.O_RDONLY)
        return fd

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()


class RemoteSplit:
    """A split at a URL. Without a cache, each sample is one ranged GET (its three tar members
    are adjacent). With `cache_dir`, a shard is downloaded whole on first use, checked against
    the manifest's size and sha256, renamed into place, and then read like a local file.

    The cache folder is keyed by the URL and the manifest's sha256, so a rebuilt split never
    reads a stale tar. The filesystem object is made lazily per process (async clients such as
    s3fs's must not cross a fork)."""

    def __init__(
        self,
        url: str,
        cache_dir: Location | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = str(url).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.shards: list[dict[str, Any]] = []  # manifest["shards"], set by `bind`
        self._cached: LocalSplit | None = None
        self._fs = None
        self._pid = os.getpid()

    def bind(self, manifest_bytes: bytes, shards: list[dict[str, Any]]) -> None:
        """Learn the split's shards (file, bytes, sha256) from its manifest."""
        self.shards = shards
        if self.cache_dir is not None:
            key = hashlib.sha256(self.url.encode() + b"\0" + manifest_bytes).hexdigest()[:16]
            folder = self.cache_dir / f"{self.url.rsplit('/', 1)[-1]}-{key}"
            self._cached = LocalSplit(folder, [s["file"] for s in shards])

    def _filesystem(self):
        if self._fs is None or self._pid != os.getpid():
            self._fs, self._root = filesystem(self.url, self.storage_options)
            self._pid = os.getpid()
        return self._fs

    def _path(self, name: str) -> str:
        self._filesystem()
        return f"{self._root.rstrip('/')}/{name}"

    def read(self, name: str) -> bytes:
        fs = self._filesystem()
        return retries.call(f"{self.url}/{name}", "reading", fs.cat_file, self._path(name))

    def pread(self, shard: int, ranges: Sequence[tuple[int, int]]) -> list[bytearray]:
        if self._cached is not None:
            self._ensure_cached(shard)
            return self._cached.pread(shard, ranges)
        start = min(o for o, _ in ranges)
        end = max(o + s for o, s in ranges)
        name = self.shards[shard]["file"]
        fs, path = self._filesystem(), self._path(name)
        data = retries.call(
            f"{self.url}/{name}", "reading", fs.cat_file, path, start=start, end=end
        )
        if len(data) != end - start:
            raise OSError(f"{self.url}/{name}: short read at {start} ({len(data)}/{end - start})")
        view = memoryview(data)
        return [bytearray(view[o - start : o - start + s]) for o, s in ranges]

    def _ensure_cached(self, shard: int) -> None:
        assert self._cached is not None
        target = self._cached.shard_files[shard]
        expected = self.shards[shard]
        if target.is_file() and target.stat().st_size == expected["bytes"]:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        remote = self._path(expected["file"])
        logger.info("caching %s/%s in %s", self.url, expected["file"], target.parent)
        url = f"{self.url}/{expected['file']}"
        retries.call(url, "caching", self._filesystem().get_file, remote, str(tmp))
        digest = _sha256(tmp)
        if tmp.stat().st_size != expected["bytes"] or digest != expected["sha256"]:
            tmp.unlink(missing_ok=True)
            raise OSError(
                f"{self.url}/{expected['file']}: downloaded copy does not match the manifest "
                f"(sha256 {digest[:12]}.. != {expected['sha256'][:12]}..); the split changed "
                "while being read, or the upload is incomplete: re-upload it"
            )
        os.replace(tmp, target)  # concurrent readers may race here: each rename is whole

    def close(self) -> None:
        if self._cached is not None:
            self._cached.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()


def upload_split(
    local: Location, url: str, storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Copy a finished local split folder to `url` -> the names uploaded, in upload order: the
    shards (tars and their records) first, then the index and report, the manifest last: its
    presence marks the remote split finished, as it does a local one."""
    local = Path(local)
    manifest = local / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {local}: build the split before uploading")
    names = sorted(p.name for p in local.iterdir() if p.is_file() and not p.name.startswith("."))
    names.remove(manifest.name)
    order = sorted(names, key=lambda n: (not n.startswith("shard-"), n))
    fs, root = filesystem(url, storage_options)
    root = root.rstrip("/")
    remote_manifest = f"{root}/{manifest.name}"
    # replacing a split: readers must not mix the two
    if retries.call(join(url, manifest.name), "checking", fs.exists, remote_manifest):
        retries.call(join(url, manifest.name), "removing", fs.rm_file, remote_manifest)
    for name in [*order, manifest.name]:
        retries.call(join(url, name), "uploading", fs.put_file, str(local / name), f"{root}/{name}")
    logger.info("uploaded %d files of %s to %s", len(order) + 1, local, url)
    return [*order, manifest.name]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_bytes(location: Location) -> bytes:
    """The whole file at a path or URL (FileNotFoundError when it is not there)."""
    if is_url(location):
        fs, path = filesystem(str(location))
        return retries.call(str(location), "reading", fs.cat_file, path)
    return Path(str(location).removeprefix("file://")).read_bytes()


def read_text(location: Location) -> str:
    """The whole text file at a path or URL (FileNotFoundError when it is not there)."""
    return read_bytes(location).decode()


def exists(location: Location) -> bool:
    """Whether a file (or folder / prefix) is at a path or URL."""
    if is_url(location):
        fs, path = filesystem(str(location))
        return retries.call(str(location), "checking", fs.exists, path)
    return Path(str(location).removeprefix("file://")).exists()


def write_text(location: Location, text: str) -> None:
    """A whole text file at a path (atomically: temp file, then rename) or a URL (an object
    PUT is whole by nature)."""
    if is_url(location):
        fs, path = filesystem(str(location))
        retries.call(str(location), "writing", fs.pipe_file, path, text.encode())
        return
    from mrcnn.fileio import write_text_atomic

    write_text_atomic(Path(str(location).removeprefix("file://")), text)


def remove(location: Location) -> None:
    """Delete the file at a path or URL if it is there."""
    if is_url(location):
        if exists(location):
            fs, path = filesystem(str(location))
            retries.call(str(location), "removing", fs.rm_file, path)
        return
    Path(str(location).removeprefix("file://")).unlink(missing_ok=True)
