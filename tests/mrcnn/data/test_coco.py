"""The COCO reader on hand-written annotation files: valid records, every skip reason (entry
level in `load_coco_split`, annotation level in `decode_instances`), crowd regions kept as
boxes beside the instances, and polygon / RLE decoding against masks drawn by hand and against
pycocotools' own `annToMask`."""

from __future__ import annotations

import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO

from mrcnn.data.coco import (
    ImageRecord,
    Skip,
    class_map,
    decode_instances,
    group_reasons,
    load_coco_split,
)
from mrcnn.data.minimask import boxes_from_masks

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 20, 30
CATS = [{"id": 9, "name": "nine"}, {"id": 2, "name": "two"}]


def _write(tmp_path, doc) -> str:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    return str(path)


def _block_mask(y1, x1, y2, x2) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y1:y2, x1:x2] = 1
    return m


def _counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of a mask, by hand: column-major runs, starting with zeros."""
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return ([0] if flat[0] else []) + runs


def _ann(ann_id, segm, cat=2, **extra) -> dict:
    return {"id": ann_id, "image_id": 1, "category_id": cat, "segmentation": segm, **extra}


def _decode(*anns) -> tuple:
    return decode_instances(ImageRecord(1, "a.png", H, W, list(anns)), H, W)


def _masks(inst) -> np.ndarray:
    return np.stack([mask_utils.decode(r) for r in inst.rles]) if inst.rles else np.zeros(0)


# ---- load_coco_split ------------------------------------------------------------------------


def test_load_coco_split_keeps_valid_entries_and_names_every_skip(tmp_path):
    doc = {
        "images": [
            {"id": 3, "file_name": "c.png", "height": 10, "width": 12},
            {"id": 1, "file_name": "a.png", "height": "10", "width": 12.5},  # sizes not ints
            {"id": 3, "file_name": "again.png"},  # duplicate_image_id
            {"id": "4", "file_name": "d.png"},  # invalid_image_entry: id not an int
            {"id": True, "file_name": "e.png"},  # ... a bool is not an id either
            {"id": 5, "file_name": ""},  # ... no file name
            ["not", "a", "dict"],
        ],
        "annotations": [
            {"id": 10, "image_id": 3, "category_id": 9},
            {"id": 11, "image_id": 1, "category_id": 2},
            {"id": 12, "image_id": 3, "category_id": 2},
            {"id": 13, "image_id": 99, "category_id": 2},  # unknown_image
            {"id": 14, "image_id": "3", "category_id": 2},  # unknown_image (not an int)
            {"id": 15, "image_id": 3, "category_id": 5},  # unknown_category
            {"id": 1.5, "image_id": 3, "category_id": 2},  # invalid_annotation_entry
            "nope",  # invalid_annotation_entry
        ],
        "categories": CATS,
    }
    split = load_coco_split(_write(tmp_path, doc))
    assert [(r.image_id, r.file_name, r.height, r.width) for r in split.records] == [
        (1, "a.png", None, None),
        (3, "c.png", 10, 12),
    ]
    assert [[a["id"] for a in r.annotations] for r in split.records] == [[11], [10, 12]]
    assert split.categories == [{"id": 2, "name": "two"}, {"id": 9, "name": "nine"}]
    assert (split.num_images, split.num_annotations) == (7, 8)
    assert [(s.reason, s.image_id, s.annotation_id) for s in split.skipped] == [
        ("duplicate_image_id", 3, None),
        ("invalid_image_entry", None, None),
        ("invalid_image_entry", None, None),
        ("invalid_image_entry", None, None),
        ("invalid_image_entry", None, None),
        ("unknown_image", 99, 13),
        ("unknown_image", None, 14),
        ("unknown_category", 3, 15),
        ("invalid_annotation_entry", None, None),
        ("invalid_annotation_entry", None, None),
    ]
    assert split.skipped[7].detail == "category_id=5"
    assert split.skipped[0].file_name == "again.png"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "not a COCO instances file"),
        ({"images": [], "annotations": []}, "not a COCO instances file"),
        ({"images": [], "annotations": [], "categories": [{"id": 1}]}, "malformed category"),
        (
            {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}] * 2},
            "duplicate category id 1",
        ),
    ],
)
def test_a_file_that_is_not_coco_raises(tmp_path, doc, message):
    with pytest.raises(ValueError, match=message):
        load_coco_split(_write(tmp_path, doc))


def test_class_map_is_the_union_sorted_by_id():
    train = [{"id": 9, "name": "nine"}, {"id": 2, "name": "two"}]
    val = [{"id": 2, "name": "two"}, {"id": 4, "name": "four"}]
    assert class_map([train, val]) == [(2, "two"), (4, "four"), (9, "nine")]
    with pytest.raises(ValueError, match="category 2 is 'two' in one split and 'deux'"):
        class_map([train, [{"id": 2, "name": "deux"}]])


# ---- decode_instances: decoding --------------------------------------------------------------


def test_polygons_decode_as_pycocotools_draws_them(tmp_path):
    """Two instances, one of two polygons: the masks are pycocotools' `annToMask` of the same
    annotations, and the boxes are the masks' tight boxes (x2, y2 exclusive)."""
    tri = [[2.0, 2.0, 12.5, 3.0, 6.0, 15.0]]
    two = [[15, 1, 20, 1, 20, 6, 15, 6], [22.3, 10.1, 28.7, 10.1, 25.0, 18.9]]
    anns = [_ann(1, tri, cat=9, iscrowd=0), _ann(2, two, iscrowd=0)]
    inst, skipped = _decode(*anns)
    assert skipped == []
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "annotations": [dict(a, area=1.0, bbox=[0, 0, 1, 1]) for a in anns],
        "categories": CATS,
    }
    coco = COCO(_write(tmp_path, doc))
    reference = np.stack([coco.annToMask(coco.anns[i]) for i in (1, 2)])
    np.testing.assert_array_equal(_masks(inst), reference)
    assert reference.sum(axis=(1, 2)).min() > 20  # real shapes, not empty masks
    np.testing.assert_array_equal(inst.boxes, boxes_from_masks(reference.astype(bool)))
    assert inst.boxes.dtype == np.float64
    assert inst.category_ids.tolist() == [9, 2] and inst.annotation_ids.tolist() == [1, 2]
    assert inst.crowd_boxes.shape == (0, 4) and inst.keypoints is None


