"""A shard split's files checked against its manifest (`mrcnn.data.shards`): what the reader
does with a split that is damaged.

A split whose files are not what its manifest says raises `ShardReadError`, a `ValueError` (a
stage prints it as one line), naming the file and ending with how to rebuild it (`REBUILD`;
the shards stage rebuilds exactly the shards whose bytes no longer match their record). No
sample is ever skipped in silence: a damaged shard is data loss the user has to know about.

    opening a split     the manifest (JSON, format, its own sha256 `content_sha256`, the keys
                        the reader uses), index.npy (an integer [N, 8] array whose every byte
                        range lies inside its shard) and, for a local split, every listed
                        shard present at its recorded size (`read_manifest`, `read_index`,
                        `check_local_shards`)
    ShardDataset.verify the sha256 of the index and of every shard (`verify_files`; the train
                        and evaluate stages run it before any work)
    reading a sample    its json, image and mini-masks must decode (`ShardDataset.decode`; a
                        PNG's chunk CRCs are checked first, `check_png`); byte damage that
                        still decodes (inside JPEG data) is what `verify` is for
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn.data.layout import MANIFEST
from mrcnn.fileio import file_digest, json_digest

FORMAT = "mrcnn-shards"
FORMAT_VERSION = 1
INDEX = "index.npy"
INDEX_WIDTH = 8  # columns of index.npy (`mrcnn.data.shards.INDEX_COLUMNS`)
# The manifest's own checksum: sha256 of its canonical JSON without this key (`manifest_digest`;
# manifests written before it have none and are read unchecked).
MANIFEST_DIGEST = "content_sha256"
REBUILD = "rebuild the split: `python -m pipeline.shards` (or `dvc repro shards`)"


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ShardReadError(ValueError):
    """A split's files are damaged or not what its manifest says (truncated, corrupted, missing,
    or a manifest / index that cannot be read). The message names the file and ends with how to
    rebuild the split."""


# What the reader needs of a manifest: key -> type (the rest is information for people).
_MANIFEST_KEYS = {
    "shards": list,
    "image_size": int,
    "mini_mask_shape": int,
    "num_classes": int,
    "class_names": list,
}


def read_manifest(data: bytes, where: str) -> dict[str, Any]:
    """A manifest's bytes -> the dict, checked for what the reader uses, else ShardReadError."""
    if not data.strip():
        raise ShardReadError(f"{where} is empty; {REBUILD}")
    try:
        manifest = json.loads(data)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ShardReadError(f"{where} is not valid JSON ({first_line(e)}); {REBUILD}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardReadError(f"{where}: not a {FORMAT} v{FORMAT_VERSION} manifest; {REBUILD}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardReadError(f"{where}: not a {FORMAT} v{FORMAT_VERSION} manifest; {REBUILD}")
    for key, kind in _MANIFEST_KEYS.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ShardReadError(f"{where}: '{key}' is missing or not a {kind.__name__}; {REBUILD}")
    digest = manifest.get(MANIFEST_DIGEST)
    if digest is not None and digest != manifest_digest(manifest):
        raise ShardReadError(
            f"{where} does not match its own {MANIFEST_DIGEST} (edited or damaged); {REBUILD}"
        )
    # What the reader uses, checked against the copies beside it (the writer's params, the
    # class names): all a manifest written before its digest existed can be checked with.
    params = manifest.get("params") if isinstance(manifest.get("params"), dict) else {}
    for key in ("image_size", "mini_mask_shape"):
        if manifest[key] < 1 or params.get(key, manifest[key]) != manifest[key]:
            raise ShardReadError(f"{where}: '{key}' differs from 'params.{key}'; {REBUILD}")
    if manifest["num_classes"] != len(manifest["class_names"]):
        raise ShardReadError(
            f"{where}: 'num_classes' is not the number of 'class_names'; {REBUILD}"
        )
    for i, s in enumerate(manifest["shards"]):
        ok = isinstance(s, dict) and isinstance(s.get("file"), str) and s["file"]
        ok = ok and "/" not in s["file"] and s["file"] not in (".", "..")
        ok = ok and isinstance(s.get("bytes"), int) and isinstance(s.get("sha256"), str)
        if not ok:
            raise ShardReadError(f"{where}: shard entry {i} is malformed ({s!r:.80}); {REBUILD}")
    return manifest


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys), leaving out `MANIFEST_DIGEST`."""
    return json_digest({k: v for k, v in manifest.items() if k != MANIFEST_DIGEST})


def sample_meta(data: bytearray) -> dict[str, Any]:
    """A sample's json member -> dict (ValueError when it is not a json object)."""
    meta = json.loads(data)
    if not isinstance(meta, dict):
        raise ValueError(f"the sample's json is a {type(meta).__name__}, not an object")
    return meta


