"""pipeline.download: COCO over a local HTTP server (resume, checksums, zip-slip), shapes, local."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrcnn.data.shapes import ShapesSpec
from mrcnn.fileio import file_digest
from pipeline.fetch import (
    ChecksumError,
    RemoteFile,
    UnsafeArchiveError,
    download_file,
)
from pipeline.params import DataParams, Params
from pipeline.stages.download import DownloadPaths
from pipeline.stages.download import run as run_stage


def run(data: DataParams, out: Path, **paths) -> dict:
    """The stage on `data` alone, writing `out/<source>/`."""
    return run_stage(Params(data=data), DownloadPaths(out=out, **paths))


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def make_coco_archives(root: Path, extra_entry: str | None = None) -> dict[str, RemoteFile]:
    """Write a tiny val2017.zip + annotations zip in COCO's layout; -> the file table."""
    (root / "zips").mkdir()
    (root / "annotations").mkdir()
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 40, "width": 60} for i in (1, 2)]
    with zipfile.ZipFile(root / "zips" / "val2017.zip", "w") as zf:
        for k, im in enumerate(images):
            zf.writestr(f"val2017/{im['file_name']}", _jpeg(k))
        zf.writestr("val2017/filler.bin", np.random.default_rng(0).bytes(300_000))  # size
        if extra_entry:
            zf.writestr(extra_entry, b"gotcha")
    doc = {
        "images": images,
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": 100,
                "bbox": [5, 5, 10, 10],
                "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]],
            }
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    with zipfile.ZipFile(root / "annotations" / "annotations_trainval2017.zip", "w") as zf:
        zf.writestr("annotations/instances_val2017.json", json.dumps(doc))
        zf.writestr("annotations/captions_val2017.json", "{}")
    table = {}
    for key, rel in [
        ("val", "zips/val2017.zip"),
        ("annotations", "annotations/annotations_trainval2017.zip"),
    ]:
        p = root / rel
        table[key] = RemoteFile(rel, p.stat().st_size, file_digest(p, "md5"))
    table["train"] = RemoteFile("zips/train2017.zip", 1, "0" * 32)  # never requested
    return table


def _run_coco(server, tmp_path, table):
    params = DataParams(source="coco", coco_base_url=server.url, splits=("val",))
    return run(params, tmp_path / "raw", cache=tmp_path / "dl", coco_files=table)


def test_coco_val_download_extract_layout_and_idempotence(http_server, tmp_path):
    table = make_coco_archives(http_server.state.root)
    summary = _run_coco(http_server, tmp_path, table)
    target = tmp_path / "raw" / "coco"
    assert sorted(p.name for p in (target / "val").iterdir()) == [
        "000000000001.jpg",
        "000000000002.jpg",
        "filler.bin",
    ]
    assert sorted(p.name for p in (target / "annotations").iterdir()) == ["instances_val.json"]
    assert summary["splits"]["val"] == {"images": 2, "instances": 1, "ignored_regions": 0}
    assert not (target / "train").exists()
    requests = len(http_server.state.requests)
    assert requests == 2
    _run_coco(http_server, tmp_path, table)  # finished: nothing is fetched again
    assert len(http_server.state.requests) == requests


def test_dropped_connection_resumes_with_a_range_request(http_server, tmp_path):
    table = make_coco_archives(http_server.state.root)
    http_server.state.cut_first_request_at["zips/val2017.zip"] = 100_000
    _run_coco(http_server, tmp_path, table)
    val = [r for p, r in http_server.state.requests if p == "zips/val2017.zip"]
    assert val == [None, "bytes=100000-"]
    assert http_server.state.bytes_sent["zips/val2017.zip"] == table["val"].size  # no byte twice
    assert file_digest(tmp_path / "dl" / "val2017.zip", "md5") == table["val"].md5


def test_a_part_left_by_a_killed_run_is_resumed(http_server, tmp_path):
    table = make_coco_archives(http_server.state.root)
    data = (http_server.state.root / "zips" / "val2017.zip").read_bytes()
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "val2017.zip.part").write_bytes(data[:123_456])
    _run_coco(http_server, tmp_path, table)
    val = [r for p, r in http_server.state.requests if p == "zips/val2017.zip"]
    assert val == ["bytes=123456-"]
    assert (tmp_path / "raw" / "coco" / "val" / "000000000001.jpg").is_file()
    assert not (tmp_path / "dl" / "val2017.zip.part").exists()


def test_checksum_mismatch_is_a_clear_error_and_nothing_is_extracted(http_server, tmp_path):
    table = make_coco_archives(http_server.state.root)
    table["val"] = RemoteFile(table["val"].path, table["val"].size, "0123456789abcdef" * 2)
    with pytest.raises(ChecksumError, match=r"val2017\.zip: md5 .* != expected 0123"):
        _run_coco(http_server, tmp_path, table)
    assert not (tmp_path / "raw" / "coco" / "val").exists()
    assert sorted(os.listdir(tmp_path / "dl")) == ["annotations_trainval2017.zip"]  # no part
    bad_size = RemoteFile(table["val"].path, table["val"].size + 1, None)
    with pytest.raises(ChecksumError, match="size"):
        download_file(
            f"{http_server.url}/{bad_size.path}",
            tmp_path / "x.zip",
            size=bad_size.size,
            md5=None,
            sleep=lambda s: None,
        )
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "x.zip.part").exists()