def test_rles_decode_to_the_masks_they_were_made_from():
    """An uncompressed RLE (counts written by hand), the same compressed as a str and as
    bytes: each decodes to the drawn mask, with its tight box."""
    mask = _block_mask(3, 5, 9, 11) | _block_mask(12, 20, 20, 30)  # touches the last column
    compressed = mask_utils.encode(np.asfortranarray(mask))["counts"]
    inst, skipped = _decode(
        _ann(1, {"size": [H, W], "counts": _counts(mask)}),
        _ann(2, {"size": [H, W], "counts": compressed.decode()}),
        _ann(3, {"size": (H, W), "counts": compressed}),
    )
    assert skipped == []
    for m in _masks(inst):
        np.testing.assert_array_equal(m, mask)
    np.testing.assert_array_equal(inst.boxes, [[5.0, 3, 30, 20]] * 3)


def test_crowd_regions_are_boxes_beside_the_instances():
    crowd = _block_mask(0, 0, 4, 8)
    inst, skipped = _decode(
        _ann(1, [[10, 10, 20, 10, 20, 16, 10, 16]], iscrowd=0),
        _ann(2, {"size": [H, W], "counts": _counts(crowd)}, cat=9, iscrowd=1),
    )
    assert skipped == []
    assert inst.annotation_ids.tolist() == [1] and inst.category_ids.tolist() == [2]
    assert len(inst.rles) == 1 and inst.boxes.shape == (1, 4)
    np.testing.assert_array_equal(inst.crowd_boxes, [[0.0, 0, 8, 4]])


def test_keypoints_take_the_images_most_common_count():
    kp = [5.0, 6.0, 2, 7.5, 8.5, 1]
    poly = [[1, 1, 10, 1, 10, 10, 1, 10]]
    inst, skipped = _decode(
        _ann(1, poly, keypoints=kp),
        _ann(2, poly),  # none: two unlabelled keypoints
        _ann(3, poly, keypoints=kp),
        _ann(4, poly, keypoints=[1.0, 2.0, 2] * 3),  # K = 3 here, 2 for the image
        _ann(5, poly, keypoints=[1.0, 2.0, 3, 4.0, 5.0, 0]),  # visibility 3
        _ann(6, poly, keypoints=[1.0, math.nan, 2, 4.0, 5.0, 0]),
    )
    assert inst.annotation_ids.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(
        inst.keypoints,
        [[[5, 6, 2], [7.5, 8.5, 1]], [[0, 0, 0], [0, 0, 0]], [[5, 6, 2], [7.5, 8.5, 1]]],
    )
    assert [(s.reason, s.annotation_id) for s in skipped] == [
        ("invalid_keypoints", 4),
        ("invalid_keypoints", 5),
        ("invalid_keypoints", 6),
    ]
    assert "9 values, expected 6" in skipped[0].detail


# ---- decode_instances: every skip reason ------------------------------------------------------

SQUARE = [[2, 2, 8, 2, 8, 8, 2, 8]]


