"""A checkpoint's files on storage: each rank's upload (`upload`, manifest last) and the check
that a checkpoint folder is whole before a run resumes from it (`incomplete`).

Naming: a rank's *manifest* `manifest_rank<r>.json` lists the files that rank put into the
checkpoint, each with its size and sha256, and the run's world size; rank 0's lists the
training state `state.pt`. A checkpoint folder is *complete* when rank 0's manifest is there,
the manifests of ranks 1..world-1 too, and every file they list has its size and sha256.

Why: Ray Train merges every rank's upload into one folder of the run's storage, file by file.
A worker that dies mid-upload leaves a partial folder: locally a truncated file (what was
written before the kill), in object storage the objects finished before it (an S3 object
appears whole or not at all), and Ray never registers it; but `resume_state` also looks at
folders Ray had not registered yet (a worker killed just after its upload), and a folder missing
one rank's RNG state still loads, silently resuming with fresh randomness. The manifest is
uploaded last, so its presence means its rank's upload ran to the end; its sizes and sha256
catch a file damaged since (or cut by a copy that reported success).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mrcnn.fileio import file_digest
from pipeline.training import faults

STATE_FILE = "state.pt"
CHUNK = 8 << 20  # bytes per write of an upload


def manifest_name(rank: int) -> str:
    return f"manifest_rank{rank}.json"


def write_manifest(folder: Path, rank: int, world: int) -> None:
    """Record every file of `folder` (this rank's part of a checkpoint) in its manifest."""
    files = {
        f.name: {"size": f.stat().st_size, "sha256": file_digest(f)}
        for f in sorted(folder.iterdir())
        if f.is_file()
    }
    manifest = {"rank": rank, "world": world, "files": files}
    (folder / manifest_name(rank)).write_text(json.dumps(manifest, indent=1))


def has_manifest(folder: Path) -> bool:
    """Whether any rank wrote a manifest into `folder` (checkpoints from before manifests have
    none)."""
    return any(folder.glob("manifest_rank*.json"))


def incomplete(folder: Path) -> str | None:
    """Why the checkpoint `folder` (a local folder, or the local copy of a stored one) is not
    whole, or None when every rank's manifest is there and every file has its size and
    sha256."""
    try:
        world = int(_manifest(folder, 0)["world"])
        listed = [item for r in range(world) for item in _manifest(folder, r)["files"].items()]
    except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
        return str(e)
    for name, want in listed:
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{name} has {size} of its {want['size']} bytes"
        if file_digest(f) != want["sha256"]:
            return f"{name} does not match its sha256"
    return None


def _manifest(folder: Path, rank: int) -> dict[str, Any]:
    path = folder / manifest_name(rank)
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} (rank {rank}'s upload did not finish)")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path.name} is unreadable ({e})") from e


def upload_order(folder: Path, rank: int) -> list[Path]:
    """This rank's files in the order they are uploaded: the training state first (the longest
    upload), the small files after it, the manifest last."""
    manifest = folder / manifest_name(rank)
    rest = sorted(f for f in folder.iterdir() if f.name not in (STATE_FILE, manifest.name))
    state = [folder / STATE_FILE] if (folder / STATE_FILE).is_file() else []
    return [*state, *rest, manifest]


def upload(folder: Path, fs: Any, dest: str, rank: int, iteration: int) -> None:
    """Copy this rank's checkpoint files from `folder` to `dest` on the pyarrow filesystem `fs`
    (Ray Train's storage of the run), in `upload_order`. A test's fault (`faults.upload_cut`)
    may kill this worker part-way, as a lost node would."""
    cut = faults.upload_cut(faults.load(), rank, iteration)
    fs.create_dir(dest, recursive=True)
    for f in upload_order(folder, rank):
        size = f.stat().st_size
        limit = cut.bytes_of(f.name, size) if cut else None
        with f.open("rb") as src, fs.open_output_stream(f"{dest}/{f.name}") as out:
            if limit is None:
                shutil.copyfileobj(src, out, CHUNK)
                continue
            out.write(src.read(limit))
            if limit < size:  # killed mid-file: the stream is never closed
                out.flush()
                cut.kill()
        if limit is not None:  # killed after this whole file: nothing after it arrives
            cut.kill()
