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

import pycocotools.mask as mask_utils
import pytest
from hypothesis import event, given
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
        for kind in sorted({img.kind for img in imgs}):
            event(f"image kind: {kind}")
        expect = WRITERS[fmt](data.draw, src, imgs)
        out = Path(tmp) / "out"
        for reason in sorted(+expect.reasons):  # what was covered: --hypothesis-show-statistics
            event(f"reported: {reason}")
        if expect.error or not expect.kept:
            event("ends in one error")
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


@fuzz_settings(60)
@given(data=st.data())
def test_coco_records(data):
    convert_and_check("coco", data)


@fuzz_settings(40)
@given(data=st.data())
def test_coco_single_records(data):
    convert_and_check("coco_single", data)


@fuzz_settings(60)
@given(data=st.data())
def test_labelme_records(data):
    convert_and_check("labelme", data)


@fuzz_settings(60)
@given(data=st.data())
def test_via_records(data):
    convert_and_check("via", data)


@fuzz_settings(60)
@given(data=st.data())
def test_yolo_records(data):
    convert_and_check("yolo", data)


@fuzz_settings(60)
@given(data=st.data())
def test_masks_records(data):
    convert_and_check("masks", data)


# How label files are damaged on the way (a copy cut short, a bad sector, an editor's BOM).
MUTATIONS = ("truncate", "flip", "insert", "delete", "bom", "empty")


def _label_files(src: Path) -> list[Path]:
    """The files that carry the labels: json / txt / yaml, and the masks format's mask PNGs."""
    return sorted(
        p
        for p in src.rglob("*")
        if p.is_file()
        and (p.suffix in (".json", ".txt", ".yaml") or p.parent.name in ("masks", "PedMasks"))
    )


def _mutate(draw, path: Path) -> str:
    data = path.read_bytes()
    how = draw(st.sampled_from(MUTATIONS if data else ("insert", "bom")))  # empty: nothing to cut
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if how == "truncate":
        data = data[:at]
    elif how == "flip":
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    elif how == "insert":
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    elif how == "delete":
        data = data[:at] + data[at + draw(st.integers(1, 16)) :]
    elif how == "bom":
        data = b"\xef\xbb\xbf" + data
    else:
        data = b""
    path.write_bytes(data)
    return how


@fuzz_settings(90)
@given(fmt=st.sampled_from(sorted(WRITERS)), data=st.data())
def test_label_files_damaged_byte_by_byte(fmt, data):
    """Whatever the bytes of the label files, a run ends with a complete output (every image
    decodes at its entry's size, every segmentation decodes, the report counts its records) or
    one clear error and no output: never another exception, never a partial folder."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "my dataset é"
        src.mkdir()
        imgs = data.draw(images(max_parts=2 if fmt in MULTI_PART else 1), label="images")
        WRITERS[fmt](data.draw, src, imgs)
        files = _label_files(src)
        if not files:
            return
        picked = data.draw(st.lists(st.sampled_from(files), min_size=1, max_size=3, unique=True))
        for path in picked:
            event(f"mutation: {_mutate(data.draw, path)}")
        out = Path(tmp) / "out"
        try:
            summary = convert(src, out, "auto", val_fraction=0.3)
        except (ValueError, OSError) as e:  # the one line the CLIs print
            event(f"{fmt}: one error")
            assert str(e).strip()
            assert not out.exists()
            assert sorted(p.name for p in Path(tmp).iterdir()) == ["my dataset é"]  # no temp
            return
        event(f"{fmt}: converted, detected as {summary['format']}")
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["my dataset é", "out"]
        report = json.loads((out / REPORT).read_text())
        assert report["skipped"] == dict(Counter(r["reason"] for r in report["records"]))
        got = read_output(out)  # every image decodes at its size, every mask decodes
        for split, counts in summary["splits"].items():
            doc = json.loads(annotation_file(out, split).read_text())
            assert counts["images"] == len(doc["images"])
            crowd = sum(1 for a in doc["annotations"] if a["iscrowd"])  # K copies per region
            assert counts["instances"] + crowd == len(doc["annotations"])
            assert (counts["ignored_regions"] > 0) == (crowd > 0)
            assert counts["ignored_regions"] <= crowd
        assert all(
            area > 0
            for objs in got.values()
            if isinstance(objs, list)
            for area in (int(mask_utils.area(rle)) for _, _, rle in objs)
        )
