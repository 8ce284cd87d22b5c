"""Resize and pad into the S x S frame: the scale of each mode, rounding of the resized size,
padding at the bottom / right, the pixels against float references (torch's and Pillow's
bilinear), and read-only input."""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mrcnn.data.resize import (
    compute_scale,
    prepare_images,
    resize_and_pad,
    resize_image,
    resized_shape,
)
from tests import REPO_ROOT


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random colours (bilinear resizing of noise would be all rounding)."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (h // 4 + 2, w // 4 + 2, 3))
    t = torch.from_numpy(low).permute(2, 0, 1)[None]
    big = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return big[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.mark.parametrize(
    ("h", "w", "size", "mode", "min_size", "scale"),
    [
        (200, 100, 128, "square", 800, 128 / 200),
        (50, 60, 128, "square", 800, 128 / 60),  # square upscales
        (50, 60, 128, "pad64", 800, 1.0),  # pad64 never does
        (300, 150, 128, "pad64", 800, 128 / 300),
        (400, 600, 1024, "short_side", 800, 1024 / 600),  # the longer side would pass S
        (400, 500, 1024, "short_side", 800, 2.0),  # short side to min_size
    ],
)
def test_compute_scale(h, w, size, mode, min_size, scale):
    assert compute_scale(h, w, size, mode, min_size) == pytest.approx(scale, rel=1e-12)


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="resize mode 'fit'"):
        compute_scale(10, 10, 64, "fit")


def test_resized_shape_rounds_and_stays_in_the_frame():
    assert resized_shape(200, 100, 0.64, 128) == (128, 64)
    assert resized_shape(99, 51, 0.5, 128) == (50, 26)  # 49.5 -> 50 (round half even: 50)
    assert resized_shape(3, 1000, 0.001, 128) == (1, 1)  # never 0 px
    assert resized_shape(201, 100, 128 / 200, 128) == (128, 64)  # 128.64 -> clamped to S


def test_resize_and_pad_puts_the_image_top_left_and_zeros_elsewhere():
    image = _image(60, 90)
    out = resize_and_pad(image, 64, "square")
    assert out.image.shape == (64, 64, 3) and out.image.dtype == np.uint8
    assert out.window == (0, 0, 43, 64) and out.scale == pytest.approx(64 / 90)
    np.testing.assert_array_equal(out.image[:43], resize_image(image, 43, 64))
    assert not out.image[43:].any()
    small = resize_and_pad(image, 128, "pad64")
    assert small.window == (0, 0, 60, 90)
    np.testing.assert_array_equal(small.image[:60, :90], image)  # scale 1: the pixels as are
    assert not small.image[60:].any() and not small.image[:, 90:].any()


def test_resize_image_is_bilinear_within_one_grey_level():
    """uint8 kernel vs the float computation it stands for (antialiased when shrinking)."""
    image = _image(97, 131)
    src = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    for h, w, antialias in [(40, 55, True), (150, 200, False), (97, 60, True)]:
        ours = resize_image(image, h, w)
        ref = F.interpolate(src, size=(h, w), mode="bilinear", antialias=antialias)
        ref = ref[0].permute(1, 2, 0).round().clamp(0, 255).numpy()
        assert ours.shape == (h, w, 3) and ours.dtype == np.uint8
        diff = np.abs(ours.astype(float) - ref)
        assert diff.max() <= 1, (h, w, diff.max())
    assert resize_image(image, 97, 131) is image  # no-op at the same size


def test_resize_image_without_torch_is_pillows_bilinear(monkeypatch):
    """An `OnnxModel` process has no torch: Pillow's bilinear, within two grey levels."""
    image = _image(80, 120)
    with_torch = resize_image(image, 50, 70)
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    without = resize_image(image, 50, 70)
    monkeypatch.undo()
    expected = np.asarray(Image.fromarray(image).resize((70, 50), Image.BILINEAR))
    np.testing.assert_array_equal(without, expected)
    assert np.abs(without.astype(int) - with_torch).max() <= 2
    assert without.flags.writeable


def test_a_read_only_image_raises_no_warning(tmp_path):
    """`np.asarray(Image.open(...))` is read-only; torch warns when it wraps one. (torch warns
    once per process: the subprocess test below checks the same in a fresh one.)"""
    Image.fromarray(_image(30, 40)).save(tmp_path / "x.png")
    image = np.asarray(Image.open(tmp_path / "x.png"))
    assert not image.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = resize_image(image, 15, 20)
    assert out.shape == (15, 20, 3) and out.flags.writeable


@pytest.mark.slow
def test_a_read_only_image_raises_no_warning_in_a_fresh_process(tmp_path):
    Image.fromarray(_image(30, 40)).save(tmp_path / "x.png")
    code = (
        "import numpy as np, PIL.Image\n"
        "from mrcnn.data.resize import resize_image\n"
        f"image = np.asarray(PIL.Image.open({str(tmp_path / 'x.png')!r}))\n"
        "assert not image.flags.writeable\n"
        "resize_image(image, 15, 20)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_prepare_images_fills_a_fixed_batch():
    images = [_image(30, 60, 1), _image(64, 32, 2)]
    pixels, windows, scales = prepare_images(images, 64, "square", batch_size=3)
    assert pixels.shape == (3, 3, 64, 64) and pixels.dtype == np.uint8
    assert pixels.flags.c_contiguous
    np.testing.assert_array_equal(windows, [[0, 0, 32, 64], [0, 0, 64, 32], [0, 0, 0, 0]])
    np.testing.assert_allclose(scales, [64 / 60, 1.0, 0.0])
    for i, im in enumerate(images):
        np.testing.assert_array_equal(
            pixels[i].transpose(1, 2, 0), resize_and_pad(im, 64, "square").image
        )
    assert not pixels[2].any()
    assert prepare_images(images, 64)[0].shape[0] == 2
    with pytest.raises(ValueError, match="2 images do not fit a batch of 1"):
        prepare_images(images, 64, batch_size=1)
