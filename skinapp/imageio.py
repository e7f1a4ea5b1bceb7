"""The one image loader used by training, inference, the CLI and the app.

Every way an image can be wrong ends in one :class:`InvalidImageError` whose message a clinician can act on,
so callers never need to know about PIL's many exception types.
"""
from __future__ import annotations

import io
import logging
import math
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from .dicomio import DicomError, is_dicom, read_dicom

log = logging.getLogger(__name__)

ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom")
#: Pixel ceiling (width x height). Dermoscopes produce at most ~25 MP; anything larger is refused, not decoded.
MAX_PIXELS = 50_000_000
#: Byte ceiling, checked before reading. The largest honest file within MAX_PIXELS is an uncompressed 16-bit RGBA
#: TIFF or DICOM: 50 MP x 8 bytes = 400 MB; 512 MiB leaves room for metadata, yet stops /dev/zero or a disk image
#: from being read whole into memory.
MAX_BYTES = 512 * 2**20

ImageSource = Union[str, Path, bytes, bytearray, BinaryIO]


class InvalidImageError(ValueError):
    """The file cannot be used as a lesion photo; the message says why in plain words."""


def _describe(source: ImageSource, name: str | None) -> str:
    """How messages name the file, on one line (a newline in a file name is shown as \\n)."""
    if not name:
        name = Path(source).name if isinstance(source, (str, Path)) else getattr(source, "name", None)
    if not name:
        return "the uploaded file"
    return one_line(name)


def one_line(text: object) -> str:
    """Text on one line: control characters (a newline in a file name could forge a line) shown as escapes."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in str(text))


def _open_stream(source: ImageSource, label: str) -> BinaryIO:
    """The whole file in memory, read at most MAX_BYTES + 1 bytes so that an endless stream cannot exhaust it."""
    limit = MAX_BYTES
    if isinstance(source, (bytes, bytearray)):
        if len(source) > limit:
            raise _too_large(label, limit, len(source))
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        data = _read_path(Path(source), label, limit)
    else:
        data = source.read(limit + 1)
    if not data:
        raise InvalidImageError(f"{label}: the file is empty (0 bytes).")
    if len(data) > limit:  # a stream, or a file that grew after fstat: its true size is unknown
        raise _too_large(label, limit)
    return io.BytesIO(data)


def _read_path(path: Path, label: str, limit: int) -> bytes:
    """Read a regular file (symlinks followed). Opened non-blocking and checked with fstat on the open handle,
    not stat beforehand: opening a named pipe would otherwise wait forever for a writer, and a path swapped
    between a check and the open could still slip a device through."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise InvalidImageError(f"{label}: file not found.") from None
    except OSError as exc:
        raise InvalidImageError(f"{label}: could not be read ({exc.strerror or exc}).") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidImageError(f"{label}: this is {_not_a_file(info.st_mode)}, not an image file.")
        if info.st_size > limit:
            raise _too_large(label, limit, info.st_size)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(limit + 1)
    except OSError as exc:
        raise InvalidImageError(f"{label}: could not be read ({exc.strerror or exc}).") from None
    finally:
        os.close(fd)


def _not_a_file(mode: int) -> str:
    """What a non-regular path is, in words a user recognises."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _too_large(label: str, limit: int, size: int | None = None) -> InvalidImageError:
    """The refusal of a file over MAX_BYTES, worded like the pixel limit's; ``size`` None: known only to exceed."""
    got = _size(size) if size is not None else f"more than {_size(limit)}"
    return InvalidImageError(f"{label}: the file is too large ({got}; the limit is {_size(limit)}).")


def _size(n: int) -> str:
    """A byte count for a message: MB once it is that large, so a clinician need not count digits."""
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n:,} bytes"


