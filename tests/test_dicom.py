"""DICOM colour photographs everywhere a photo goes, and never a patient detail shown, logged or reported."""
from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import lesion, make_dataset
from dicoms import PHI_STRINGS, dicom_bytes
from skinapp.data import decode_dataset, scan_dataset
from skinapp.imageio import InvalidImageError, load_image

pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return lesion(3, True, 64)


@pytest.mark.parametrize("kw", [{}, {"photometric": "YBR_FULL"}, {"syntax": "rle"}, {"sop": "photo"},
                                {"sop": "sc"}, {"frames": 3}], ids=str)
def test_colour_photographs_decode_to_their_pixels(photo, kw):
    out = np.asarray(load_image(dicom_bytes(photo, **kw), name="x.dcm")).astype(int)
    # YBR_FULL is stored in 8 bits, so its round trip may be off by a level or two
    assert out.shape == (64, 64, 3) and np.abs(out - np.asarray(photo)).max() <= (3 if kw else 0)


def test_jpeg_compressed_ybr_is_decoded_to_rgb(photo):
    """JPEG baseline in YBR_FULL_422: the same pixels a JPEG decoder gives (colour converted once, not twice)."""
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=95, subsampling=2)
    want = np.asarray(Image.open(buf).convert("RGB")).astype(int)
    got = np.asarray(load_image(dicom_bytes(photo, syntax="jpeg"), name="x.dcm")).astype(int)
    assert np.abs(got - want).mean() < 1.0
    assert np.abs(got.mean((0, 1)) - np.asarray(photo).mean((0, 1))).max() < 4  # no swapped or YBR channels


@pytest.mark.parametrize("make, needle", [
    (lambda p: dicom_bytes(np.full((32, 32), 900), sop="ct", modality="CT"), "not a colour photograph of the skin "
                                                                            "(CT Image Storage, modality CT"),
    (lambda p: dicom_bytes(p, sop="ct", modality="CT"), "not a colour photograph"),
    (lambda p: dicom_bytes(np.full((32, 32), 9), sop="photo"), "MONOCHROME2"),
    (lambda p: dicom_bytes(p)[:400], "damaged or incomplete"),  # cut before the pixels: not "holds no image"
    (lambda p: dicom_bytes(p)[:-500], "damaged or incomplete"),
    (lambda p: dicom_bytes(p)[:140], "damaged or incomplete"),
])
def test_other_dicoms_get_a_clear_message(photo, make, needle):
    with pytest.raises(InvalidImageError, match="^scan.dcm: ") as exc:
        load_image(make(photo), name="scan.dcm")
    assert needle in str(exc.value)


def _edited(photo: Image.Image, edit) -> bytes:
    """``dicom_bytes(photo)`` after ``edit(dataset)``, saved again as a Part 10 file."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(photo)))
    edit(ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _set(ds, keyword: str, value, vr: str | None = None) -> None:
    if vr:
        ds[keyword].VR = vr
    setattr(ds, keyword, value)


@pytest.mark.parametrize("edit, needle", [
    (lambda ds: _set(ds, "Rows", None), "Rows value (image size) is empty"),
    (lambda ds: _set(ds, "Columns", None), "Columns value (image size) is empty"),
    (lambda ds: delattr(ds, "Columns"), "no Columns value"),
    (lambda ds: _set(ds, "Columns", "abc", "LO"), "Columns value (image size) 'abc' is not"),
    (lambda ds: _set(ds, "Rows", [64, 64]), "Rows value (image size) [64, 64] is not"),
    (lambda ds: _set(ds, "Rows", 0), "Rows value (image size) 0 is not"),
], ids=["empty-rows", "empty-columns", "no-columns", "text-columns", "two-rows", "zero-rows"])
def test_missing_empty_or_non_numeric_image_size_is_refused_not_a_crash(photo, edit, needle):
    with pytest.raises(InvalidImageError, match="^scan.dcm: this DICOM file is damaged") as exc:
        load_image(_edited(photo, edit), name="scan.dcm")
    assert needle in str(exc.value)


def test_a_dicom_meant_to_hold_no_image_still_says_so(photo):
    """A report (Basic Text SR) without pixels is not called damaged: only image classes must carry pixels."""
    def report(ds):
        for keyword in ("PixelData", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
                        "PlanarConfiguration", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
            delattr(ds, keyword)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
        ds.Modality = "SR"

    with pytest.raises(InvalidImageError, match="^scan.dcm: ") as exc:
        load_image(_edited(photo, report), name="scan.dcm")
    assert "(Basic Text SR Storage, modality SR) holds no image" in str(exc.value)


def test_a_huge_dicom_is_refused_before_decoding(photo):
    with pytest.raises(InvalidImageError, match="too large"):
        load_image(dicom_bytes(photo), name="big.dcm", max_pixels=1000)


def test_dataset_folders_read_dicom(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=4, size=32)
    for i, src in enumerate(sorted((root / "melanoma").glob("*.jpg"))):
        (root / "melanoma" / f"photo{i}.dcm").write_bytes(dicom_bytes(Image.open(src).convert("RGB")))
        src.unlink()
    decoded = decode_dataset(scan_dataset(root), 32)
    assert sum(p.suffix == ".dcm" for p in decoded.paths) == 2 and not decoded.skipped


def test_no_patient_detail_reaches_cli_output_report_or_log(tiny_registry, tmp_path, photo):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "case1.dcm").write_bytes(dicom_bytes(photo))
    (photos / "ct.dcm").write_bytes(dicom_bytes(np.full((32, 32), 900), sop="ct", modality="CT"))
    report = tmp_path / "r.pdf"
    r = subprocess.run([sys.executable, "-m", "skinapp", "-v", "--weights", str(tiny_registry), "predict",
                        "--model", "tiny-student", "--json", "--report", str(report), str(photos)],
                       capture_output=True, text=True, timeout=180)
    rows = json.loads(r.stdout)
    assert [row.get("error") is None for row in rows] == [True, False] and "CT" in rows[1]["error"]
    from test_report import pages_text

    everything = r.stdout + r.stderr + " ".join(pages_text(report.read_bytes()))
    assert "case1.dcm" in everything
    assert not [s for s in PHI_STRINGS if s in everything]


def test_no_patient_detail_on_the_pages(env_pages, caplog, photo):
    from streamlit.testing.v1 import AppTest

    caplog.set_level(logging.DEBUG)
    files = [("case1.dcm", dicom_bytes(photo), "application/dicom"),
             ("ct.dcm", dicom_bytes(np.full((32, 32), 900), sop="ct", modality="CT"), "application/dicom"),
             ("case2.dcm", dicom_bytes(photo, syntax="jpeg"), "application/dicom")]
    at = AppTest.from_file(env_pages, default_timeout=60).run()
    at.file_uploader(key="dx_files").set_value(files).run()
    assert not at.exception
    assert len([m for m in at.markdown if m.value.startswith("####")]) == 2
    assert "ct.dcm" in at.error[0].value and "not a colour photograph" in at.error[0].value
    shown = json.dumps([str(getattr(n, "proto", "")) for n in _walk(at._tree)]) + caplog.text
    assert "case1.dcm" in shown and not [s for s in PHI_STRINGS if s in shown]


def _walk(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _walk(child)


@pytest.fixture()
def env_pages(tmp_path, tiny_registry, monkeypatch):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_registry, weights)
    monkeypatch.setenv("SKINAPP_WEIGHTS", str(weights))
    monkeypatch.setenv("SKINAPP_JOBS", str(tmp_path / "jobs"))
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1] / "app.py")
