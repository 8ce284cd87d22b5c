"""Files: atomic writes (a reader, or a crash, never sees a half-written file) and digests.

Each writer writes to a hidden temporary name beside the target, flushes it to disk, then
renames it over the target (`os.replace` is atomic within a filesystem). The digests are the one
place the project hashes files and JSON values (shard checksums, run names, registry tags).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """`data` as JSON at `path` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=indent)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def save_png_atomic(image: np.ndarray, path: str | Path) -> Path:
    """A uint8 H x W x 3 (or H x W) array as a PNG at `path` (parents created)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`text` at `path` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def replace_dir(new: str | Path, target: str | Path) -> Path:
    """Put the folder `new` in the place of `target` (whose old content is removed): `target`
    is renamed aside, `new` renamed in, then the old one deleted, so a crash leaves either the
    old or the new folder at `target` (or the old one beside it as `.<name>.old`)."""
    new, target = Path(new), Path(target)
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks (`algorithm`: sha256 or md5, the
    latter where a published checksum is md5, e.g. COCO's archives)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_digest(value: Any, algorithm: str = "sha256", length: int | None = None) -> str:
    """Hex digest of canonical JSON (sorted keys, no spaces): equal values, equal digests.
    `length` keeps the first that many hex digits (run names)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.new(algorithm, text.encode()).hexdigest()[:length]