@pytest.mark.parametrize(
    ("ann", "reason"),
    [
        (_ann(1, SQUARE, bbox=[2, 2, 6]), "invalid_annotation_entry"),
        (_ann(1, SQUARE, bbox=[2, 2, "6", 6]), "invalid_annotation_entry"),
        (_ann(1, SQUARE, bbox=[2, 2, 0, 6]), "zero_area_box"),
        (_ann(1, SQUARE, bbox=[2, 2, 6, -1]), "zero_area_box"),
        (_ann(1, SQUARE, bbox=[30, 2, 5, 5]), "box_outside_image"),  # x >= width
        (_ann(1, SQUARE, bbox=[2, 20, 5, 5]), "box_outside_image"),  # y >= height
        (_ann(1, SQUARE, bbox=[-6, 2, 6, 5]), "box_outside_image"),  # ends at x = 0
        (_ann(1, SQUARE, bbox=[2, -9, 5, 9]), "box_outside_image"),
        (_ann(1, None), "missing_segmentation"),
        (_ann(1, "polygon"), "missing_segmentation"),
        (_ann(1, []), "empty_polygon"),
        (_ann(1, [[], [2, 2, 8, 2, 8, 8]]), "empty_polygon"),
        (_ann(1, [[2, 2, 8, 2, 8, 8, 2]]), "invalid_polygon"),  # odd length
        (_ann(1, [[2, 2, 8, 2]]), "invalid_polygon"),  # two points
        (_ann(1, [[2, 2, 8, "2", 8, 8]]), "invalid_polygon"),
        (_ann(1, [[2, 2, 8, math.inf, 8, 8]]), "invalid_polygon"),
        (_ann(1, [[2, 2, 8, True, 8, 8]]), "invalid_polygon"),
        (_ann(1, [(2, 2, 8, 2, 8, 8)]), "invalid_polygon"),  # not a list
        (_ann(1, {"size": [H, W + 1], "counts": [H * (W + 1)]}), "invalid_rle"),  # other size
        (_ann(1, {"size": [H, W], "counts": [5, 7]}), "invalid_rle"),  # do not add up
        (_ann(1, {"size": [H, W], "counts": [H * W + 2, -2]}), "invalid_rle"),
        (_ann(1, {"size": [H, W], "counts": "0"}), "invalid_rle"),  # compressed, too short
        (_ann(1, {"size": [H, W], "counts": "\x7f"}), "invalid_rle"),  # not RLE characters
        (_ann(1, {"size": [H, W], "counts": 600}), "invalid_rle"),
        (_ann(1, [[31, 1, 40, 1, 40, 9]]), "empty_mask"),  # right of the image
        (_ann(1, {"size": [H, W], "counts": [H * W]}), "empty_mask"),
    ],
)
def test_each_bad_annotation_is_skipped_with_its_reason(ann, reason):
    good = _ann(2, SQUARE)
    inst, skipped = _decode(ann, good)
    assert [(s.reason, s.image_id, s.annotation_id, s.file_name) for s in skipped] == [
        (reason, 1, 1, "a.png")
    ]
    assert inst.annotation_ids.tolist() == [2]  # the image keeps its other instance


def test_compressed_counts_with_a_character_outside_the_alphabet_are_refused():
    """COCO's RLE string uses the 64 characters '0'..'o'; one moved up by 64 decodes to the
    same 6 bits when only masked, so it must be refused, not read as the original."""
    good = mask_utils.encode(np.asfortranarray(_block_mask(3, 5, 9, 11)))["counts"].decode()
    inst, skipped = _decode(_ann(1, {"size": [H, W], "counts": good}))
    assert skipped == [] and len(inst.rles) == 1
    bad = chr(ord(good[0]) + 64) + good[1:]
    _, skipped = _decode(_ann(1, {"size": [H, W], "counts": bad}))
    assert [s.reason for s in skipped] == ["invalid_rle"]


def test_compressed_counts_are_checked_against_the_image_size():
    """A compressed RLE whose runs add up to another size is refused before pycocotools' C
    decoder (which trusts the counts) sees it."""
    other = mask_utils.encode(np.asfortranarray(np.ones((H, W + 1), np.uint8)))["counts"]
    _, skipped = _decode(_ann(1, {"size": [H, W], "counts": other.decode()}))
    assert [s.reason for s in skipped] == ["invalid_rle"]
    assert "do not add up" in skipped[0].detail


def test_skip_to_dict_and_group_reasons():
    skips = [Skip("b", 1, 2, "f.png"), Skip("a"), Skip("b", detail="why")]
    assert skips[0].to_dict() == {
        "reason": "b",
        "image_id": 1,
        "annotation_id": 2,
        "file_name": "f.png",
    }
    assert skips[1].to_dict() == {"reason": "a"}
    assert skips[2].to_dict() == {"reason": "b", "detail": "why"}
    assert list(group_reasons(skips).items()) == [("a", 1), ("b", 2)]
