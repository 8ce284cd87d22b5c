"""Atomic writes (the old file stays whole until the new one replaces it) and the digests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrcnn.fileio import (
    file_digest,
    json_digest,
    replace_dir,
    save_png_atomic,
    write_json_atomic,
    write_text_atomic,
)


def test_write_json_atomic(tmp_path):
    path = tmp_path / "a" / "b" / "x.json"
    assert write_json_atomic(path, {"k": [1, 2]}) == path
    assert path.read_text() == '{\n  "k": [\n    1,\n    2\n  ]\n}\n'
    write_json_atomic(path, {"k": 3}, indent=None)
    assert path.read_text() == '{"k": 3}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]  # no temporary left


def test_a_failed_json_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"old": True})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"new": object()})  # fails half-way through the dump
    assert json.loads(path.read_text()) == {"old": True}


def test_write_text_atomic(tmp_path):
    path = tmp_path / "new" / "t.txt"
    write_text_atomic(path, "one\n")
    write_text_atomic(path, "two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["t.txt"]


def test_save_png_atomic_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = save_png_atomic(rgb, tmp_path / "d" / "x.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)
    gray = rgb[..., 0]
    save_png_atomic(gray, path)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), gray)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*.txt")}


def test_replace_dir(tmp_path):
    target = tmp_path / "reports"
    (target / "sub").mkdir(parents=True)
    (target / "old.txt").write_text("old")
    (target / "sub" / "deep.txt").write_text("deep")
    new = tmp_path / ".reports.tmp"
    new.mkdir()
    (new / "new.txt").write_text("new")
    assert replace_dir(new, target) == target
    assert _tree(target) == {"new.txt": "new"} and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]  # no .reports.old left
    # Over the leftover of a crashed swap (the old folder renamed aside, never deleted).
    (tmp_path / ".reports.old").mkdir()
    (tmp_path / ".reports.old" / "stale.txt").write_text("stale")
    again = tmp_path / "again"
    again.mkdir()
    (again / "a.txt").write_text("a")
    replace_dir(again, target)
    assert _tree(target) == {"a.txt": "a"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]
    # Into a place that does not exist yet.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "f.txt").write_text("f")
    replace_dir(fresh, tmp_path / "other")
    assert _tree(tmp_path / "other") == {"f.txt": "f"}


def test_file_digest_reads_in_chunks_like_hashlib(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 3 * (1 << 20) + 17, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    assert file_digest(path, "md5") == hashlib.md5(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_digest(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_json_digest_is_canonical():
    a = json_digest({"b": 1, "a": [1, {"y": 2, "x": 1}]})
    assert a == json_digest({"a": [1, {"x": 1, "y": 2}], "b": 1})
    assert a == hashlib.sha256(b'{"a":[1,{"x":1,"y":2}],"b":1}').hexdigest()
    assert a != json_digest({"b": 2, "a": [1, {"x": 1, "y": 2}]})
    assert json_digest({"p": Path("/x")}) == json_digest({"p": "/x"})  # default=str
    assert json_digest([1], length=8) == json_digest([1])[:8]
    assert json_digest([1], "md5") == hashlib.md5(b"[1]").hexdigest()
