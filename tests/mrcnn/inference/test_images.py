"""`check_images`: what `detect` accepts, and the message for each thing it does not."""

from __future__ import annotations

import numpy as np
import pytest

from mrcnn.inference.images import check_images


def test_accepts_a_non_empty_sequence_of_uint8_rgb_arrays():
    a, b = np.zeros((4, 5, 3), np.uint8), np.ones((1, 1, 3), np.uint8)
    out = check_images((a, b))
    assert isinstance(out, list) and out[0] is a and out[1] is b
    assert check_images(im for im in [a])[0] is a  # any iterable, read once


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((4, 5, 3), np.uint8), r"takes a list of images; wrap .* as \[image\]"),
        ([], "got no images"),
        ([np.zeros((4, 5, 3), np.uint8), "b.png"], "image 1 is a str, expected a numpy uint8"),
        ([np.zeros((4, 5, 3), np.float32)], r"image 0 has dtype float32, expected uint8"),
        ([np.zeros((4, 5), np.uint8)], r"image 0 has shape \(4, 5\), expected H x W x 3"),
        ([np.zeros((4, 5, 3, 1), np.uint8)], "expected H x W x 3"),
        ([np.zeros((4, 5, 4), np.uint8)], r"image 0 has 4 channels, expected 3"),
        ([np.zeros((4, 0, 3), np.uint8)], r"image 0 is empty \(4 x 0 pixels\)"),
    ],
)
def test_refusals_say_what_was_expected(images, message):
    with pytest.raises(ValueError, match=message):
        check_images(images)
