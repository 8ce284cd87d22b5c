"""The folder layouts the data moves through, named once: the COCO-layout raw folder and the
shard manifest.

    <root>/<split>/                              the images of a split (train, val)
    <root>/annotations/instances_<split>.json    its COCO instances file
    <shards>/<split>/manifest.json               a finished shard split (`mrcnn.data.shards`)

Every data source is converted to the raw layout (`mrcnn.data.shapes.write_split`, the
`pipeline.formats` converters, COCO itself), and the shards stage reads it.
"""

from __future__ import annotations

from pathlib import Path

SPLITS = ("train", "val")
ANNOTATIONS = "annotations"  # the folder of the instances files
MANIFEST = "manifest.json"  # beside a split's shards; written last, so it marks the split done


def annotation_file(root: str | Path, split: str) -> Path:
    """`<root>/annotations/instances_<split>.json`."""
    return Path(root) / ANNOTATIONS / f"instances_{split}.json"


def image_dir(root: str | Path, split: str) -> Path:
    """`<root>/<split>/`: the images `annotation_file(root, split)` names."""
    return Path(root) / split
