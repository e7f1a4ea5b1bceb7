"""The one image loader: every supported input becomes upright RGB; every bad input is one plain-words error."""
from __future__ import annotations

import io
import os
import re
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

import skinapp.imageio as imageio
from skinapp.imageio import InvalidImageError, is_image_file, load_image

from conftest import lesion

ORIENTATION = 0x0112
# Words a clinician should never see: Python / PIL exception names, errno codes, library internals.
_TECHNICAL = re.compile(r"[A-Za-z]*(Error|Exception|Warning)\b|Errno|Traceback|\bPIL\b|cannot identify image file")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def rgb(img: Image.Image) -> np.ndarray:
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def refused(source, expected_name: str, **kw) -> str:
    """Load ``source``, expect exactly one InvalidImageError that names the file in plain words; return it."""
    with pytest.raises(InvalidImageError) as info:
        load_image(source, **kw)
    exc = info.value
    msg = str(exc)
    assert expected_name in msg, msg
    assert not _TECHNICAL.search(msg), f"technical words in {msg!r}"
    assert "\n" not in msg
    # One error, not a chain of PIL/OS errors behind it.
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__
    return msg


# ------------------------------------------------------------------------------------------------ sources

def test_path_str_bytes_bytearray_and_file_objects_give_the_same_image(tmp_path):
    src = lesion(3, True, size=40)
    path = tmp_path / "lesion.png"
    src.save(path)
    data = path.read_bytes()
    expected = np.asarray(src)
    with open(path, "rb") as fh:
        from_file = load_image(fh)
    for out in (load_image(path), load_image(str(path)), load_image(data), load_image(bytearray(data)),
                load_image(io.BytesIO(data)), from_file):
        assert out.mode == "RGB"
        assert out.size == (40, 40)
        np.testing.assert_array_equal(np.asarray(out), expected)


def test_content_decides_not_the_suffix(tmp_path):
    png_named_jpg = tmp_path / "really_a_png.jpg"
    lesion(1, False, size=32).save(png_named_jpg, format="PNG")
    assert load_image(png_named_jpg).size == (32, 32)
    gif_named_png = tmp_path / "really_a_gif.png"
    lesion(1, False, size=32).save(gif_named_png, format="GIF")
    refused(gif_named_png, "really_a_gif.png")


