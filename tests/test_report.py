"""The PDF case report: its text read back, its pages rendered, and built without touching the disk."""
from __future__ import annotations

import builtins
import io
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinapp import __version__
from skinapp.decision import negative_caveat, one_in, operating_point
from skinapp.registry import Registry
from skinapp.report import NOT_A_DEVICE, CaseResult, ReportSettings, case_report
from skinapp.report import text as report_text

pdfium = pytest.importorskip("pypdfium2")
WHEN = datetime(2026, 11, 30, 14, 5, 9, tzinfo=timezone.utc)


def pages_text(pdf: bytes) -> list[str]:
    doc = pdfium.PdfDocument(pdf)
    try:
        return [" ".join(doc[i].get_textpage().get_text_range().split()) for i in range(len(doc))]
    finally:
        doc.close()


def render(pdf: bytes, page: int) -> np.ndarray:
    doc = pdfium.PdfDocument(pdf)
    try:
        return np.asarray(doc[page].render(scale=1.0).to_pil().convert("RGB"))
    finally:
        doc.close()


def solid(rgb: tuple[int, int, int], size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), rgb)


@pytest.fixture(scope="module")
def card(tiny_registry):
    return Registry(tiny_registry).get("tiny-student")


def cases() -> list[CaseResult]:
    cam = np.zeros((64, 64, 3), np.uint8)
    cam[..., 2] = 255  # pure blue: findable on the rendered page
    return [CaseResult("lesion-a.jpg", solid((255, 0, 0)), cam, "malignant", 0.91),
            CaseResult("lesion-b.jpg", solid((0, 160, 0)), cam, "benign", 0.12),
            CaseResult("near.jpg", solid((255, 0, 0)), cam, "malignant", 0.52),
            CaseResult("empty.jpg", error="the file is empty (0 bytes).")]


def test_report_says_what_a_clinician_needs(card):
    s = ReportSettings(1.7, 0.5, 0.1)
    pdf = case_report(card, cases(), s, when=WHEN)
    assert pdf.startswith(b"%PDF-")
    text = pages_text(pdf)
    assert len(text) == 1 + 3  # a summary, then one page per analysed photo (not the unreadable one)
    summary = text[0]
    auc, (lo, hi) = card.test_metrics["auc"], card.test_metrics["auc_ci"]
    op = operating_point(card, 0.5, 1.7)
    for needle in (card.name, card.role, card.sha256, f"skinapp {__version__}", "2026-11-30 14:05:09",
                   f"test AUC (95% CI) {auc:.3f} [{lo:.2f}, {hi:.2f}]", "Temperature 1.70",
                   f"sensitivity {op.sensitivity:.0%}, specificity {op.specificity:.0%}", "locked test split",
                   "lesion-a.jpg Leans malignant 0.910", "lesion-b.jpg Leans benign 0.120",
                   "near.jpg Uncertain (near the threshold) 0.520",
                   "empty.jpg not analysed: the file is empty (0 bytes)."):
        assert needle in summary, needle
    for page in text:  # every page carries the statement
        assert " ".join(NOT_A_DEVICE.split()) in page
    assert "P(benign) = 0.090 P(malignant) = 0.910 at temperature 1.70, threshold 0.50" in text[1]
    method = {"gradcam": "Grad-CAM", "layercam": "LayerCAM"}[card.cam_method]  # the card's own map, by name
    assert "Leans malignant" in text[1] and f"{method}: regions that raised the 'malignant' score" in text[1]
    assert "Leans benign" in text[2] and "Uncertain" in text[3]
    caveat = negative_caveat(card, 0.5, 1.7, 0.1)  # worded in test_evaluation; a benign lean starts at 0.5 - 0.1
    assert caveat.startswith("Leaning benign does not rule out malignancy") and "below 0.40" in caveat
    assert caveat in text[2] and "Leaning benign" not in text[1] + text[3]  # said of a benign lean only
    unresolved = "this does not rule out malignancy: treat it as unresolved."
    assert unresolved in text[3] and unresolved not in text[1] + text[2]  # and of an uncertain one its own way
    assert "Reading the score The score P(malignant) at T = 1.70" in summary and "not this patient's risk." in summary
    assert "Malignant here means basal cell carcinoma and melanoma." in summary  # the card's own grouping
    assert all("not this patient's risk" in page for page in text[1:])  # a photo page may be read on its own
    moved = card.temperature != 1.7  # the tiny card's calibrated T is not 1.7: the report says so
    assert moved and "not the calibrated T: the probabilities are no longer calibrated" in summary
    assert "P(malignant) at T = 1.70 is not calibrated" in summary
    calibrated = pages_text(case_report(card, cases()[:1], ReportSettings(card.temperature, 0.5, 0.1), when=WHEN))
    assert "no longer calibrated" not in calibrated[0]
    assert "is calibrated on validation photos of which" in calibrated[0]
    assert (f"it missed {one_in(1 - op.sensitivity, 'malignant photos')} and flagged "
            f"{one_in(1 - op.specificity, 'benign photos')} as malignant") in summary


