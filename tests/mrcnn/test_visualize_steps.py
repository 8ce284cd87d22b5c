"""mrcnn.visualize_steps: three pictures per image from the model's own intermediates."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn import visualize_steps
from tests.mrcnn.scenes import make_batch, tiny_model


@pytest.mark.slow  # six matplotlib figures
def test_step_pictures_per_image() -> None:
    model = tiny_model(inference={"score_thresh": 0.0})
    batch, _ = make_batch(seeds=(0,))
    pictures = visualize_steps.step_pictures(model, batch, ("bg", "circle", "square"))
    assert len(pictures) == 1
    for pics in pictures:
        assert list(pics) == ["1_rpn", "2_detections", "3_masks"]
        for image in pics.values():
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert min(image.shape[:2]) > 300
            assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # drawn, not blank
    # with no detection at all the pictures still come (empty panels, counts of 0)
    model.roi_heads.score_thresh = 1.0
    [empty] = visualize_steps.step_pictures(model, batch)
    assert set(empty) == {"1_rpn", "2_detections", "3_masks"}
