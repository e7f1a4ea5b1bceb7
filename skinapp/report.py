"""A PDF case report of analysed photos: what a clinician files or shows a colleague after a session.

Built in memory (``bytes``) with fpdf2 and never written to the server's disk; the Analyse page offers it as a
download and ``predict --report`` writes the same bytes where the user asks. Text uses the PDF core fonts, so
characters outside Latin-1 (rare in file names) are written as their code points (\\u75c5).
"""
from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from fpdf import FPDF
from PIL import Image

from . import __version__, checks
from .explain import cam_name, legend
from .decision import (UNCERTAIN, auc_text, negative_caveat, operating_point, plain_rates, score_note,
                       temperatures, uncertain_caveat, verdict)
from .imageio import one_line
from .registry import ModelCard

log = logging.getLogger(__name__)

NOT_A_DEVICE = ("Research and education tool - not a medical device, not for diagnosis. Outputs are model "
                "estimates on photos and must not guide care. See a clinician for any concern about a skin lesion.")
_COLOURS = {"red": (176, 42, 30), "blue": (30, 80, 150), "orange": (190, 110, 0)}
_PLAIN = {"—": "-", "–": "-", "→": "->", "±": "+/-", "★": "*", "’": "'", "‘": "'", "“": '"', "”": '"', "…": "..."}


@dataclass(frozen=True)
class CaseResult:
    """One analysed photo: the copy shown on the page, its Grad-CAM overlay, and P(positive) at T=1 logits
    already turned into a probability at the report's temperature. ``error`` instead, when it could not be read."""
    name: str
    photo: Image.Image | None = None
    overlay: np.ndarray | None = None
    cam_target: str | None = None
    p_positive: float | None = None
    error: str = ""


@dataclass(frozen=True)
class ReportSettings:
    temperature: float
    threshold: float
    band: float

    def __post_init__(self):
        checks.temperature(self.temperature)
        checks.threshold(self.threshold)
        checks.band(self.band)


def text(s: object) -> str:
    """User and model text as the core fonts (Latin-1) can draw it, on one line. Composed first (a macOS "e" +
    accent is Latin-1's "é"); what Latin-1 lacks is written as its code point (\\u75c5), not "?": two
    photos named in Chinese once both read "??1.jpg" in one report."""
    s = unicodedata.normalize("NFC", one_line(s))
    for a, b in _PLAIN.items():
        s = s.replace(a, b)
    return s.encode("latin-1", "backslashreplace").decode("latin-1")


class _Report(FPDF):
    def __init__(self, card: ModelCard):
        super().__init__(orientation="P", unit="mm", format="A4")
        self.card = card
        self.set_auto_page_break(True, margin=22)
        self.set_title("skinapp case report")
        self.set_creator(f"skinapp {__version__}")

    def footer(self) -> None:
        self.set_y(-18)
        self.set_font("helvetica", "I", 7)
        self.set_text_color(90, 90, 90)
        self.multi_cell(0, 3.2, text(NOT_A_DEVICE), align="C", new_x="LMARGIN", new_y="NEXT")
        name = self.card.name if len(self.card.name) <= 40 else self.card.name[:39] + "…"  # the page number stays
        self.cell(0, 3.5, text(f"{name} · sha256 {self.card.sha256[:16]}… · page {self.page_no()}/{{nb}}"),
                  align="C")
        self.set_text_color(0, 0, 0)


def case_report(card: ModelCard, results: list[CaseResult], settings: ReportSettings,
                when: datetime | None = None) -> bytes:
    """A summary page (model, settings, operating point, one line per photo) and one page per analysed photo."""
    if not results:
        raise ValueError("a case report needs at least one photo")
    when = when or datetime.now().astimezone()
    pdf = _Report(card)
    pdf.set_image_filter("DCTDecode")  # photos as JPEG: 1-2 MB a photo as raw RGB, 50 photos past 100 MB
    _summary(pdf, card, results, settings, when)
    for i, r in enumerate(results, 1):
        if not r.error:
            _photo_page(pdf, card, r, i, settings)
    log.info("case report: %d photos, model %s", len(results), card.name)
    return bytes(pdf.output())