def test_report_pages_show_the_photo_and_its_overlay(card):
    pdf = case_report(card, cases()[:1], ReportSettings(1.0, 0.5, 0.1), when=WHEN)
    page = render(pdf, 1).astype(int)
    r, g, b = page[..., 0], page[..., 1], page[..., 2]
    red = (r > 200) & (g < 60) & (b < 60)
    blue = (b > 200) & (r < 60) & (g < 60)
    h, w = red.shape
    # each picture is an 88 mm square on the 210 x 297 mm page: the photo left of x = 100 mm, Grad-CAM right of it
    square, cut = (88 / 210 * w) * (88 / 297 * h), round(100 / 210 * w)
    assert red[:, :cut].sum() > 0.8 * square and red[:, cut:].sum() == 0
    assert blue[:, cut:].sum() > 0.8 * square and blue[:, :cut].sum() == 0


def test_report_text_is_safe_and_on_one_line(card):
    odd = [CaseResult("Läsion\nforged line — 名.jpg", solid((9, 9, 9)), None, "benign", 0.2)]
    text = pages_text(case_report(card, odd, ReportSettings(1.0, 0.5, 0.1), when=WHEN))
    assert "Läsion\\nforged line - \\u540d.jpg" in text[0] and "Läsion\\nforged line - \\u540d.jpg" in text[1]


def test_report_keeps_names_beyond_latin1_distinct_and_composed(card):
    """Two photos named in Chinese once both read "??1.jpg"; a macOS name (e + combining accent) read "Le?sion"."""
    odd = [CaseResult(n, solid((9, 9, 9)), None, "benign", 0.2) for n in ("病变1.jpg", "病人1.jpg", "Le\u0301sion.png")]
    summary = pages_text(case_report(card, odd, ReportSettings(1.0, 0.5, 0.1), when=WHEN))[0]
    assert "\\u75c5\\u53d81.jpg" in summary and "\\u75c5\\u4eba1.jpg" in summary and "Lésion.png" in summary


def test_report_embeds_photos_as_jpeg_and_keeps_the_page_number_under_a_long_model_name(card):
    """20 camera-size photos made a 24-48 MB PDF (raw RGB); a 100-character model name pushed the page number
    off the footer."""
    import dataclasses

    from conftest import lesion

    photos = [CaseResult(f"p{i}.jpg", lesion(i, i % 2 == 0, 1024), None, "benign", 0.2) for i in range(10)]
    long = dataclasses.replace(card, name="m" * 100)
    pdf = case_report(long, photos, ReportSettings(1.0, 0.5, 0.1), when=WHEN)
    assert len(pdf) < 10 * 300_000, len(pdf)
    text = pages_text(pdf)
    assert all(f"page {i}/{len(text)}" in t for i, t in enumerate(text, 1))


@pytest.mark.parametrize("settings, needle", [((1.0, 0.5, 0.5), "uncertain band 0.5"),
                                               ((1.0, 0.5, -0.1), "uncertain band -0.1"),
                                               ((1.0, 1.0, 0.1), "threshold 1.0"),
                                               ((0.0, 0.5, 0.1), "temperature 0.0")])
def test_report_settings_refuse_nonsense(settings, needle):
    with pytest.raises(ValueError, match=needle):
        ReportSettings(*settings)


def test_report_needs_a_photo(card):
    with pytest.raises(ValueError, match="at least one photo"):
        case_report(card, [], ReportSettings(1.0, 0.5, 0.1))


def test_report_is_built_in_memory(card, monkeypatch):
    """Uploads never reach the server's disk: building the report opens no file for writing."""
    real_open = builtins.open

    def no_writes(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            raise AssertionError(f"case_report opened {file!r} for writing")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_writes)
    monkeypatch.setattr(io, "open", no_writes)
    assert case_report(card, cases(), ReportSettings(1.0, 0.5, 0.1)).startswith(b"%PDF-")


def test_cli_writes_the_same_report(tiny_registry, tiny_data, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for src in sorted((tiny_data / "melanoma").glob("*.jpg"))[:2]:
        (photos / src.name).write_bytes(src.read_bytes())
    (photos / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "case.pdf"
    r = subprocess.run([sys.executable, "-m", "skinapp", "--weights", str(tiny_registry), "predict", "--model",
                        "tiny-student", "--threshold", "0.4", "--band", "0.05", "--report", str(out), str(photos)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 2 and "broken.png" in r.stderr  # the bad photo is reported, the others still are
    text = pages_text(out.read_bytes())
    assert len(text) == 3
    assert "threshold 0.40 (uncertain within +/-0.05)" in text[1] and "tiny-student" in text[0]
    assert "broken.png not analysed" in text[0]
    assert "photos/" not in text[0]  # one folder: plain file names

    for line in r.stdout.splitlines():  # the report and the printed verdicts agree, word for word
        name, rest = line.split(": ", 1)
        page = next(t for t in text[1:] if Path(name).name in t)
        assert report_text(rest.split("  (")[0]) in page.split(" P(benign)")[0]


def test_cli_report_tells_apart_photos_of_one_name_in_two_folders(tmp_path):
    from skinapp.cli import report_names

    a, b = tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg"
    assert report_names([a, b]) == {a: "a/x.jpg", b: "b/x.jpg"}
    assert report_names([a]) == {a: "x.jpg"}


def test_a_summary_table_longer_than_a_page_repeats_its_header(card):
    many = [CaseResult(f"lesion-{i:03d}.jpg", error="the file is empty (0 bytes).") for i in range(70)]
    text = pages_text(case_report(card, many, ReportSettings(1.0, 0.5, 0.1), when=WHEN))
    assert len(text) >= 2 and all("Photo" in t and "Verdict" in t and "P(malignant)" in t for t in text)
    assert "lesion-069.jpg" in text[-1]
