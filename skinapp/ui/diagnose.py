"""Analyse photos (a page once called Diagnose, a word a research tool should not use): upload photos,
pick a model, read probabilities, the verdict and the Grad-CAM overlay."""
from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from skinapp.decision import score_note
from skinapp.explain import cam_name
from skinapp.imageio import InvalidImageError
from skinapp.report import CaseResult, ReportSettings, case_report
from skinapp.ui import common

log = logging.getLogger(__name__)
T_HELP = ("Temperature divides the model's benign-vs-malignant log-odds (how strongly it leans one way) before "
          "they become a probability. Above 1 pulls the probabilities towards 50/50, below 1 pushes them towards "
          "0 or 1. It never changes the order of the photos nor which side of 50% a photo is on; it can change "
          "which side of another threshold a photo is on. The default is the temperature fitted on validation "
          "images so that, e.g., 80% means right about 80% of the time.")
T_SHORT = "Above 1 pulls probabilities towards 50/50, below 1 towards 0 or 1; the order of photos never changes."
def _settings(cards):
    reg = common.registry()
    by_name = {c.name: c for c in cards}  # names, not cards, in the widget: a card re-read from disk is used
    default = reg.default("student").name if any(c.role == "student" for c in cards) else cards[0].name
    name = st.selectbox("Model", list(by_name), index=list(by_name).index(default),
                        format_func=lambda n: common.model_label(by_name[n]), key="dx_model", help=common.MODEL_HELP)
    card = by_name[name]
    c1, c2, c3 = st.columns(3)
    threshold, band = common.decision_sliders(c1, c2, card, f"dx_{card.name}")
    alpha = c3.slider("Grad-CAM opacity", 0.0, 1.0, 0.45, 0.05, key="dx_alpha")
    temperature = _temperature(card)
    caption = common.operating_caption(card, threshold, temperature)
    if caption:
        c1.caption(caption)
    return card, temperature, threshold, band, alpha


def _temperature(card) -> float:
    """The calibrated T unless the user moves it: under 'Advanced', since a moved T leaves the probabilities
    uncalibrated; a moved T is flagged outside the section, where it shows with the section closed."""
    with st.expander(f"Advanced: softmax temperature (calibrated T = {card.temperature:.2f})"):
        hi = max(10.0, round(card.temperature * 2, 2))
        # keyed by the card's weights and calibration too: a model retrained or recalibrated under its name starts
        # from its new calibrated temperature, not the old one
        # step 0.01: on a 0.05 grid a calibrated T such as 0.96 could not be set again once moved in a browser
        shown = st.slider("Temperature", 0.05, hi, float(round(card.temperature, 2)), 0.01,
                          key=f"dx_T_{card.name}_{card.sha256[:12]}_{card.temperature:.6g}", help=T_HELP)
        st.caption(f"Calibrated: T = {card.temperature:.2f}. {T_SHORT}")
    # the slider shows two decimals; left where it starts, it means the calibrated T itself (as the CLI, Compare
    # and the report use it), not T rounded: a photo right at the threshold could otherwise change sides
    temperature = card.temperature if shown == round(card.temperature, 2) else shown
    if temperature != card.temperature:
        st.caption(f":orange[Temperature {temperature:.2f}, not the calibrated {card.temperature:.2f}: the "
                   f"probabilities are no longer calibrated.]")
    return temperature


@dataclass
class _Pending:
    """A photo whose verdict is on the page and whose activation map is still to draw, and where it goes."""
    name: str
    photo: common.Upload
    slot: Any
    p: float
    target: str


def _show_verdict(card, f, temperature: float, threshold: float, band: float) -> tuple[dict, _Pending]:
    photo = common.Upload(f.getvalue(), f.name)
    pr = common.predict(card, photo)
    p = common.p_positive(card, pr.logits, temperature)
    with st.container(border=True):
        c1, c2, c3 = st.columns([1, 1, 1.4])
        c1.image(common.decode(photo), caption=common.md(f.name), width="stretch")
        slot = common.map_slot(c2)
        headline = common.verdict_heading(c3, card, p, threshold, band, temperature)
        c3.plotly_chart(common.prob_chart(card, p), width="stretch", key=f"dx_chart_{f.file_id}")
        c3.caption(f"P({card.task_labels[1]}) = {p:.3f} at T = {temperature:.2f}, threshold {threshold:.2f} · "
                   f"prediction {pr.latency_ms:.1f} ms · model {card.name}")
    neg, pos = card.task_labels
    row = {"file": f.name, "model": card.name, f"p_{neg}": round(1 - p, 4), f"p_{pos}": round(p, 4),
           "verdict": headline, "temperature": temperature, "threshold": threshold, "band": band,
           "latency_ms": round(pr.latency_ms, 2), "error": ""}
    return row, _Pending(f.name, photo, slot, p, common.shown_label(card, p, threshold))


def _show_map(card, job: _Pending, alpha: float) -> CaseResult:
    """Draw the map where ``_show_verdict`` left room; a map that fails leaves the verdict standing and says so."""
    photo = common.decode(job.photo)
    try:
        m = common.draw_map(job.slot, card, job.photo, job.target)
    finally:
        job.photo.release()  # drawn or failed, its decode is not needed again
    if m is None:
        return CaseResult(job.name, photo, None, None, job.p)
    cam = common.cam_overlay(job.photo, m.heatmap, alpha)
    with job.slot.container():
        st.image(cam, width="stretch", caption=f"{cam_name(card.cam_method)} over the centre square the model sees: "
                                                f"regions that raised the '{m.target}' score (the side of the "
                                                f"threshold this photo is on)")
        st.image(common.cam_legend(), width="stretch",
                 caption=f"colour: low → high contribution · drawn in {m.cam_ms:.1f} ms. Coarse: where the model's "
                         f"evidence lay, not where disease is")
    return CaseResult(job.name, photo, cam, m.target, job.p)