def _line(pdf: FPDF, label: str, value: str) -> None:
    pdf.set_font("helvetica", "B", 9)
    pdf.cell(42, 5, text(label))
    pdf.set_font("helvetica", "", 9)
    pdf.multi_cell(0, 5, text(value), new_x="LMARGIN", new_y="NEXT")


def _summary(pdf: _Report, card: ModelCard, results: list[CaseResult], s: ReportSettings, when: datetime) -> None:
    pdf.add_page()
    pdf.set_font("helvetica", "B", 16)
    pdf.cell(0, 10, "skinapp case report", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "B", 9)
    pdf.set_fill_color(255, 243, 205)
    pdf.multi_cell(0, 5, text(NOT_A_DEVICE), border=1, fill=True, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    neg, pos = card.task_labels
    op = operating_point(card, s.threshold, s.temperature)
    where = {"test": "locked test split", "validation": "validation split (no locked test split: optimistic)"}
    rows = [("Generated", f"{when.strftime('%Y-%m-%d %H:%M:%S %Z').strip()} by skinapp {__version__}"),
            ("Model", f"{card.name} ({card.role}, {card.arch}, {card.params:,} parameters)"),
            ("Weights sha256", card.sha256),
            ("Discrimination", auc_text(card).replace("AUC", "AUC (95% CI)", 1) if card.test_metrics.get("auc_ci")
             else auc_text(card)),
            ("Temperature", "{} (calibrated on validation: {})".format(*temperatures(s.temperature, card.temperature)) +
             ("" if s.temperature == card.temperature else
              " - not the calibrated T: the probabilities are no longer calibrated")),
            ("Threshold", f"P({pos}) >= {s.threshold:.2f} leans {pos}; within +/-{s.band:.2f} of it: uncertain")]
    if op is not None:
        rows.append(("Operating point", f"sensitivity {op.sensitivity:.0%}, specificity {op.specificity:.0%} at "
                                        f"this threshold and temperature, on the {where[op.split]} "
                                        f"(n={op.n if op.n is not None else '?'}): "
                                        f"{plain_rates(op, card.task_labels)}."))
    rows.append(("Reading the score", score_note(card, s.temperature)))
    for label, value in rows:
        _line(pdf, label, value)
    pdf.ln(3)
    _table(pdf, card, results, s)


_WIDTHS = (10, 80, 62, 28)


def _table_header(pdf: FPDF, pos: str) -> None:
    pdf.set_font("helvetica", "B", 9)
    for w, h in zip(_WIDTHS, ("#", "Photo", "Verdict", f"P({pos})")):
        pdf.cell(w, 6, text(h), border="B")
    pdf.ln()
    pdf.set_font("helvetica", "", 9)


def _table(pdf: FPDF, card: ModelCard, results: list[CaseResult], s: ReportSettings) -> None:
    """One row per photo; a table longer than the page goes on with its header on the next one."""
    pos, widths = card.task_labels[1], _WIDTHS
    _table_header(pdf, pos)
    for i, r in enumerate(results, 1):
        if pdf.will_page_break(12 if r.error else 6):  # an error's reason may wrap to a second line
            pdf.add_page()
            _table_header(pdf, pos)
        pdf.cell(widths[0], 6, str(i))
        pdf.cell(widths[1], 6, _fit(pdf, text(r.name), widths[1] - 2))
        if r.error:  # the whole reason, wrapped over the verdict and probability columns
            pdf.multi_cell(widths[2] + widths[3], 6, text(f"not analysed: {r.error}"), new_x="LMARGIN",
                           new_y="NEXT")
            continue
        head = verdict(card, r.p_positive, s.threshold, s.band)[0]
        pdf.cell(widths[2], 6, _fit(pdf, text("Uncertain (near the threshold)" if head == UNCERTAIN else head),
                                    widths[2] - 2))
        pdf.cell(widths[3], 6, f"{r.p_positive:.3f}", new_x="LMARGIN", new_y="NEXT")


def _fit(pdf: FPDF, s: str, width: float) -> str:
    """Shortened in the middle to fit a table cell: a file name's start and its extension both stay readable."""
    if pdf.get_string_width(s) <= width:
        return s
    keep = len(s)
    while keep > 4 and pdf.get_string_width(s[: keep // 2] + "..." + s[len(s) - keep // 2:]) > width:
        keep -= 1
    return s[: keep // 2] + "..." + s[len(s) - keep // 2:]


def _photo_page(pdf: FPDF, card: ModelCard, r: CaseResult, i: int, s: ReportSettings) -> None:
    neg, pos = card.task_labels
    p = r.p_positive
    head, colour = verdict(card, p, s.threshold, s.band)
    pdf.add_page()
    pdf.set_font("helvetica", "B", 12)
    pdf.multi_cell(0, 6, text(f"Photo {i}: {r.name}"), align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "B", 14)
    pdf.set_text_color(*_COLOURS[colour])
    pdf.cell(0, 9, text(head), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.set_font("helvetica", "", 10)
    pdf.multi_cell(0, 5, text(f"P({neg}) = {1 - p:.3f}   P({pos}) = {p:.3f}   at temperature {s.temperature:.2f}, "
                              f"threshold {s.threshold:.2f} (uncertain within +/-{s.band:.2f})"),
                   new_x="LMARGIN", new_y="NEXT")
    if head == UNCERTAIN:
        pdf.multi_cell(0, 5, text(uncertain_caveat(card)), new_x="LMARGIN", new_y="NEXT")
    elif head == f"Leans {neg}":
        pdf.multi_cell(0, 5, text(negative_caveat(card, s.threshold, s.temperature, s.band)), new_x="LMARGIN",
                       new_y="NEXT")
    pdf.set_font("helvetica", "I", 8)  # a page may be read on its own: what the score is not, in short
    pdf.multi_cell(0, 4, text(f"P({pos}) is a model score, not this patient's risk"
                              + ("" if s.temperature == card.temperature else ", and not calibrated at this T")
                              + " (page 1 says more)."), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    y, w = pdf.get_y(), 88
    if r.photo is not None:
        _image(pdf, r.photo, pdf.l_margin, y, w)
    if r.overlay is not None:
        _image(pdf, Image.fromarray(r.overlay), pdf.l_margin + w + 4, y, w)
    x2 = pdf.l_margin + w + 4
    pdf.set_xy(pdf.l_margin, y + w + 2)
    pdf.set_font("helvetica", "I", 8)
    pdf.cell(w + 4, 4, "The photo")
    if r.overlay is not None:
        pdf.multi_cell(w, 4, text(f"{cam_name(card.cam_method)}: regions that raised the '{r.cam_target}' score"),
                       new_x="LMARGIN", new_y="NEXT")
        pdf.image(Image.fromarray(legend(256, 10)), x2, pdf.get_y() + 1, w, 3)
        pdf.set_xy(x2, pdf.get_y() + 4.5)
        pdf.cell(w / 2, 4, "low contribution")
        pdf.cell(w / 2, 4, "high", align="R", new_x="LMARGIN", new_y="NEXT")
    else:  # the page kept the verdict when the map failed; the report says the map is missing, not blank
        pdf.multi_cell(w, 4, "No activation map: it could not be drawn for this photo.", new_x="LMARGIN",
                       new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("helvetica", "", 8)
    pdf.multi_cell(0, 4, text(f"Model {card.name} ({card.role}), {auc_text(card)}. {cam_name(card.cam_method)} "
                              f"shows where the model looked, not why a lesion is what it is."),
                   new_x="LMARGIN", new_y="NEXT")


def _image(pdf: FPDF, img: Image.Image, x: float, y: float, box: float) -> None:
    """Fit the picture in a ``box`` mm square, keeping its aspect ratio."""
    iw, ih = img.size
    scale = box / max(iw, ih)
    w, h = iw * scale, ih * scale
    pdf.image(img.convert("RGB"), x + (box - w) / 2, y + (box - h) / 2, w, h)
