"""Compare: one photo through the teacher and students side by side, with measured latency."""
from __future__ import annotations

import statistics

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from skinapp.benchmark import interleaved_latencies
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
    budget = st.slider("Timing budget, seconds (models are timed in turn until it is spent)", 1, 30, 5,
                       key="cmp_budget")
    f = st.file_uploader("One lesion photo", type=common.UPLOAD_TYPES, key="cmp_file")
    if not chosen or f is None:
        st.info("Choose at least one model and upload a photo.")
        return
    data = f.getvalue()
    try:
        img = common.decode(data, f.name)
    except InvalidImageError as exc:
        st.error(common.md(common.friendly(exc)), icon=":material/error:")
        return
    chosen = [name for name in chosen if common.usable(cards[name])]
    if not chosen:
        return
    with st.spinner(f"Timing {len(chosen)} model(s) in turn for about {budget} s…"):
        # interleaved, as the benchmark does: a slow spell of a shared machine falls on every model alike
        times = interleaved_latencies([common.predictor(cards[n]) for n in chosen], img, runs=10_000, warmup=1,
                                      budget_s=budget)
    rows = []
    cols = st.columns(len(chosen))
    for col, name, t in zip(cols, chosen, times):
        card = cards[name]
        a = common.analyse(card, data, f.name)
        p = common.p_positive(card, a.logits, card.temperature)
        ms = statistics.median(t)
        label = card.task_labels[int(p >= 0.5)]
        with col:
            st.markdown(f"**{name}** · {card.role}")
            st.image(common.cam_overlay(data, f.name, a.heatmap, 0.45), width="stretch",
                     caption=f"Grad-CAM ({a.target})")
            st.plotly_chart(common.prob_chart(card, p), width="stretch", key=f"cmp_chart_{name}")
            st.caption(f"{label} · P = {p:.3f} · {ms:.1f} ms median")
        rows.append({"model": name, "role": card.role, "arch": card.arch, "label": label,
                     f"p_{card.task_labels[1]}": round(p, 4), "median_ms": round(ms, 2), "params": card.params,
                     "size": common.human_size(card.file_bytes)})
    df = pd.DataFrame(rows)
    labels = set(df["label"])
    if len(labels) == 1:
        st.success(f"All {len(rows)} models agree: {labels.pop()}.")
    else:
        st.warning("The models disagree on this photo: " + ", ".join(f"{r['model']} → {r['label']}" for r in rows))
    fig = go.Figure(go.Bar(x=df["model"], y=df["median_ms"], text=[f"{v:.1f} ms" for v in df["median_ms"]],
                           marker_color=["#1f6f8b" if r == "teacher" else "#7fb8a4" for r in df["role"]]))
    fig.update_layout(height=300, yaxis_title="median latency, ms (preprocess + forward)",
                      margin=dict(l=10, r=10, t=30, b=10), title="Latency on this machine")
    st.plotly_chart(fig, width="stretch", key="cmp_latency")
    st.caption(f"Median of {len(times[0])} timed runs per model, taken in turn until the {budget} s budget was "
               f"spent (at least 3 each); each model's first (warm-up) run is not counted.")
    st.dataframe(df, width="stretch", hide_index=True)