_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation to the pixels.

    Not ``ImageOps.exif_transpose``: it re-encodes the EXIF block afterwards, and broken camera metadata (a tag
    stored with the wrong type) then raises TypeError/struct.error, turning a good photo into a crash.
    """
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as exc:  # unreadable metadata; the pixels are still usable
        log.debug("ignoring unreadable EXIF: %s", exc)
        return img
    method = _ORIENTATION_FIX.get(orientation) if isinstance(orientation, int) else None
    return img.transpose(method) if method is not None else img


def _refuse_non_finite(img: Image.Image, label: str) -> None:
    """A float image with NaN or infinity is corrupted: min-max scaling would turn it all black, and a clinician
    must get no verdict on it rather than one on a repaired guess. Only mode F holds floats in PIL."""
    if img.mode != "F":
        return
    bad = int(np.count_nonzero(~np.isfinite(np.asarray(img))))
    if bad:
        which = "1 pixel holds" if bad == 1 else f"{bad:,} pixels hold"
        raise InvalidImageError(f"{label}: the image is corrupted: {which} no valid value (not a number or "
                                f"infinite), so it is not analysed.")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any supported mode to RGB without clipping high bit depths or leaving black transparency."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 65535.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        gray = Image.fromarray(np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        return img.convert("RGB")
    return img.convert("RGB")


def load_image(source: ImageSource, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode a photo to upright RGB, or raise InvalidImageError.

    ``source`` is a path, raw bytes or a binary file object (uploads stay in memory). ``name`` is used only in
    error messages. ``max_pixels`` defaults to MAX_PIXELS, read at call time so that it can be changed.
    """
    if max_pixels is None:
        max_pixels = MAX_PIXELS
    label = _describe(source, name)
    stream = _open_stream(source, label)
    allowed = ", ".join(ALLOWED_FORMATS) + " or DICOM (colour photographs)"
    if is_dicom(stream.getbuffer()):
        try:
            rgb = read_dicom(stream.getvalue(), max_pixels)
        except DicomError as exc:
            raise InvalidImageError(f"{label}: {exc}") from None
        return _big_enough(rgb, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(stream, formats=ALLOWED_FORMATS)
            fmt = img.format
            w, h = img.size
            if w * h > max_pixels:
                raise InvalidImageError(
                    f"{label}: the image is too large ({w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,})."
                )
            img.load()
            img = _upright(img)
            _refuse_non_finite(img, label)
            rgb = _to_rgb(img)
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImageError(f"{label}: the image is too large to open safely.") from None
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"{label}: this is not a readable image. Supported formats: {allowed}."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        log.debug("decode failure for %s: %s", label, exc)
        raise InvalidImageError(
            f"{label}: the image is damaged or incomplete and cannot be decoded."
        ) from None
    log.debug("loaded %s (%s, %dx%d)", label, fmt, rgb.width, rgb.height)
    return _big_enough(rgb, label)


def _big_enough(rgb: Image.Image, label: str) -> Image.Image:
    if rgb.width < 8 or rgb.height < 8:
        raise InvalidImageError(f"{label}: the image is too small ({rgb.width}x{rgb.height} pixels).")
    return rgb


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def display_copy(img: Image.Image, max_side: int = 1024, max_aspect: float = 8.0) -> Image.Image:
    """The photo as a page shows it: at most ``max_side`` pixels on its long side (a 49-MP upload kept whole
    would cost a server hundreds of MB), and letterboxed on neutral grey to at most ``max_aspect``:1, since a
    strip one pixel high cannot be drawn."""
    w, h = img.size
    scale = min(1.0, max_side / max(w, h))
    if scale < 1.0:
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        img = img.resize((w, h), Image.Resampling.LANCZOS)
    long, short = max(w, h), min(w, h)
    if long > max_aspect * short:
        short = math.ceil(long / max_aspect)
        canvas = Image.new("RGB", (long, short) if w >= h else (short, long), (128, 128, 128))
        canvas.paste(img, ((canvas.width - w) // 2, (canvas.height - h) // 2))
        img = canvas
    return img