@pytest.mark.parametrize("fmt,kw", [("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}),
                                    ("WEBP", {"lossless": True}), ("PNG", {})])
def test_lossless_formats_round_trip_exactly(tmp_path, fmt, kw):
    src = noise(40, 30, seed=7)
    path = tmp_path / f"img.{fmt.lower()}"
    src.save(path, fmt, **kw)
    out = load_image(path)
    assert out.size == (40, 30)
    np.testing.assert_array_equal(rgb(out), np.asarray(src).astype(int))


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_lossy_formats_load_close_to_the_source(fmt):
    src = lesion(5, True, size=64)
    data = encode(src, fmt, quality=95)
    out = load_image(data)
    assert out.size == (64, 64)
    np.testing.assert_array_equal(rgb(out), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert np.abs(rgb(out) - np.asarray(src).astype(int)).mean() < 12


# ------------------------------------------------------------------------------------------------ EXIF

def _two_halves(w: int = 40, h: int = 20) -> Image.Image:
    """Wide image: left half red, right half blue."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2:] = (0, 0, 255)
    return Image.fromarray(arr, "RGB")


def _jpeg_with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def _is(px, colour) -> bool:
    return bool(np.all(np.abs(np.asarray(px, int) - np.asarray(colour)) < 40))


RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.mark.parametrize("orientation,top,bottom", [(6, RED, BLUE), (8, BLUE, RED)])
def test_exif_rotation_is_applied(orientation, top, bottom):
    data = _jpeg_with_orientation(_two_halves(40, 20), orientation)
    assert Image.open(io.BytesIO(data)).size == (40, 20)  # stored sideways
    out = load_image(data)
    assert out.size == (20, 40)  # displayed upright: portrait
    a = rgb(out)
    assert _is(a[5, 10], top) and _is(a[5, 2], top) and _is(a[5, 17], top)
    assert _is(a[34, 10], bottom) and _is(a[34, 2], bottom) and _is(a[34, 17], bottom)


def test_exif_rotation_applied_for_paths_too(tmp_path):
    path = tmp_path / "phone.jpg"
    path.write_bytes(_jpeg_with_orientation(_two_halves(40, 20), 6))
    out = load_image(path)
    assert out.size == (20, 40)
    assert _is(rgb(out)[3, 10], RED)


def test_exif_orientation_3_flips_upside_down():
    out = load_image(_jpeg_with_orientation(_two_halves(40, 20), 3))
    assert out.size == (40, 20)
    a = rgb(out)
    assert _is(a[10, 3], BLUE) and _is(a[10, 36], RED)


def test_orientation_1_changes_nothing():
    out = load_image(_jpeg_with_orientation(_two_halves(40, 20), 1))
    assert out.size == (40, 20)
    assert _is(rgb(out)[10, 3], RED)


_INVERSE = {  # stored pixels = inverse of the fix applied to the upright picture
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_eight_exif_orientations_exactly(orientation):
    """Lossless check: a photo stored sideways/mirrored with its orientation tag comes back upright, pixel for pixel."""
    upright = noise(30, 18, seed=orientation)
    method = _INVERSE[orientation]
    stored = upright.transpose(method) if method is not None else upright
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    data = encode(stored, "PNG", exif=exif.tobytes())
    out = load_image(data)
    assert out.size == (30, 18)
    np.testing.assert_array_equal(rgb(out), np.asarray(upright).astype(int))


def _exif_block(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A hand-made little-endian EXIF block: (tag, type, count, payload) entries in IFD0."""
    n = len(entries)
    data_at = 8 + 2 + 12 * n + 4
    ifd, extra = struct.pack("<H", n), b""
    for tag, typ, count, payload in entries:
        if len(payload) <= 4:
            ifd += struct.pack("<HHI", tag, typ, count) + payload.ljust(4, b"\0")
        else:
            ifd += struct.pack("<HHII", tag, typ, count, data_at + len(extra))
            extra += payload
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + extra


def test_broken_camera_metadata_does_not_break_a_good_photo(tmp_path):
    """Orientation 6 plus an XResolution tag stored as text (cameras do this): still upright, no crash."""
    exif = _exif_block([(ORIENTATION, 3, 1, struct.pack("<H", 6)), (0x011A, 2, 8, b"seventy\0")])
    path = tmp_path / "odd_camera.jpg"
    _two_halves(40, 20).save(path, "JPEG", exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (20, 40)
    assert _is(rgb(out)[3, 10], RED) and _is(rgb(out)[36, 10], BLUE)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_garbage_exif_is_ignored():
    for exif in (b"Exif\0\0II*\0\xff\xff\xff\x7f garbage", b"Exif\0\0MM\0*\0\0\0\x08\xff\xff",
                 _exif_block([(ORIENTATION, 2, 4, b"six\0")]), _exif_block([(ORIENTATION, 3, 1, b"\x63\0")])):
        out = load_image(encode(_two_halves(40, 20), "JPEG", exif=exif, quality=95))
        assert out.size == (40, 20)
        assert _is(rgb(out)[10, 3], RED)


def test_multi_picture_jpeg_from_phones_loads_first_picture():
    first, second = noise(48, 32, seed=1), noise(48, 32, seed=2)
    data = encode(first, "MPO", save_all=True, append_images=[second], quality=95)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    out = load_image(data)
    assert out.size == (48, 32)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    np.testing.assert_array_equal(rgb(out), expected)


# ------------------------------------------------------------------------------------------------ modes

def test_grayscale_l_becomes_rgb():
    out = load_image(encode(Image.new("L", (16, 16), 77), "PNG"))
    assert out.mode == "RGB"
    assert (rgb(out) == 77).all()


def test_one_bit_becomes_rgb():
    img = Image.new("1", (16, 16), 0)
    img.paste(1, (8, 0, 16, 16))
    a = rgb(load_image(encode(img, "PNG")))
    assert (a[:, :8] == 0).all() and (a[:, 8:] == 255).all()


def _palette_image() -> Image.Image:
    idx = np.zeros((16, 16), np.uint8)
    idx[:, 8:] = 1
    img = Image.fromarray(idx, "P")
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)  # index 0 black, index 1 green
    return img


def test_palette_without_transparency_keeps_its_colours():
    data = encode(_palette_image(), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    a = rgb(load_image(data))
    assert (a[:, :8] == (0, 0, 0)).all()
    assert (a[:, 8:] == (0, 200, 0)).all()


def test_palette_transparency_composites_on_white():
    data = encode(_palette_image(), "PNG", transparency=0)  # index 0 (black) is fully transparent
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and "transparency" in opened.info
    a = rgb(load_image(data))
    assert (a[:, :8] == 255).all(), "transparent palette entries must be white, not their (black) colour"
    assert (a[:, 8:] == (0, 200, 0)).all()


def test_rgba_transparent_areas_are_white_and_partial_alpha_blends():
    arr = np.zeros((16, 16, 4), np.uint8)  # black, fully transparent
    arr[:, 8:12] = (200, 0, 0, 255)  # opaque red
    arr[:, 12:] = (0, 0, 0, 128)  # half-transparent black
    data = encode(Image.fromarray(arr, "RGBA"), "PNG")
    a = rgb(load_image(data))
    assert (a[:, :8] == 255).all(), "transparent must composite on white, not black"
    assert (a[:, 8:12] == (200, 0, 0)).all()
    assert (np.abs(a[:, 12:] - 127) <= 2).all()


def test_la_transparent_is_white_and_opaque_keeps_grey():
    arr = np.zeros((16, 16, 2), np.uint8)
    arr[:, 8:] = (50, 255)
    data = encode(Image.fromarray(arr, "LA"), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    a = rgb(load_image(data))
    assert (a[:, :8] == 255).all()
    assert (a[:, 8:] == 50).all()


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_becomes_correct_rgb(fmt):
    img = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # white
    img.paste((255, 0, 0, 0), (0, 0, 8, 16))  # pure cyan on the left
    data = encode(img, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    a = rgb(load_image(data))
    assert _is(a[8, 2], (0, 255, 255)), a[8, 2]
    assert _is(a[8, 13], (255, 255, 255)), a[8, 13]


def _sixteen_bit(values: list[int]) -> Image.Image:
    arr = np.repeat(np.asarray(values, np.uint16)[None, :], 4, axis=1).repeat(16, axis=0)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    return img


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_is_rescaled_not_clipped(fmt):
    data = encode(_sixteen_bit([0, 1000, 32768, 65535]), fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    a = rgb(load_image(data))
    assert a.shape == (16, 16, 3)
    dark, low, mid, full = a[0, 0], a[0, 4], a[0, 8], a[0, 12]
    assert (dark == 0).all()
    assert (low <= 10).all(), f"1000/65535 must stay dark, got {low}"  # clipping would give 255
    assert (np.abs(mid - 128) <= 1).all(), mid
    assert (full == 255).all()
    assert (a == a[:, :, :1]).all(), "grey in, grey out"


@pytest.mark.parametrize("value,expected", [(65535, 255), (32768, 128), (1000, 4)])
def test_uniform_16_bit_images_are_not_stretched(value, expected):
    """A flat 16-bit image must keep its absolute brightness (no min-max stretch to black or white)."""
    arr = np.full((16, 16), value, np.uint16)
    a = rgb(load_image(encode(Image.fromarray(arr), "PNG")))
    assert (np.abs(a - expected) <= 1).all(), a[0, 0]


def test_16_bit_big_endian_tiff():
    img = Image.frombytes("I;16B", (16, 16), np.full((16, 16), 32768, ">u2").tobytes())
    data = encode(img, "TIFF")
    a = rgb(load_image(data))
    assert (np.abs(a - 128) <= 1).all()


def test_16_bit_gradient_is_monotonic_and_spans_the_range():
    arr = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    a = rgb(load_image(encode(Image.fromarray(arr), "PNG")))[0, :, 0]
    assert a[0] == 0 and a[-1] == 255
    assert (np.diff(a) >= 0).all()
    assert len(np.unique(a)) > 50


def _float_tiff(values: list[float]) -> bytes:
    arr = np.repeat(np.asarray(values, np.float32)[None, :], 4, axis=1).repeat(16, axis=0)
    img = Image.fromarray(arr)
    assert img.mode == "F"
    return encode(img, "TIFF")


def test_float_tiff_is_stretched_to_its_range():
    a = rgb(load_image(_float_tiff([-1.0, 0.0, 1.0, 3.0])))
    assert a.shape == (16, 16, 3) and (a == a[:, :, :1]).all()
    assert [a[0, 0, 0], a[0, 4, 0], a[0, 8, 0], a[0, 12, 0]] == [0, 64, 128, 255]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_float_tiff_with_non_finite_pixels_is_refused(bad):
    """Not repaired into a picture: min-max scaling made it all black, and a verdict on that is meaningless."""
    data = _float_tiff([0.0, 0.5, 1.0, 2.0])
    img = Image.open(io.BytesIO(data))
    arr = np.asarray(img).copy()
    arr[3, 5] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no RuntimeWarning on the way
        msg = refused(encode(Image.fromarray(arr), "TIFF"), "scan.tif", name="scan.tif")
    assert msg == ("scan.tif: the image is corrupted: 1 pixel holds no valid value (not a number or infinite), "
                   "so it is not analysed.")


# ------------------------------------------------------------------------------------------------ pixel limits

def test_max_pixels_parameter_refuses_before_decoding(tmp_path, monkeypatch):
    big = tmp_path / "huge_scan.png"
    Image.new("1", (8000, 8000)).save(big)  # 64 MP, ~8 kB on disk
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels decoded before the check"))
    msg = refused(big, "huge_scan.png", max_pixels=1_000_000)
    assert "8000x8000" in msg and "large" in msg


def test_default_limit_refuses_a_real_image_over_it(tmp_path):
    big = tmp_path / "over_default.png"
    Image.new("1", (8000, 8000)).save(big)  # 64 MP > MAX_PIXELS (50 MP) and below PIL's own bomb warning
    assert 8000 * 8000 > imageio.MAX_PIXELS
    refused(big, "over_default.png")


def test_limit_is_inclusive():
    data = encode(Image.new("RGB", (32, 32), "white"), "PNG")
    assert load_image(data, max_pixels=32 * 32).size == (32, 32)
    refused(data, "photo.png", name="photo.png", max_pixels=32 * 32 - 1)


def test_module_limit_can_be_lowered(monkeypatch):
    data = encode(Image.new("RGB", (40, 40), "white"), "PNG")
    monkeypatch.setattr(imageio, "MAX_PIXELS", 1000)
    refused(data, "the uploaded file")
    assert load_image(encode(Image.new("RGB", (30, 30), "white"), "PNG")).size == (30, 30)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but which carries almost no data (a bomb probe)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [9_000, 12_000, 60_000])
def test_png_header_claiming_a_huge_size_is_refused(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(side, side))
    msg = refused(path, "bomb.png")
    assert "large" in msg
    # also when the caller raises its own limit: PIL's bomb guard is still turned into the same plain error
    refused(path, "bomb.png", max_pixels=10 ** 12)


def test_real_decompression_bomb_png_is_refused():
    data = encode(Image.new("1", (10_000, 10_000)), "PNG")  # 100 MP, ~12 kB
    refused(data, "scan.png", name="scan.png", max_pixels=10 ** 10)


# ------------------------------------------------------------------------------------------------ bad files

@pytest.mark.parametrize("fmt,name", [("GIF", "lesion.gif"), ("ICO", "lesion.ico"), ("GIF", "lesion.jpg"),
                                      ("PPM", "lesion.ppm"), ("TGA", "lesion.tga")])
def test_unsupported_formats_are_refused(tmp_path, fmt, name):
    path = tmp_path / name
    lesion(2, False, size=32).save(path, format=fmt)
    msg = refused(path, name)
    assert "JPEG" in msg and "PNG" in msg  # says what would work


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    msg = refused(path, "empty.png")
    assert "empty" in msg


def test_empty_upload_object():
    refused(io.BytesIO(b""), "upload.jpg", name="upload.jpg")
    refused(b"", "the uploaded file")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("patient notes, not a photo\n" * 20)
    refused(path, "notes.jpg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_truncated_images(tmp_path, fmt):
    data = encode(noise(96, 96, seed=2), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    refused(path, path.name)


def test_jpeg_with_only_its_header(tmp_path):
    path = tmp_path / "stub.jpg"
    path.write_bytes(encode(noise(), "JPEG")[:150])
    refused(path, "stub.jpg")


def test_missing_file(tmp_path):
    msg = refused(tmp_path / "not_there.jpg", "not_there.jpg")
    assert "not found" in msg


def test_directory(tmp_path):
    d = tmp_path / "a_folder.jpg"
    d.mkdir()
    refused(d, "a_folder.jpg")


def _load_within(seconds: float, source, release=None):
    """``load_image(source)`` in a thread: its InvalidImageError, or a test failure if it has not ended in
    ``seconds`` (the bug was a hang); ``release`` then unblocks the thread so the run can finish."""
    outcome: list = []

    def run():
        try:
            outcome.append(load_image(source))
        except Exception as exc:  # handed to the test thread, which judges it
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        if release:
            release()
        pytest.fail(f"load_image({source!r}) still running after {seconds} s")
    assert isinstance(outcome[0], InvalidImageError), outcome[0]
    return outcome[0]


def _release_fifo(path) -> None:
    """A writer that opens and closes at once, so a reader blocked opening the pipe sees end of file."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize("via_link", [False, True], ids=["pipe", "link-to-pipe"])
def test_named_pipe_is_refused_promptly(tmp_path, via_link):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    path = fifo
    if via_link:
        path = tmp_path / "link.jpg"
        path.symlink_to(fifo)
    exc = _load_within(5, path, release=lambda: _release_fifo(fifo))
    assert str(exc) == f"{path.name}: this is a named pipe, not an image file."
    refused(path, path.name)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_endless_device_is_refused_not_read():
    assert str(_load_within(5, "/dev/zero")) == "zero: this is a device, not an image file."


def test_link_to_a_regular_file_still_loads(tmp_path):
    target = tmp_path / "real.png"
    lesion(4, False, size=24).save(target)
    link = tmp_path / "link.png"
    link.symlink_to(target)
    assert load_image(link).size == (24, 24)


def test_file_over_the_byte_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(encode(noise(64, 64), "PNG"))  # a valid photo, ~12 kB
    size = path.stat().st_size
    monkeypatch.setattr(imageio, "MAX_BYTES", 4096)
    msg = refused(path, "big.png")
    # the exact size in the message comes from the file system, not from reading the file
    assert msg == f"big.png: the file is too large ({size:,} bytes; the limit is 4,096 bytes)."
    for source, name in ((path.read_bytes(), "the uploaded file"), (io.BytesIO(path.read_bytes()), "up.png")):
        assert "too large" in refused(source, name, **({"name": "up.png"} if name == "up.png" else {}))
    monkeypatch.setattr(imageio, "MAX_BYTES", size)
    assert load_image(path).size == (64, 64)  # the limit is inclusive


class _Endless(io.RawIOBase):
    """An upload that never ends (a stream of zero bytes), counting what was asked of it."""

    def __init__(self) -> None:
        self.given = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.given > 64 * 2**20:  # a bound for the test itself: an unbounded read must fail, not eat memory
            raise AssertionError("read past 64 MB of an endless stream")
        buffer[:] = bytes(len(buffer))
        self.given += len(buffer)
        return len(buffer)


def test_endless_file_object_is_read_only_to_the_limit(monkeypatch):
    monkeypatch.setattr(imageio, "MAX_BYTES", 2**20)
    stream = _Endless()
    msg = refused(stream, "upload.jpg", name="upload.jpg")
    assert msg == "upload.jpg: the file is too large (more than 1 MB; the limit is 1 MB)."
    assert stream.given <= 2**20 + 1


def test_too_small_image():
    msg = refused(encode(Image.new("RGB", (4, 6), "red"), "PNG"), "tiny.png", name="tiny.png")
    assert "small" in msg


def test_random_garbage_and_corrupted_bytes_never_escape_as_other_errors():
    rng = np.random.default_rng(0)
    sources = [encode(noise(24, 24, seed=1), f) for f in ("JPEG", "PNG", "BMP", "WEBP")]
    for i in range(240):
        data = bytearray(sources[i % len(sources)])
        for pos in rng.integers(0, len(data), size=4):
            data[pos] = int(rng.integers(0, 256))
        try:
            out = load_image(bytes(data), name="fuzz.img")
        except InvalidImageError as exc:
            assert "fuzz.img" in str(exc)
        else:
            assert out.mode == "RGB"
    with pytest.raises(InvalidImageError):
        load_image(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())


def test_error_is_a_value_error_subclass():
    assert issubclass(InvalidImageError, ValueError)


def test_is_image_file(tmp_path):
    for name in ("a.jpg", "b.JPEG", "c.png", "d.bmp", "e.tif", "f.TIFF", "g.webp"):
        (tmp_path / name).write_bytes(b"x")
        assert is_image_file(tmp_path / name), name
    for name in ("h.gif", "i.txt", ".hidden.jpg", "._mac.jpg", "noext"):
        (tmp_path / name).write_bytes(b"x")
        assert not is_image_file(tmp_path / name), name
    (tmp_path / "dir.jpg").mkdir()
    assert not is_image_file(tmp_path / "dir.jpg")
    assert not is_image_file(tmp_path / "missing.jpg")


def test_file_object_error_names_its_file(tmp_path):
    path = tmp_path / "from_disk.jpg"
    path.write_text("not an image")
    with open(path, "rb") as fh:
        refused(fh, "from_disk.jpg")


def test_message_names_files_with_spaces_and_accents(tmp_path):
    path = tmp_path / "sub dir" / "lésion 01.jpg"
    path.parent.mkdir()
    path.write_bytes(b"\xff\xd8\xff\xe0garbage")
    refused(path, "lésion 01.jpg")
