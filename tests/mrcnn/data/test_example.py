"""One source image -> one shard sample (`prepare_example`): the members it writes, the meta
(boxes scaled into the padded frame, labels, crowd boxes, keypoints), the mini-masks, and the
image-level skips."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from mrcnn.data.coco import ImageRecord
from mrcnn.data.example import ShardOptions, prepare_example
from mrcnn.data.minimask import make_mini_masks, unpack_mini_masks
from mrcnn.data.resize import resize_image

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 40, 50  # at image_size 25: scale 0.5, resized 20 x 25
OPTIONS = ShardOptions(image_size=25, mini_mask_shape=6, min_box_size=1.0)
LABELS = {3: 1, 7: 2}
TRI = [[4.0, 6.0, 30.0, 8.0, 12.0, 34.0]]


def _ann(ann_id, segm, cat=3, **extra) -> dict:
    return {"id": ann_id, "category_id": cat, "segmentation": segm, "iscrowd": 0, **extra}


@pytest.fixture()
def image_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(pixels).convert("L").save(tmp_path / "gray.png")
    return tmp_path


def _members(example) -> dict[str, bytes]:
    return dict(example.members)


def _meta(example) -> dict:
    return json.loads(_members(example)[f"{example.key}.json"])


def test_one_image_becomes_meta_pixels_and_mini_masks(image_dir):
    crowd = [[40, 30, 49, 30, 49, 39, 40, 39]]
    kps = [10.0, 12.0, 2, 0.0, 0.0, 0]
    record = ImageRecord(
        42,
        "a.png",
        H,
        W,
        [
            _ann(1, TRI, keypoints=kps),
            _ann(2, crowd, cat=7, iscrowd=1, keypoints=kps),
            _ann(3, [[30, 2, 48, 2, 48, 20, 30, 20]], cat=7, keypoints=kps),
        ],
    )
    example, skips = prepare_example(record, image_dir, LABELS, OPTIONS)
    assert skips == []
    assert example.key == "000000000042"
    assert [name for name, _ in example.members] == [
        "000000000042.json",
        "000000000042.png",  # a PNG source stays PNG
        "000000000042.minimasks.npy",
    ]
    assert (example.labels, example.num_crowd, example.converted) == ([1, 2], 1, None)

    meta = _meta(example)
    rles = [mask_utils.merge(mask_utils.frPyObjects(p, H, W)) for p in (TRI, crowd)]
    boxes = []
    for rle in rles:
        x, y, w, h = mask_utils.toBbox(rle)
        boxes.append([x, y, x + w, y + h])
    assert meta["image_id"] == 42 and meta["file_name"] == "a.png"
    assert meta["original_size"] == [H, W] and meta["scale"] == 0.5
    assert meta["window"] == [0, 0, 20, 25]
    assert meta["labels"] == [1, 2] and meta["category_ids"] == [3, 7]
    assert meta["annotation_ids"] == [1, 3]
    np.testing.assert_allclose(meta["boxes"][0], np.array(boxes[0]) * 0.5)
    np.testing.assert_allclose(meta["crowd_boxes"], [np.array(boxes[1]) * 0.5])
    # keypoints: x, y scaled with the image, visibility kept (crowd regions have none)
    assert meta["keypoints"][0] == [[5.0, 6.0, 2.0], [0.0, 0.0, 0.0]]
    assert meta["converted"] is None

    png = np.asarray(Image.open(io.BytesIO(_members(example)["000000000042.png"])))
    original = np.asarray(Image.open(image_dir / "a.png"))
    np.testing.assert_array_equal(png, resize_image(original, 20, 25))

    packed = np.load(io.BytesIO(_members(example)["000000000042.minimasks.npy"]))
    mini = unpack_mini_masks(packed, 6)
    full = mask_utils.decode(rles[0]).astype(bool)
    x1, y1, x2, y2 = (int(v) for v in boxes[0])
    local = np.array([[0, 0, x2 - x1, y2 - y1]], np.float32)
    expected = make_mini_masks(np.ascontiguousarray(full[y1:y2, x1:x2])[None], local, 6)
    assert mini.shape == (2, 6, 6)
    np.testing.assert_array_equal(mini[0], expected[0])
    assert mini[0].sum() > 5 and not mini[0].all()  # a triangle, not a block


def test_image_format_follows_the_source_or_the_option(image_dir):
    record = ImageRecord(1, "a.jpg", H, W, [_ann(1, TRI)])
    example, _ = prepare_example(record, image_dir, LABELS, OPTIONS)
    assert example.members[1][0] == "000000000001.jpg"
    assert example.members[1][1][:2] == b"\xff\xd8"  # JPEG magic
    as_png = ShardOptions(**{**OPTIONS.__dict__, "image_format": "png"})
    example, _ = prepare_example(record, image_dir, LABELS, as_png)
    assert example.members[1][0] == "000000000001.png"
    assert example.members[1][1][:4] == b"\x89PNG"


def test_a_converted_image_is_noted(image_dir):
    record = ImageRecord(1, "gray.png", None, None, [_ann(1, TRI)])  # no size in the entry
    example, skips = prepare_example(record, image_dir, LABELS, OPTIONS)
    assert skips == [] and example.converted == "grayscale"
    assert _meta(example)["converted"] == "grayscale"


def test_boxes_thinner_than_min_box_size_after_resizing_are_skipped(image_dir):
    thin = [[10, 10, 11.8, 10, 11.8, 30, 10, 30]]  # 2 px wide -> 1 px at scale 0.5
    record = ImageRecord(1, "a.png", H, W, [_ann(1, TRI), _ann(2, thin)])
    example, skips = prepare_example(record, image_dir, LABELS, OPTIONS)
    assert _meta(example)["annotation_ids"] == [1, 2]
    strict = ShardOptions(**{**OPTIONS.__dict__, "min_box_size": 1.5})
    example, skips = prepare_example(record, image_dir, LABELS, strict)
    assert _meta(example)["annotation_ids"] == [1]
    assert [(s.reason, s.annotation_id, s.detail) for s in skips] == [
        ("box_too_small", 2, "1.00x10.00 px")
    ]


@pytest.mark.parametrize(
    ("record", "reasons"),
    [
        (ImageRecord(1, "missing.png", H, W, [_ann(1, TRI)]), ["missing_image"]),
        (ImageRecord(1, "a.png", W, H, [_ann(1, TRI)]), ["image_size_mismatch"]),
        (ImageRecord(1, "a.png", H, W, []), ["no_annotations"]),
        (
            ImageRecord(1, "a.png", H, W, [_ann(1, [[1, 2, 3]])]),
            ["invalid_polygon", "no_valid_annotations"],
        ),
    ],
)
def test_images_left_out_and_why(image_dir, record, reasons):
    example, skips = prepare_example(record, image_dir, LABELS, OPTIONS)
    assert example is None
    assert [s.reason for s in skips] == reasons
    assert all(s.image_id == 1 for s in skips)


def test_negatives_kept_when_asked(image_dir):
    keep = ShardOptions(**{**OPTIONS.__dict__, "keep_negatives": True})
    example, skips = prepare_example(ImageRecord(1, "a.png", H, W, []), image_dir, LABELS, keep)
    assert skips == [] and example.labels == []
    meta = _meta(example)
    assert meta["boxes"] == [] and meta["labels"] == [] and meta["crowd_boxes"] == []
    packed = np.load(io.BytesIO(_members(example)["000000000001.minimasks.npy"]))
    assert packed.shape[0] == 0