def _verdicts(card, files, temperature: float, threshold: float, band: float, bar) -> tuple[list, list, dict]:
    """Every photo's verdict first (the maps take longer: 1.9 s a photo on the fused teacher); a photo that
    cannot be read gets its error in its place."""
    rows, pending, failed = [], [], {}
    for i, f in enumerate(files):
        if bar is not None:
            bar.progress(i / (2 * len(files)), text=f"Analysing photo {i + 1} of {len(files)} with {card.name}…")
        try:
            busy = st.spinner(f"Analysing {common.md(f.name)} with {card.name}…", show_time=True)
            with busy if bar is None else nullcontext():  # one photo has no bar: a spinner says what it waits for
                row, job = _show_verdict(card, f, temperature, threshold, band)
            job.photo.release()  # the verdict and the page's copies are made; the map decodes again if it must
            pending.append(job)
        except InvalidImageError as exc:
            st.error(common.md(common.friendly(exc)), icon=":material/error:")
            row = {"file": f.name, "model": card.name, "error": common.friendly(exc)}
            failed[i] = CaseResult(f.name, error=common.friendly(exc))
        except Exception as exc:  # never let one file break the page
            log.exception("analysis failed for one upload")
            st.error(f"{common.md(f.name)}: could not be analysed ({type(exc).__name__}).", icon=":material/error:")
            row = {"file": f.name, "model": card.name, "error": type(exc).__name__}
            failed[i] = CaseResult(f.name, error=f"could not be analysed ({type(exc).__name__})")
        rows.append(row)
    return rows, pending, failed


def render() -> None:
    st.title("Analyse photos")
    cards = common.registry().cards()
    common.broken_models_note()
    if not cards:
        st.error("No models are registered yet. Train one on the Train page or with `python -m skinapp distill`.")
        return
    card, temperature, threshold, band, alpha = _settings(cards)
    if not common.usable(card):
        return
    files = st.file_uploader(f"Lesion photos ({common.FORMATS_TEXT}; drag and drop several at once)",
                             type=common.UPLOAD_TYPES, accept_multiple_files=True, key="dx_files")
    st.caption(score_note(card, temperature))  # once per page, under the uploader: what the score is and is not
    if not files:
        st.info("Upload one or more dermoscopic photos to see the model's estimate and where it looked.")
        return
    bar = st.progress(0.0) if len(files) > 1 else None  # a slow model on many photos shows where it is
    rows, pending, failed = _verdicts(card, files, temperature, threshold, band, bar)
    maps = []
    for j, job in enumerate(pending):
        if bar is not None:
            bar.progress((len(files) + j) / (len(files) + len(pending)),
                         text=f"Drawing activation map {j + 1} of {len(pending)}…")
        maps.append(_show_map(card, job, alpha))
    drawn = iter(maps)
    cases = [failed[i] if i in failed else next(drawn) for i in range(len(files))]
    if bar is not None:
        bar.empty()
    _report_button(card, cases, ReportSettings(temperature, threshold, band))
    if len(files) > 1:
        st.subheader("Results")
        df = results_table(rows, card)
        st.dataframe(df, width="stretch", hide_index=True,  # probabilities to 4 places, not 0.636 beside 0.2448
                     column_config={c: st.column_config.NumberColumn(format="%.4f") for c in df.columns
                                    if c.startswith("p_")})
        st.download_button("Download results (CSV)", results_csv(df), "skinapp_results.csv", "text/csv",
                           key="dx_csv")


def _report_button(card, cases: list[CaseResult], settings: ReportSettings) -> None:
    """The PDF is built only when clicked (a callable: in memory, on Streamlit's thread, never on disk)."""
    if not any(not c.error for c in cases):
        return
    st.download_button("Download case report (PDF)", lambda: case_report(card, cases, settings),
                       "skinapp_case_report.pdf", "application/pdf", on_click="ignore", key="dx_pdf",
                       icon=":material/picture_as_pdf:",
                       help="Summary page, then one page per photo: the photo, its Grad-CAM, the verdict at this "
                            "threshold and temperature, the model and its test AUC, and the not-a-medical-device "
                            "statement.")


def results_table(rows: list[dict], card) -> pd.DataFrame:
    """One row per photo in a fixed column order, errors last, blanks where a photo could not be analysed."""
    neg, pos = card.task_labels
    # the band too: a row's 'Uncertain' cannot be checked from its threshold alone
    cols = ["file", "verdict", f"p_{pos}", f"p_{neg}", "model", "temperature", "threshold", "band", "latency_ms",
            "error"]
    return pd.DataFrame([{c: r.get(c, "") for c in cols} for r in rows], columns=cols).astype(object)


def results_csv(df: pd.DataFrame) -> bytes:
    """The table as CSV, its first line saying what the numbers are not (a '#' line: read_csv(comment='#'))."""
    notice = "# " + common.DISCLAIMER.replace("**", "") + "\n"
    return (notice + common.csv_safe(df).to_csv(index=False)).encode()
