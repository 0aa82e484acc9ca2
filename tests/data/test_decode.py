"""Safe decoding: every kind of bad or unusual file gives a clear error or the right pixels."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from convforge.data.decode import decode_image
from convforge.errors import ImageDecodeError


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def test_zero_byte_file_is_named_and_explained(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.jpg.*empty \(0 bytes\)"):
        decode_image(path)


def test_truncated_jpeg_is_refused(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buffer, "JPEG"
    )
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg.*(truncated|corrupt)"):
        decode_image(path)


def test_text_file_named_png_is_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageDecodeError, match=r"notes\.png.*not an image"):
        decode_image(path)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 65535], [32896, 1000, 60000]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # Pillow stores uint16 as mode I;16
    decoded = decode_image(path, mode="L")
    assert decoded.shape == (2, 3, 1)
    np.testing.assert_array_equal(decoded[..., 0], np.rint(values / 257.0).astype(np.uint8))
    rgb = decode_image(path)
    assert rgb.shape == (2, 3, 3) and (rgb[..., 0] == rgb[..., 2]).all()


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(path, "JPEG", quality=95)  # pure red ink
    decoded = decode_image(path)
    assert decoded.shape == (8, 16, 3)
    red, green, blue = decoded[..., 0].mean(), decoded[..., 1].mean(), decoded[..., 2].mean()
    assert red > 200 and green < 60 and blue < 60


def test_palette_png_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 2, 4))  # left half red, right half index 0 = transparent black
    path = tmp_path / "icon.png"
    image.save(path, transparency=0)
    decoded = decode_image(path)
    np.testing.assert_array_equal(decoded[:, :2], np.broadcast_to([255, 0, 0], (4, 2, 3)))
    np.testing.assert_array_equal(decoded[:, 2:], np.full((4, 2, 3), 255))


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: displays rotated 90 degrees clockwise
    path = tmp_path / "phone.jpg"
    image.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(path)
    assert decoded.shape == (40, 20, 3)  # width and height swapped
    assert decoded[:20].mean() > 200 and decoded[20:].mean() < 50  # white half now on top


def _declared_size_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    raw = bytearray(_png_bytes(Image.new("L", (1, 1))))
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    raw[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    raw[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr - 4 : ihdr + 13])))
    return bytes(raw)


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(_declared_size_png(100_000, 100_000))
    loads = []
    original_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(self.size) or original_load(self))
    with pytest.raises(ImageDecodeError, match=r"bomb\.png.*100000x100000.*decompression bomb"):
        decode_image(path)
    assert loads == []  # refused from the header: no pixel was decoded or allocated


def test_custom_pixel_limit(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(ImageDecodeError, match="over the limit of 5,000"):
        decode_image(path, max_pixels=5_000)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"nope\.png.*does not exist"):
        decode_image(tmp_path / "nope.png")


def test_resize_to_storage_size_crops_the_centre():
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, 20:60] = 200  # the centre square
    decoded = decode_image(_png_bytes(Image.fromarray(array)), size=(20, 20))
    assert decoded.shape == (20, 20, 3)
    assert decoded.min() > 150  # only the bright centre survives the centre crop


def test_grayscale_and_rgb_modes():
    rgb = np.dstack([np.full((3, 3), v, np.uint8) for v in (10, 100, 200)])
    as_l = decode_image(_png_bytes(Image.fromarray(rgb)), mode="L")
    assert as_l.shape == (3, 3, 1)
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(as_l[..., 0], expected)


def test_default_pixel_limit_is_pillows_own():
    """The CLI shows the limit without importing Pillow; it must stay Pillow's default."""
    from PIL import Image

    from convforge.data.limits import DEFAULT_MAX_PIXELS

    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS
