"""The class map: one JSON shape written, read back (and the older label -> id shape), and
every malformed map refused with a reason."""

from __future__ import annotations

import pytest

from mrcnn.data.class_map import ClassInfo, category_ids, class_map_json, read_class_map


def test_json_round_trip():
    raw = class_map_json([(18, "dog"), (21, "cow"), (3, "car")])
    assert raw == {
        "1": {"category_id": 18, "name": "dog"},
        "2": {"category_id": 21, "name": "cow"},
        "3": {"category_id": 3, "name": "car"},
    }
    assert read_class_map(raw) == {
        1: ClassInfo(18, "dog"),
        2: ClassInfo(21, "cow"),
        3: ClassInfo(3, "car"),
    }
    assert category_ids(read_class_map(raw)) == {1: 18, 2: 21, 3: 3}


def test_reads_in_label_order_and_the_older_shape():
    assert list(read_class_map({"10": 5, "2": 7, "1": {"category_id": 9}})) == [1, 2, 10]
    old = read_class_map({"1": 18, "2": "21"})
    assert old == {1: ClassInfo(18, "18"), 2: ClassInfo(21, "21")}
    assert read_class_map({"1": {"category_id": "4"}})[1] == ClassInfo(4, "")


@pytest.mark.parametrize(
    "raw",
    [
        {"one": {"category_id": 1, "name": "a"}},  # label not an int
        {"1": {"name": "a"}},  # no category id
        {"1": {"category_id": None, "name": "a"}},
        {"1": "dog"},  # old shape, but not an id
        {"1": [18]},
        ["dog"],  # not a mapping
    ],
)
def test_malformed_maps_raise(raw):
    with pytest.raises(ValueError, match="malformed class map"):
        read_class_map(raw)


def test_num_classes_needs_every_label():
    raw = class_map_json([(18, "dog"), (21, "cow")])
    assert len(read_class_map(raw, num_classes=3)) == 2
    with pytest.raises(ValueError, match=r"no category for labels \[3, 4\]"):
        read_class_map(raw, num_classes=5)
