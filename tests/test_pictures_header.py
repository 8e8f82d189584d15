"""A PNG's EXIF orientation read from its chunk headers (without decoding the picture) agrees with Pillow's
getexif(), wherever the eXIf chunk is: before the pixels, after them, or absent; damaged files read as
stored."""
from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from fc2conv_onnx.apps.pictures import _png_orientation, image_size


def _chunks(data: bytes):
    position, found = 8, []
    while position < len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        found.append(data[position:position + 12 + length])
        position += 12 + length
    return found


def _png(path, orientation, where):
    """A 30x20 PNG whose eXIf chunk (orientation `orientation`, or none) is before or after the pixels."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif.tobytes() if orientation is not None else None)
    data = buffer.getvalue()
    chunks = _chunks(data)
    exif_chunks = [c for c in chunks if c[4:8] == b"eXIf"]
    rest = [c for c in chunks if c[4:8] != b"eXIf"]
    if where == "after" and exif_chunks:
        rest = rest[:-1] + exif_chunks + rest[-1:]  # before IEND, after IDAT
    else:
        ihdr = rest[0]
        rest = [ihdr] + exif_chunks + rest[1:]
    path.write_bytes(data[:8] + b"".join(rest))
    return path


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("orientation", [None, 1, 3, 6, 8])
def test_the_header_reading_agrees_with_pillow(tmp_path, orientation, where):
    path = _png(tmp_path / "p.png", orientation, where)
    with Image.open(path) as image:
        expected = image.getexif().get(0x0112)
    assert _png_orientation(path) == expected == orientation
    assert image_size(path) == ((20, 30) if orientation in (6, 8) else (30, 20))


def test_damaged_or_other_files_read_as_stored(tmp_path):
    path = _png(tmp_path / "p.png", 6, "after")
    data = path.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) - 40])  # the eXIf chunk and IEND cut off
    assert _png_orientation(tmp_path / "cut.png") is None
    (tmp_path / "not.png").write_bytes(b"GIF89a" + bytes(100))
    assert _png_orientation(tmp_path / "not.png") is None
    crc = zlib.crc32(b"eXIf" + b"junk").to_bytes(4, "big")
    bad = data[:33] + (4).to_bytes(4, "big") + b"eXIf" + b"junk" + crc + data[33:]
    (tmp_path / "bad.png").write_bytes(bad)
    assert _png_orientation(tmp_path / "bad.png") is None


@pytest.mark.parametrize("channels", [0, 1, 3, 4])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_pixels_given_as_an_array_become_the_same_input_without_pillow(channels, mode):
    """A frame that is already an array (Ray Data's rows, a video decoder's) is made the model's input in numpy:
    bit for bit what the same pixels give through Pillow's conversion."""
    from PIL import Image

    from fc2conv_onnx.apps.pictures import checked_array, in_mode
    from fc2conv_onnx.apps.preprocessing import Preprocessing, model_input

    rng = np.random.default_rng(channels)
    shape = (37, 53) if channels == 0 else (37, 53, channels)
    pixels = checked_array(rng.integers(0, 256, shape, dtype=np.uint8), "'frame'")
    assert np.array_equal(in_mode(pixels, mode), np.asarray(Image.fromarray(pixels).convert(mode)))
    prep = Preprocessing(mean=(0.5,), std=(0.25,), channels="bgr" if mode == "RGB" else "gray")
    width = 3 if mode == "RGB" else 1
    for layout in ("channels_first", "channels_last"):
        assert np.array_equal(model_input(pixels, width, layout, prep),
                              model_input(Image.fromarray(pixels), width, layout, prep))


def test_without_pillow_the_refusal_names_what_needs_it(monkeypatch):
    import sys

    from fc2conv_onnx import InputError
    from fc2conv_onnx.apps import pictures

    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` then raises ImportError
    with pytest.raises(InputError, match=r"\(detect, heatmap, the Detector\) needs Pillow: pip install"):
        pictures.pillow()