@pytest.mark.parametrize("entry", ["../evil.txt", "val2017/../../evil.txt", "/tmp/evil.txt"])
def test_archive_escaping_the_target_is_refused(http_server, tmp_path, entry):
    table = make_coco_archives(http_server.state.root, extra_entry=entry)
    with pytest.raises(UnsafeArchiveError, match="refusing entry"):
        _run_coco(http_server, tmp_path, table)
    assert not (tmp_path / "raw" / "coco" / "val").exists()
    assert not list(tmp_path.rglob("evil.txt")) and not Path("/tmp/evil.txt").exists()


def test_shapes_source_writes_the_layout_once(tmp_path):
    spec = ShapesSpec(num_train=6, num_val=3, image_size=64, min_size=5, max_size=12)
    params = DataParams(source="shapes", shapes=spec)
    summary = run(params, tmp_path / "raw")
    root = tmp_path / "raw" / "shapes"
    assert summary["splits"]["train"]["images"] == 6 and summary["splits"]["val"]["images"] == 3
    assert len(list((root / "train").glob("*.png"))) == 6
    stamp = (root / "annotations" / "instances_val.json").stat().st_mtime_ns
    run(params, tmp_path / "raw")
    assert (root / "annotations" / "instances_val.json").stat().st_mtime_ns == stamp


def test_local_source_is_validated_and_linked(tmp_path):
    spec = ShapesSpec(num_train=4, num_val=2, image_size=64, min_size=5, max_size=12)
    run(DataParams(source="shapes", shapes=spec), tmp_path / "mine")
    user = tmp_path / "mine" / "shapes"
    summary = run(DataParams(source="local", local_dir=str(user)), tmp_path / "raw")
    assert summary["splits"]["train"]["images"] == 4
    linked = tmp_path / "raw" / "local" / "train" / "000000000001.png"
    assert linked.read_bytes() == (user / "train" / "000000000001.png").read_bytes()
    (user / "annotations" / "instances_val.json").unlink()
    with pytest.raises(FileNotFoundError, match="instances_val.json"):
        run(DataParams(source="local", local_dir=str(user)), tmp_path / "raw2")
    assert not (tmp_path / "raw2" / "local").exists()


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (`"counts": [...]`, what `iscrowd: 1` records and CVAT's mask
    exports hold): column-major runs, starting with the zeros."""
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def test_local_coco_with_uncompressed_crowd_rle_converts_like_pycocotools(tmp_path):
    """Issue 23's regression: crowd annotations with list counts crashed the conversion
    (`mask_utils.toBbox` on an uncompressed RLE). They convert, stay crowd (ignore) regions as
    the shards reader treats them, and their masks are pycocotools' decoding of the source."""
    import pycocotools.mask as mask_utils
    from pycocotools.coco import COCO

    from mrcnn.data.coco import decode_instances, load_coco_split

    src = tmp_path / "user"
    h, w = 40, 60
    yy, xx = np.mgrid[0:h, 0:w]
    crowd = ((yy - 20) ** 2 + (xx - 40) ** 2 < 120).astype(np.uint8)  # a disc
    for split, first in (("train", 1), ("val", 10)):
        (src / split).mkdir(parents=True)
        images, anns = [], []
        for k in range(2):
            image_id = first + k
            Image.open(io.BytesIO(_jpeg(image_id))).save(src / split / f"{image_id}.jpg")
            images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": h, "width": w})
            anns.append(
                {
                    "id": 100 * image_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]],
                    "bbox": [5, 5, 10, 10],
                    "area": 100,
                    "iscrowd": 0,
                }
            )
            anns.append(
                {
                    "id": 100 * image_id + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": _uncompressed_rle(crowd),
                    "bbox": [29, 9, 22, 22],
                    "area": int(crowd.sum()),
                    "iscrowd": 1,
                }
            )
        (src / "annotations").mkdir(exist_ok=True)
        doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}
        (src / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    summary = run(DataParams(source="local", local_dir=str(src), local_format="auto"), tmp_path)
    assert summary["splits"]["val"] == {"images": 2, "instances": 2, "ignored_regions": 2}
    root = tmp_path / "local"
    report = json.loads((root / "conversion_report.json").read_text())
    assert report["skipped"] == {}
    assert report["splits"]["train"] == {"images": 2, "instances": 2, "ignored_regions": 2}
    reference = mask_utils.decode(mask_utils.frPyObjects(_uncompressed_rle(crowd), h, w))
    for split in ("train", "val"):
        ann_file = root / "annotations" / f"instances_{split}.json"
        parsed = load_coco_split(ann_file)
        assert parsed.skipped == []
        coco = COCO(str(ann_file))
        for record in parsed.records:
            inst, bad = decode_instances(record, h, w)
            assert bad == [] and len(inst.rles) == 1 and len(inst.crowd_boxes) == 1
            np.testing.assert_allclose(inst.crowd_boxes[0], [30, 10, 51, 31])
            (crowd_ann,) = [a for a in record.annotations if a["iscrowd"]]
            ours = coco.annToMask(crowd_ann)  # as pycocotools' own tools read the output
            iou = (ours & reference).sum() / (ours | reference).sum()
            assert iou >= 0.99
