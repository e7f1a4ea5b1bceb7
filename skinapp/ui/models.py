"""Models: the registry, each model card, ROC curves, reliability diagrams and the temperature sweep."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from skinapp.registry import model_summary
from skinapp.ui import common

# the sweep of dsnet-kd's recipe (96 px) from the previous default teacher; the older 112 px one is in docs
SWEEP_FILE = Path(__file__).resolve().parents[2] / "docs" / "results" / "temperature_sweep96.json"
CONTROLS_FILE = SWEEP_FILE.with_name("controls96.json")  # the same dsnet without distillation, for reference


def _roc_figure(cards) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="chance"))
    for c in cards:
        roc = c.metrics.get("roc")
        if roc:
            fig.add_trace(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines",
                                     name=f"{c.name} (AUC {c.metrics.get('auc', float('nan')):.3f})"))
    fig.update_layout(height=420, xaxis_title="1 − specificity", yaxis_title="sensitivity",
                      margin=dict(l=10, r=10, t=30, b=10), title="ROC on each model's validation split")
    return fig


def _reliability_figure(card) -> go.Figure | None:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0.5, 1], y=[0.5, 1], mode="lines", line=dict(dash="dot", color="grey"),
                             name="perfect calibration"))
    found = False
    for key, label in (("reliability_before", "T = 1"), ("reliability", f"T = {card.temperature:.2f}")):
        bins = card.metrics.get(key)
        if bins:
            found = True
            fig.add_trace(go.Scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins],
                                     mode="lines+markers", name=label,
                                     text=[f"n={b['n']}" for b in bins]))
    fig.update_layout(height=360, xaxis_title="confidence", yaxis_title="accuracy",
                      margin=dict(l=10, r=10, t=30, b=10), title=f"Reliability: {card.name}")
    return fig if found else None


def _sweep() -> None:
    if not SWEEP_FILE.exists():
        return
    st.subheader("Temperature sweep (distilling dsnet at different T)")
    st.caption("dsnet at 96 px (dsnet-kd's recipe) distilled from teacher-fused, the default teacher before "
               "teacher-lite012; validation split of its cards; docs/experiments.md has the commands.")
    rows = json.loads(SWEEP_FILE.read_text())
    df = pd.DataFrame(rows)
    st.dataframe(df, width="stretch", hide_index=True)
    if {"T", "auc_mean"} <= set(df.columns):
        fig = go.Figure(go.Scatter(x=df["T"], y=df["auc_mean"], mode="lines+markers",
                                   error_y=dict(array=df.get("auc_sd")), name="AUC"))
        controls = json.loads(CONTROLS_FILE.read_text()) if CONTROLS_FILE.exists() else []
        for c in controls:
            fig.add_hline(y=c["auc_mean"], line_dash="dash", annotation_text=c["name"])
        if controls:
            st.caption("Dashed: the same DSNet trained without distillation. " + " ".join(
                f"{c['name']}: {c['description']} AUC {c['auc_mean']:.4f} ± {c['auc_sd']:.4f} "
                f"over {c['seeds']} seed(s)." for c in controls))
        fig.update_layout(height=320, xaxis_type="log", xaxis_title="T", yaxis_title="validation AUC",
                          margin=dict(l=10, r=10, t=10, b=10))
        st.plotly_chart(fig, width="stretch", key="models_sweep")


def render() -> None:
    st.title("Models")
    cards = common.registry().cards()
    if not cards:
        st.error("No models are registered yet.")
        return
    rows = []
    for c in cards:
        s = model_summary(c)
        m = c.metrics
        rows.append({"name": s["name"], "role": s["role"], "default": s["default"], "arch": s["arch"],
                     "teacher": s["teacher"] or "—", "params": s["params"], "MFLOPs": s["mflops"],
                     "size": common.human_size(s["file_bytes"]), "AUC": m.get("auc"), "accuracy": m.get("accuracy"),
                     "sens@spec80": m.get("sens_at_spec80"), "ECE": m.get("ece"), "T": c.temperature})
    st.dataframe(pd.DataFrame(rows), width="stretch", hide_index=True)
    st.plotly_chart(_roc_figure(cards), width="stretch", key="models_roc")
    name = st.selectbox("Model card", [c.name for c in cards], key="models_card")
    card = next(c for c in cards if c.name == name)
    c1, c2 = st.columns(2)
    with c1:
        fig = _reliability_figure(card)
        if fig is not None:
            st.plotly_chart(fig, width="stretch", key="models_rel")
        m = card.metrics
        if "ece_before" in m:
            null = m.get("ece_null")
            st.caption(f"ECE (15 bins) {m['ece_before']:.3f} at T = 1 → {m.get('ece_after', m.get('ece')):.3f} "
                       f"at the fitted T = {card.temperature:.2f}"
                       + (f". Sampling noise alone: a perfectly calibrated model with these probabilities would "
                          f"show {null['mean']:.3f} on average (95% up to {null['p95']:.3f}) on "
                          f"{m.get('n', 'these')} images." if null else ""))
    with c2:
        st.markdown(f"**{card.name}** — {card.description or card.arch}")
        st.markdown(f"Role: {card.role} · teacher: {card.teacher or '—'} · KD: {card.kd or '—'}  \n"
                    f"Input {card.input_size}px, mean {card.mean}, std {card.std} · Grad-CAM layer `{card.cam_layer}`"
                    f"  \nSplit seed {card.split_seed}, data: {card.data.get('n_train')} train / "
                    f"{card.data.get('n_val')} validation images · created {card.created}")
        if card.fusion:
            members = ", ".join(f"{m['name']} ({m['input_size']}px)" for m in card.fusion["members"])
            st.markdown(f"Fused from {members}: mean probability over the members and over "
                        f"{len(card.fusion['views'])} view(s) of the photo ({', '.join(card.fusion['views'])}). "
                        "No weights of its own were trained.")
    with st.expander("Full model card (JSON)"):
        d = dataclasses.asdict(card)
        d["metrics"] = {k: v for k, v in d["metrics"].items() if k not in ("roc", "reliability", "reliability_before")}
        st.json(d, expanded=False)
    _sweep()
