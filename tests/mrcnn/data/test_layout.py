"""`mrcnn.data.layout`: the COCO-layout folder and the shard manifest, named once."""

from __future__ import annotations

import json
from pathlib import Path

from mrcnn.data import layout
from mrcnn.data.shapes import ShapesSpec, write_split


def test_paths_of_the_coco_layout():
    assert layout.SPLITS == ("train", "val")
    assert layout.annotation_file("/d", "val") == Path("/d/annotations/instances_val.json")
    assert layout.image_dir("/d", "train") == Path("/d/train")
    assert layout.MANIFEST == "manifest.json"


def test_the_shapes_writer_writes_the_layout(tmp_path: Path):
    spec = ShapesSpec(num_train=2, num_val=1, image_size=64, min_size=6, max_size=10)
    write_split(spec, tmp_path, "val")
    doc = json.loads(layout.annotation_file(tmp_path, "val").read_text())
    names = sorted(p.name for p in layout.image_dir(tmp_path, "val").iterdir())
    assert names == [im["file_name"] for im in doc["images"]] and len(names) == 1
