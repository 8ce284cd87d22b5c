"""mrcnn.evaluation.image_errors: images ranked by weighted errors, and one image's outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn.evaluation.error_types import assign_error_types
from mrcnn.evaluation.image_errors import image_detail, images_by_errors
from tests.mrcnn.evaluation.test_error_types import every_type_scene


@pytest.fixture(scope="module")
def types():
    gt, results = every_type_scene()
    return assign_error_types(gt, results, "bbox")


def test_images_ranked_by_score_weighted_errors(types) -> None:
    ranked = images_by_errors(types)
    assert [r["image_id"] for r in ranked] == [1, 2, 3]
    first = ranked[0]
    # false positives weigh their score: .85 + .8 + .7 + .6 + .5 + .45 + .4; two misses 1 each
    assert first["weighted"] == pytest.approx(4.3 + 2)
    assert {k: first[k] for k in ("tp", "cls", "loc", "both", "dupe", "bkg", "miss", "gt")} == {
        "tp": 1, "cls": 1, "loc": 3, "both": 1, "dupe": 1, "bkg": 1, "miss": 2, "gt": 5,
    }  # fmt: skip
    assert ranked[1]["ignored"] == 1 and ranked[1]["weighted"] == pytest.approx(0.8)


def test_weights_change_the_ranking(types) -> None:
    ranked = images_by_errors(types, weights={"bkg": 1.0}, top=2)  # other types weigh 0
    assert [(r["image_id"], r["weighted"]) for r in ranked] == [
        (2, pytest.approx(0.8)),
        (1, pytest.approx(0.4)),
    ]


def test_image_detail_names_every_outcome(types) -> None:
    d = image_detail(types, 1)
    dets, objs = d["detections"], d["objects"]
    assert dets["types"] == ["tp", "cls", "dupe", "loc", "loc", "both", "loc", "bkg"]
    assert dets["result_index"].tolist() == [2, 1, 0, 3, 4, 5, 10, 6]
    assert dets["objects"].tolist() == [0, 1, 0, 2, 2, 3, 0, -1]
    assert objs["status"] == ["matched", "cls", "loc", "missed", "missed"]
    np.testing.assert_allclose(objs["boxes"][0], [10, 10, 50, 50])  # xyxy
    np.testing.assert_allclose(dets["boxes"][0], [10, 10, 50, 50])
    assert image_detail(types, 3)["detections"]["types"] == ["bkg"]
    with pytest.raises(ValueError, match="not among"):
        image_detail(types, 42)
