"""mrcnn.inference.images: any colour mode in, uint8 RGB out; unreadable files named in the
error."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrcnn.data.image_file import ImageReadError, read_image


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def test_colour_modes_become_rgb(tmp_path: Path) -> None:
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    assert np.array_equal(read_image(_encode(Image.fromarray(rgb), "PNG")), rgb)
    gray = np.array([[0, 128], [255, 7]], dtype=np.uint8)
    out = read_image(_encode(Image.fromarray(gray), "PNG"))
    assert out.shape == (2, 2, 3) and np.array_equal(out[..., 1], gray)
    rgba = np.dstack([rgb, np.full((4, 5), 10, np.uint8)])
    assert np.array_equal(read_image(_encode(Image.fromarray(rgba), "PNG")), rgb)
    g16 = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert read_image(_encode(g16, "PNG"))[0, :, 0].tolist() == [0, 255]
    cmyk = read_image(_encode(Image.new("CMYK", (3, 2), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.shape == (2, 3, 3) and cmyk[..., 0].min() > 200 and cmyk[..., 1].max() < 60
    pal = Image.fromarray(rgb).convert("P")
    path = tmp_path / "p.bmp"
    pal.save(path)
    assert read_image(path).shape == (4, 5, 3) and read_image(path).dtype == np.uint8


def test_unreadable_inputs_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="row 3: it is empty"):
        read_image(b"", name="row 3")
