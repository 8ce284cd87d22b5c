"""The val split's original COCO annotations (the ground truth AP is scored against): where they
are and the check that they are the ones its shards were built from. One home for periodic
validation (`pipeline.training.periodic_eval`) and the evaluate stage.

A split written to object storage by `pipeline.shards --out s3://...` holds a copy beside its
shards (`annotations.json`, `mrcnn.data.shards.GROUND_TRUTH`); a split in a folder names its
file in the manifest (`source.annotations`). Either is checked against the manifest's
`source.annotations_sha256`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

from mrcnn.data import ShardDataset, storage
from mrcnn.data.shards import GROUND_TRUTH


def val_annotations(
    shards: storage.Location,
    needed_by: str = "train.eval_every",
    otherwise: str = "set train.eval_every: 0",
) -> str:
    """Where the val split's original COCO annotations are, as a URL or an absolute path:
    `<shards>/val/annotations.json` when the split holds a copy, else (shards in a folder) the
    file its manifest records. Shards at a URL without the copy raise, naming `needed_by` and
    the command that writes the copy (then `otherwise`, if given): the driver's disk is not the
    workers'. The one place both periodic validation and the evaluate stage find them."""
    split = storage.join(shards, "val")
    beside = storage.join(split, GROUND_TRUTH)
    if storage.exists(beside):
        return str(beside)
    if storage.is_url(shards):
        raise FileNotFoundError(
            f"{needed_by} needs the val annotations in {beside}, beside the shards (no local "
            "copy is read for shards in object storage): write the shards there with "
            f"`python -m pipeline.shards --out {shards}`, which uploads them"
            + (f", or {otherwise}" if otherwise else "")
        )
    manifest = ShardDataset(split).manifest
    path = Path(manifest["source"]["annotations"])
    if not path.is_absolute():  # recorded relative to the project root (shards = root/data/shards)
        path = Path(shards).resolve().parent.parent / path
    if not path.is_file():
        raise FileNotFoundError(
            f"train.eval_every needs the val annotations {path} (run the download stage)"
        )
    return str(path)


def load_ground_truth(location: storage.Location, manifest: dict[str, Any]) -> Any:
    """The COCO annotations at a path or URL as a pycocotools `COCO`, after checking them
    against the sha256 the split's manifest recorded when it was built (ValueError if not)."""
    from pycocotools.coco import COCO

    data = storage.read_bytes(location)
    expected = (manifest.get("source") or {}).get("annotations_sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(
            f"{location} is not the annotation file the val shards were built from (its sha256 "
            "differs from their manifest's): rebuild the shards (`dvc repro shards`)"
        )
    gt = COCO()
    gt.dataset = json.loads(data)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints
        gt.createIndex()
    return gt