def first_line(error: BaseException) -> str:
    text = str(error).strip().split("\n")[0][:160]
    return text or type(error).__name__


def read_index(data: bytes, shard_bytes: Sequence[int], where: str) -> np.ndarray:
    """index.npy's bytes -> int [num_samples, 8], every byte range inside its shard
    (`shard_bytes`: the manifest's size of each shard), else ShardReadError."""
    try:
        index = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # numpy answers a damaged .npy with ValueError, EOFError, ...
        raise ShardReadError(f"{where} cannot be read ({first_line(e)}); {REBUILD}") from None
    if (
        not isinstance(index, np.ndarray)
        or index.ndim != 2
        or index.shape[1] != INDEX_WIDTH
        or index.dtype.kind not in "iu"
    ):
        raise ShardReadError(
            f"{where} is not an integer [N, {INDEX_WIDTH}] index (got {index.dtype} "
            f"{list(index.shape)}); {REBUILD}"
        )
    index = index.astype(np.int64, copy=False)
    sizes = np.array([*shard_bytes, 0], dtype=np.int64)  # the extra 0: row of a bad shard number
    shard = index[:, 0]
    ranges = index[:, 2:].reshape(-1, 3, 2)  # [N, (json, image, masks), (offset, size)]
    bad = (shard < 0) | (shard >= len(shard_bytes))
    size = sizes[np.where(bad, -1, shard)][:, None, None]
    # Offset and length each within the shard first: then their sum cannot overflow int64 (two
    # huge values whose sum wraps negative would pass, and `bytearray(length)` fail).
    bad |= ((ranges < 0) | (ranges > size)).any(axis=(1, 2))
    bad |= (ranges[..., 0] + ranges[..., 1] > size[..., 0]).any(axis=1)
    if bad.any():
        raise ShardReadError(
            f"{where}: sample {int(np.argmax(bad))} points outside the shards the manifest lists "
            f"({int(bad.sum())} such samples); {REBUILD}"
        )
    return index


def check_local_shards(root: Path, shards: list[dict[str, Any]]) -> None:
    """Every shard the manifest lists is in `root`, at the size it was written with."""
    for s in shards:
        path = root / s["file"]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ShardReadError(f"{path} is missing (listed in {MANIFEST}); {REBUILD}") from None
        if size != s["bytes"]:
            raise ShardReadError(
                f"{path} has {size} bytes, {MANIFEST} says {s['bytes']} (truncated or "
                f"overwritten); {REBUILD}"
            )


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    """The sha256 of index.npy and of every shard in `root` against `manifest`."""
    index = manifest.get("index")
    files = [(root / INDEX, index.get("sha256") if isinstance(index, dict) else None)]
    files += [(root / s["file"], s["sha256"]) for s in manifest["shards"]]
    for path, expected in files:
        if expected is not None and file_digest(path) != expected:
            raise ShardReadError(
                f"{path} does not match its sha256 in {MANIFEST} (corrupted or changed since "
                f"the split was built); {REBUILD}"
            )


def check_png(data: bytes | bytearray) -> None:
    """Raise `ValueError` unless every chunk of the PNG `data` is whole and matches its CRC, up
    to IEND. torchvision 0.29's PNG decoder ends the process (SIGSEGV, after "libpng error:
    IDAT: incorrect data check") on a damaged IDAT stream instead of raising, so a damaged
    shard image must be stopped before it. About 1 ms per MB (zlib's crc32)."""
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(view):
        length = int.from_bytes(view[pos : pos + 4], "big")
        end = pos + 12 + length  # length, type, data, crc
        kind = bytes(view[pos + 4 : pos + 8])
        if end > len(view):
            raise ValueError(f"PNG chunk {kind!r} runs past the end of the image (truncated)")
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            raise ValueError(f"PNG chunk {kind!r} at byte {pos} fails its CRC")
        if kind == b"IEND":
            return
        pos = end
    raise ValueError("PNG without its IEND chunk (truncated)")
