"""Safe image decoding with Pillow.

Every image that enters convforge passes through `decode_image`: EXIF orientation is applied, any
Pillow mode becomes RGB or L (16-bit and float images are scaled, not clipped; transparency is
composited over white), the declared pixel count is checked before any pixel is decoded (a
decompression bomb is refused), and every failure becomes an `ImageDecodeError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from convforge.data.limits import DEFAULT_MAX_PIXELS
from convforge.errors import DatasetError, ImageDecodeError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_PILLOW_LIMIT_LOCK = threading.Lock()
_DECODE_FAILURES = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
    UnidentifiedImageError,
)


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def decode_image(
    source: str | os.PathLike | bytes,
    *,
    mode: str = "RGB",
    size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> np.ndarray:
    """Decode one image into a uint8 array of shape (H, W, C), C = 3 for RGB or 1 for L.

    `size` (height, width), when given, resizes the shorter side and centre-crops to exactly that
    size, the way images are stored in the dataset cache. `name` is the path reported in errors
    (useful when `source` is bytes read from an archive).
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}")
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        if not isinstance(source, bytes) and os.path.getsize(source) == 0:
            raise ImageDecodeError(label, "the file is empty (0 bytes)")
        stream = io.BytesIO(source) if isinstance(source, bytes) else source
        with _pixel_check_by_us():
            img = Image.open(stream)
        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(label, _bomb_message(width, height, max_pixels))
            if size is not None and img.format == "JPEG":
                # Let libjpeg decode at a reduced scale when we are going to shrink anyway.
                img.draft(img.mode, (size[1], size[0]))
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_mode(img, mode)
            if size is not None and (img.height, img.width) != tuple(size):
                img = _resize_and_center_crop(img, size)
            array = np.array(img, dtype=np.uint8)  # a writable copy, detached from Pillow
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError:
        raise ImageDecodeError(label, _bomb_message(None, None, max_pixels)) from None
    except FileNotFoundError:
        raise ImageDecodeError(label, "the file does not exist") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            label, "not an image Pillow can identify (wrong extension or corrupt)"
        ) from None
    except _DECODE_FAILURES as exc:
        raise ImageDecodeError(label, f"corrupt or truncated ({exc})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def declared_pixels(data: bytes) -> int | None:
    """Width x height as an image file's header declares it, without decoding (None: not an image)."""
    try:
        with _pixel_check_by_us(), Image.open(io.BytesIO(data)) as img:
            return img.width * img.height
    except _DECODE_FAILURES:
        return None


@contextlib.contextmanager
def _pixel_check_by_us():
    """Open without Pillow's own bomb check, which would refuse with a message that names no file;
    we compare the declared size with our limit right after (Image.open reads only the header)."""
    with _PILLOW_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _bomb_message(width: int | None, height: int | None, max_pixels: int) -> str:
    declared = f"declares {width}x{height} pixels" if width else "declares too many pixels"
    return (
        f"{declared}, over the limit of {max_pixels:,} (a decompression bomb?); "
        "if the file is genuine, resize it or raise the limit (--max-pixels, or max_pixels= in Python)"
    )


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert any Pillow mode to RGB or L without losing the image's meaning."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _high_depth_to_l(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != mode:
        img = img.convert(mode)
    return img


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float images: scale to 8 bits (Pillow's convert would clip at 255)."""
    values = np.asarray(img)
    if img.mode == "F":
        values = values * 255.0 if np.nanmax(values) <= 1.0 else values
        values = np.nan_to_num(values)
    elif img.mode.startswith("I;16") or values.max(initial=0) > 255:
        values = values.astype(np.float64) / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def _resize_and_center_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    out_h, out_w = size
    scale = max(out_h / img.height, out_w / img.width)
    new_w, new_h = max(out_w, round(img.width * scale)), max(out_h, round(img.height * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
    return img.crop((left, top, left + out_w, top + out_h))


def expand_image_paths(items: list[str | os.PathLike]) -> list[str]:
    """Image files named directly or found (recursively, sorted) in named folders."""
    files = []
    for item in items:
        path = Path(item)
        if not path.exists():
            raise DatasetError(f"{path} does not exist")
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not found:
                raise DatasetError(f"folder {path} holds no image files")
            files.extend(found)
        else:
            files.append(str(path))
    return files
