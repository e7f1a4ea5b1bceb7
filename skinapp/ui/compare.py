"""Compare: one photo through the teacher and students side by side, with measured latency."""
from __future__ import annotations

import statistics

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from skinapp.benchmark import interleaved_latencies
from skinapp.explain import cam_name
from skinapp.imageio import InvalidImageError
from skinapp.ui import common


def render() -> None:
    st.title("Compare teacher and students")
    reg = common.registry()
    cards = {c.name: c for c in reg.cards()}
    common.broken_models_note()
    if not cards:
        st.error("No models are registered yet.")
        return
    defaults = [reg.default(r).name for r in ("teacher", "student") if any(c.role == r for c in cards.values())]
    chosen = st.multiselect("Models", list(cards), default=defaults, key="cmp_models")
    c1, c2, c3 = st.columns(3)
    threshold, band = common.decision_sliders(c1, c2, cards[(chosen or defaults or list(cards))[0]], "cmp")
    budget = c3.slider("Timing budget, seconds (models are timed in turn until it is spent)", 1, 30, 5,
                       key="cmp_budget")
    f = st.file_uploader(f"One lesion photo ({common.FORMATS_TEXT})", type=common.UPLOAD_TYPES, key="cmp_file")
    if not chosen or f is None:
        st.info("Choose at least one model and upload a photo.")
        return
    photo = common.Upload(f.getvalue(), f.name)
    try:
        img = common.decode(photo)
    except InvalidImageError as exc:
        st.error(common.md(common.friendly(exc)), icon=":material/error:")
        return
    with st.spinner("Loading the models and what their activation maps need…"):
        # what the maps need loads in the background (common._load): waited for here, so that loading it (up to
        # 5-6 s of CPU the first time) cannot fall inside the timed runs
        chosen = [name for name in chosen if common.usable(cards[name], maps=True)]
    if not chosen:
        return
    with st.spinner(f"Timing {len(chosen)} model(s) in turn for about {budget} s…"):
        # interleaved, as the benchmark does: a slow spell of a shared machine falls on every model alike
        times = interleaved_latencies([common.predictor(cards[n]) for n in chosen], img, runs=10_000, warmup=1,
                                      budget_s=budget)
    cols = st.columns(len(chosen) + 1)
    cols[0].image(img, caption=common.md(f.name), width="stretch")
    shown = [_one_model(col, cards[name], photo, t, threshold, band)
             for col, name, t in zip(cols[1:], chosen, times)]
    rows = [row for row, _, _ in shown]
    _agreement(rows, threshold, band)
    _latency_chart(rows, len(times[0]), budget)
    st.dataframe(pd.DataFrame(rows), width="stretch", hide_index=True)
    for name, (_, slot, target) in zip(chosen, shown):  # last: the fused teacher's map alone takes about 2 s
        m = common.draw_map(slot, cards[name], photo, target)
        if m is not None:
            slot.image(common.cam_overlay(photo, m.heatmap, 0.45), width="stretch",
                       caption=f"{cam_name(cards[name].cam_method)}: regions that raised the '{m.target}' score")


def _one_model(col, card, photo: common.Upload, times: list[float], threshold: float, band: float) -> tuple:
    """One model's column, worded as on Analyse (at its own calibrated temperature), with room for its map
    (drawn after every verdict, the agreement and the timing are on the page): its table row, that room, and the
    label the map is to explain."""
    p = common.p_positive(card, common.predict(card, photo).logits, card.temperature)
    ms = statistics.median(times)
    with col:
        st.markdown(f"**{common.md(card.name)}** · {card.role}")
        slot = common.map_slot(st)
        headline = common.verdict_heading(st, card, p, threshold, band, card.temperature, level="#####")
        st.plotly_chart(common.prob_chart(card, p), width="stretch", key=f"cmp_chart_{card.name}")
        st.caption(f"P({card.task_labels[1]}) = {p:.3f} at T = {card.temperature:.2f} (calibrated) · "
                   f"{ms:.1f} ms median")
        rates = common.operating_caption(card, threshold, card.temperature)
        if rates:
            st.caption(rates)
    return {"model": card.name, "role": card.role, "arch": card.arch, "verdict": headline,
            f"p_{card.task_labels[1]}": round(p, 4), "temperature": round(card.temperature, 3),
            "median_ms": round(ms, 2), "params": card.params, "size": common.human_size(card.file_bytes),
            "teacher": card.teacher or "—"}, slot, common.shown_label(card, p, threshold)


def _agreement(rows: list[dict], threshold: float, band: float) -> None:
    """Agreement in the verdicts' own words: two models that both say 'Uncertain' agree on nothing. Shown in a
    neutral box, not a green one: 'Both models: Leans benign' in green read as all clear, which the verdicts'
    own colours were changed to avoid."""
    verdicts = {r["verdict"] for r in rows}
    where = f"at threshold {threshold:.2f} (uncertain within ±{band:.2f})"
    if len(verdicts) == 1 and common.UNCERTAIN not in verdicts:
        who = "Both models" if len(rows) == 2 else f"All {len(rows)} models" if len(rows) > 2 else rows[0]["model"]
        st.info(f"{who}: {verdicts.pop()}, {where}.")
    elif len(verdicts) == 1:
        st.info(f"No model can call this photo {where}: every one is too close to the threshold.")
    else:
        st.warning(f"The models do not agree {where}: " + "; ".join(f"{r['model']}: {r['verdict']}" for r in rows))


def _latency_chart(rows: list[dict], n_runs: int, budget: int) -> None:
    df = pd.DataFrame(rows)
    fig = go.Figure(go.Bar(x=df["model"], y=df["median_ms"], text=[f"{v:.1f} ms" for v in df["median_ms"]],
                           marker_color=["#1f6f8b" if r == "teacher" else "#7fb8a4" for r in df["role"]]))
    fig.update_layout(height=300, yaxis_title="median latency, ms (preprocess + forward)",
                      margin=dict(l=10, r=10, t=30, b=10), title="Latency on this machine")
    st.plotly_chart(fig, width="stretch", key="cmp_latency")
    st.caption(f"Median of {n_runs} timed runs per model, taken in turn until the {budget} s budget was "
               f"spent (at least 3 each); each model's first (warm-up) run is not counted." + speedups(rows))


def speedups(rows: list[dict]) -> str:
    """Each student against its own teacher when that is chosen too, else the slowest teacher chosen: the bar of a
    3 ms student beside a 260 ms teacher is too short to read."""
    teachers = {r["model"]: r["median_ms"] for r in rows if r["role"] == "teacher"}
    lines = []
    for r in (r for r in rows if r["role"] != "teacher" and teachers and r["median_ms"] > 0):
        name = r["teacher"] if r["teacher"] in teachers else max(teachers, key=teachers.get)
        lines.append(f"{r['model']} answered {teachers[name] / r['median_ms']:.0f}x faster than {name} "
                     f"({r['median_ms']:.1f} against {teachers[name]:.1f} ms)")
    return "".join(f" {line}." for line in lines)
