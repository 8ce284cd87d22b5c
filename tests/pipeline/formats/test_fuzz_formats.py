"""Every converter, fuzzed: generated datasets in each format with records corrupted the ways real
files are (`fuzz_writers`), converted through auto-detection as `data.local_format: auto` does.

For each example: no exception escapes; the format is detected; every valid record survives
with its mask (IoU with pycocotools' decoding >= 0.99) and its image at the size its labels
say; every invalid one is in the report with its reason, and nothing else is (the counts by
reason are equal). A dataset with nothing usable ends in one clear error and no output. A
second test mutates the label files byte by byte (truncated, flipped, BOM, emptied): the run
then ends with a complete output or one clear error, never a traceback nor a partial folder.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrcnn.data.image_file import probe
from mrcnn.data.layout import SPLITS, annotation_file, image_dir
from pipeline.formats import convert
from pipeline.formats.builder import REPORT
from tests.fuzz import fuzz, fuzz_settings
from tests.pipeline.formats.fuzz_data import images, iou, output_rle
from tests.pipeline.formats.fuzz_writers import (
    write_coco,
    write_labelme,
    write_masks,
    write_via,
    write_yolo,
)

pytestmark = [fuzz, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

WRITERS = {
    "coco": partial(write_coco, single=False),
    "coco_single": partial(write_coco, single=True),
    "labelme": write_labelme,
    "via": write_via,
    "yolo": write_yolo,
    "masks": write_masks,
}
MULTI_PART = ("coco", "coco_single", "labelme")  # formats that draw an object in several parts


def read_output(out: Path) -> dict[str, list[tuple[str, bool, dict]]]:
    """file name -> [(class name, crowd, RLE)] of the converted folder, each image checked to
    decode at the size its entry gives."""
    got = {}
    for split in SPLITS:
        doc = json.loads(annotation_file(out, split).read_text())
        names = {c["id"]: c["name"] for c in doc["categories"]}
        for im in doc["images"]:
            info = probe(image_dir(out, split) / im["file_name"])
            assert (info.height, info.width) == (im["height"], im["width"]), im
            anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
            got[im["file_name"]] = [
                (
                    names[a["category_id"]],
                    bool(a["iscrowd"]),
                    output_rle(a["segmentation"], im["height"], im["width"]),
                )
                for a in anns
            ]
            got[im["file_name"], "size"] = (im["height"], im["width"])
    return got


def convert_and_check(fmt: str, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "my dataset é"  # a path with a space and beyond ASCII
        src.mkdir()
        imgs = data.draw(images(max_parts=2 if fmt in MULTI_PART else 1), label="images")
        expect = WRITERS[fmt](data.draw, src, imgs)
        out = Path(tmp) / "out"
        if expect.error or not expect.kept:
            # one clear error, what the CLIs print
            with pytest.raises((ValueError, OSError), match=expect.error or None):
                convert(src, out, "auto")
            assert not out.exists()
            return
        summary = convert(src, out, "auto", val_fraction=0.3)
        assert summary["format"] == fmt
        report = json.loads((out / REPORT).read_text())
        assert Counter(report["skipped"]) == +expect.reasons, report["records"]
        got = read_output(out)
        assert sorted(k for k in got if isinstance(k, str)) == sorted(expect.kept)
        for name, objects in expect.kept.items():
            assert got[name, "size"] == expect.sizes[name]
            assert [(c, crowd) for c, crowd, _ in got[name]] == [(c, k) for c, k, _ in objects]
            for (_, _, ours), (_, _, reference) in zip(got[name], objects, strict=True):
                assert iou(ours, reference) >= 0.99


@fuzz_settings(40)
@given(data=st.data())
def test_coco_records(data):
    convert_and_check("coco", data)


@fuzz_settings(30)
@given(data=st.data())
def test_coco_single_records(data):
    convert_and_check("coco_single", data)


@fuzz_settings(40)
@given(data=st.data())
def test_labelme_records(data):
    convert_and_check("labelme", data)


@fuzz_settings(40)
@given(data=st.data())
def test_via_records(data):
    convert_and_check("via", data)


@fuzz_settings(40)
@given(data=st.data())
def test_yolo_records(data):
    convert_and_check("yolo", data)


@fuzz_settings(40)
@given(data=st.data())
def test_masks_records(data):
    convert_and_check("masks", data)
