"""mrcnn.inference.images: any colour mode in, uint8 RGB out; unreadable files named in the
error."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

from mrcnn.data.image_file import ImageReadError, read_image
from tests.fuzz import fuzz, fuzz_settings
from tests.pipeline.bad_images import encode


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


FORMATS = {"PNG": ("RGB", "L", "P", "I;16", "RGBA", "1"), "JPEG": ("RGB", "L", "CMYK")}
FORMATS |= {"BMP": ("RGB", "P"), "TIFF": ("RGB", "CMYK", "I;16"), "WEBP": ("RGB",)}
FORMATS |= {"GIF": ("P",)}


@st.composite
def image_file(draw) -> tuple[bytes, str, tuple[int, int] | None]:
    """(bytes, what was done, (h, w) when the file is intact) of a real image in any format and
    colour mode, down to 1 x 1, then maybe damaged: truncated, bytes flipped, tail zeroed, or
    replaced by text, nothing, or a few bytes of its header."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    data = encode(pixels, fmt, mode)
    kind = draw(st.sampled_from(["intact", "truncate", "flip", "zero_tail", "text", "empty"]))
    at = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        data = data[:at]
    elif kind == "flip":
        out = bytearray(data)
        for p in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=6)):
            out[p] ^= 1 << draw(st.integers(0, 7))
        data = bytes(out)
    elif kind == "zero_tail":
        data = data[:at] + bytes(len(data) - at)
    elif kind == "text":
        data = draw(st.text(max_size=40)).encode()
    elif kind == "empty":
        data = b""
    return data, f"{fmt} {mode} {kind}", (h, w) if kind == "intact" else None


@fuzz
@fuzz_settings(200)
@given(case=image_file())
def test_fuzz_read_image_gives_rgb_or_image_read_error(tmp_path_factory, case):
    """The decoder of predict, the pyfunc and the shards, on any image and any damage: an
    intact file gives its pixels as uint8 [h, w, 3]; anything else gives uint8 RGB pixels (a
    decoder may accept damage it cannot see) or `ImageReadError` naming the file, never
    another exception or a crash."""
    data, what, size = case
    path = tmp_path_factory.getbasetemp() / "fuzz image.bin"
    path.write_bytes(data)
    try:
        image = read_image(path, orient=True)
    except ImageReadError as e:
        assert size is None, f"{what}: an intact file was refused: {e}"
        assert "fuzz image.bin" in str(e)
        event(f"{what.split()[-1]}: ImageReadError")
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.flags.c_contiguous and image.flags.writeable
    if size is not None:
        assert image.shape[:2] == size, what
    event(f"{what.split()[-1]}: read")
