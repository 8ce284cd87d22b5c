"""The class map: contiguous model label -> dataset category, in one shape everywhere.

Labels are 1..K-1 (0 is background); the dataset's categories keep their own ids (COCO's run
1..90 with gaps). The shard manifest and a saved model's config.json both hold it as JSON:

    {"1": {"category_id": 18, "name": "dog"}, "2": {"category_id": 21, "name": "cow"}}

`class_map_json` writes that shape and `read_class_map` is its one reader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple


class ClassInfo(NamedTuple):
    category_id: int
    name: str


ClassMap = dict[int, ClassInfo]


def class_map_json(classes: Sequence[tuple[int, str]]) -> dict[str, dict[str, Any]]:
    """[(category_id, name)] in label order (label i + 1 is entry i) -> the JSON shape."""
    return {str(i + 1): {"category_id": int(c), "name": str(n)} for i, (c, n) in enumerate(classes)}


def read_class_map(raw: Mapping[str, Any], num_classes: int | None = None) -> ClassMap:
    """The JSON shape -> {label: ClassInfo}. Raises `ValueError` saying what is wrong when the
    mapping is malformed, or when `num_classes` (K, background included) is given and a label
    1..K-1 has no entry.

    Model folders saved before the class map had one shape hold `{"1": 18}` (label -> category
    id); that is read too, with the category id as the name.
    """
    out: ClassMap = {}
    try:
        for label, entry in raw.items():
            if isinstance(entry, Mapping):
                info = ClassInfo(int(entry["category_id"]), str(entry.get("name", "")))
            else:
                info = ClassInfo(int(entry), str(entry))
            out[int(label)] = info
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"malformed class map ({type(e).__name__}: {e})") from None
    if num_classes is not None:
        missing = sorted(set(range(1, num_classes)) - set(out))
        if missing:
            raise ValueError(f"the class map has no category for labels {missing}")
    return dict(sorted(out.items()))


def category_ids(class_map: ClassMap) -> dict[int, int]:
    """{label: category_id}: what `mrcnn.evaluation.coco_results.to_coco_results` maps labels
    with."""
    return {label: info.category_id for label, info in class_map.items()}
