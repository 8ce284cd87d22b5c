"""mrcnn.visualize.errors: each picture of the error analysis is an image with what it shows."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn.evaluation.analyze import pr_breakdown
from mrcnn.evaluation.confusion import confusion_matrix
from mrcnn.evaluation.error_types import assign_error_types
from mrcnn.evaluation.image_errors import image_detail
from mrcnn.evaluation.tide import error_breakdown
from mrcnn.visualize.errors import (
    TYPE_COLORS,
    draw_confusion_matrix,
    draw_error_breakdown,
    draw_error_types,
    draw_pr_breakdown,
)
from tests.mrcnn.evaluation.test_error_types import every_type_scene

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _is_image(img: np.ndarray) -> None:
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.std() > 10  # something is drawn


def test_summary_figures_are_images() -> None:
    gt, results = every_type_scene()
    b = {t: error_breakdown(gt, results, t) for t in ("bbox", "segm")}
    img = draw_error_breakdown(b, title="errors")
    _is_image(img)
    assert img.shape[1] > img.shape[0]  # two panels side by side
    _is_image(draw_pr_breakdown(pr_breakdown(gt, results, "bbox")))
    cm = confusion_matrix(gt, results, "bbox", score_thresh=0.0)
    _is_image(draw_confusion_matrix(cm))
    _is_image(draw_confusion_matrix(cm, normalize=False))


def test_error_types_coloured_beside_the_ground_truth() -> None:
    gt, results = every_type_scene()
    detail = image_detail(assign_error_types(gt, results, "bbox"), 1)
    image = np.full((200, 200, 3), 90, np.uint8)
    out = draw_error_types(image, detail, {1: "cat", 2: "dog", 3: "car"})
    _is_image(out)
    assert out.shape[1] == 2 * 200 + 4 and out.shape[0] > 200  # two panels and a legend
    left, right = out[:200, :200], out[:200, 204:]

    def has(panel: np.ndarray, name: str) -> bool:
        return bool((panel == np.asarray(TYPE_COLORS[name], np.uint8)).all(-1).any())

    assert has(left, "missed") and has(left, "cls") and has(left, "loc") and not has(left, "dupe")
    red = np.asarray(TYPE_COLORS["missed"], np.uint8)
    assert (left[188, 170] == red).all() and (left[189, 170] == red).all()  # missed: drawn thick
    assert (left[48, 30] != np.asarray(TYPE_COLORS["matched"], np.uint8)).any()  # matched: thin
    for name in ("tp", "cls", "loc", "both", "dupe", "bkg"):
        assert has(right, name), name
    thresholded = draw_error_types(image, detail, score_thresh=0.75)[:200, 204:]
    assert has(thresholded, "cls") and not has(thresholded, "bkg")  # the 0.4 one is left out
