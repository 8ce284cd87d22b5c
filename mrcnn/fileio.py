"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Each writes to a hidden temporary name beside the target, flushes it to disk, then renames it
over the target (`os.replace` is atomic within a filesystem).
"""

from __future__ import annotations

import json
import os
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
