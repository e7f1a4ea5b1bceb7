"""Models: the registry, each model card, ROC curves, reliability diagrams, subgroups, the distillation
objectives against their controls and the temperature sweep.

Every number says which split it is on: the locked test split when a card has one (only reported, never used
for a choice), else the validation split it was tuned on.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from skinapp.registry import model_summary
from skinapp import studies
from skinapp.evaluation import small_sample_note
from skinapp.explain import cam_name
from skinapp.ui import common

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
PAIRED_FILE = RESULTS / "paired.json"  # paired tests on the same images (ΔAUC, bootstrap interval, DeLong)
SHORT_SPLIT = {"test": "test", "validation": "val"}
CURVES = ("roc", "reliability", "reliability_before")


def _ci(ci, digits: int = 2) -> str:
    return f"{ci[0]:.{digits}f}–{ci[1]:.{digits}f}" if ci else ""


def _with_ci(value, ci) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    return f"{value:.2f} ({_ci(ci)})" if ci else f"{value:.2f}"


def _rounded(value, digits: int = 3):
    return round(value, digits) if isinstance(value, (int, float)) else None


def _shown(value, digits: int = 3) -> str:
    """A table cell: the number, or a dash where the card has none (a legacy card's test columns)."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "—"


def _split_cell(card) -> str:
    if card.test_metrics:
        return f"locked test, n={card.test_metrics.get('n', '?')}"
    return "no test split (legacy)" if "protocol" not in card.data else "no test split (test fraction 0)"


def _identity_row(card) -> dict:
    s = model_summary(card)
    return {"name": s["name"], "role": s["role"], "default": s["default"], "architecture": s["arch"],
            "teacher": s["teacher"] or "—", "runtime": f"{s['runtime']} {s['precision']}",
            "params": s["params"], "file": common.human_size(s["file_bytes"])}


def _performance_row(card) -> dict:
    s, t = model_summary(card), card.test_metrics
    return {"name": s["name"], "val AUC": _shown(s["val_auc"]), "test AUC": _shown(s["test_auc"]),
            "test AUC 95% CI": _ci(s["test_auc_ci"]) or "—",
            "test sens@spec80 (95% CI)": _with_ci(t.get("sens_at_spec80"), t.get("sens_at_spec80_ci")),
            "test ECE": _shown(t.get("ece")), "calibration T": round(card.temperature, 3),
            "split": _split_cell(card)}


NAME = {"name": st.column_config.TextColumn(pinned=True, width=180)}
IDENTITY_COLUMNS = NAME | {"role": st.column_config.TextColumn(width=70),
                           "default": st.column_config.CheckboxColumn(width=60),
                           "architecture": st.column_config.TextColumn(width=155),
                           "teacher": st.column_config.TextColumn(width=120),
                           "runtime": st.column_config.TextColumn(width=90),
                           "params": st.column_config.NumberColumn(format="compact", width=70),
                           "file": st.column_config.TextColumn(width=80)}
PERFORMANCE_COLUMNS = NAME | {"val AUC": st.column_config.TextColumn(width=70),
                              "test AUC": st.column_config.TextColumn(width=70),
                              "test AUC 95% CI": st.column_config.TextColumn(width=110),
                              "test sens@spec80 (95% CI)": st.column_config.TextColumn(width=170),
                              "test ECE": st.column_config.TextColumn(
                                  width=70, help="Expected calibration error on the locked test split at the "
                                                 "calibration T (the card also keeps it at T = 1)"),
                              "calibration T": st.column_config.NumberColumn(
                                  width=85, help="The temperature fitted on validation that calibrates the model's "
                                                 "probabilities (not the distillation temperature)"),
                              "split": st.column_config.TextColumn(width=150)}


def _rows_height(n: int) -> int:
    """Pixels for a table that shows all its n rows (Streamlit's rows are 35 px, plus the header)."""
    return 35 * (n + 1) + 3


def _registry_table(cards) -> None:
    """Two tables of few columns each, so that both fit beside the sidebar without scrolling sideways."""
    st.dataframe(pd.DataFrame([_identity_row(c) for c in cards]), width="stretch", hide_index=True,
                 column_config=IDENTITY_COLUMNS, height=_rows_height(len(cards)))
    st.markdown("**How well each model does**")
    st.dataframe(pd.DataFrame([_performance_row(c) for c in cards]), width="stretch", hide_index=True,
                 column_config=PERFORMANCE_COLUMNS, height=_rows_height(len(cards)))
    st.caption("val: the validation split, where epochs and the temperature were chosen. test: the locked, "
               "lesion-grouped test split, only reported, never used for a choice; intervals are 95% bootstrap. "
               "T: the calibration temperature fitted on validation; test ECE is at that T.")
    _small_samples(cards)


def _small_samples(cards) -> None:
    """Name the models whose reported numbers rest on too few photos of a class (a 20-photo job reported
    'test AUC 1.000 [1.00, 1.00]' on 4 photos), as `evaluate` and the subgroup table already do."""
    notes = []
    for card in cards:
        split, m = card.reported
        n, n_pos = m.get("n"), m.get("n_positive")
        if isinstance(n, int) and isinstance(n_pos, int):
            note = small_sample_note(n_pos, n, card.task_labels)
            notes += [f"**{common.md(card.name)}** ({SHORT_SPLIT.get(split, split)} split): {note}"] if note else []
    if notes:
        st.warning("Numbers too thin to read: " + "; ".join(notes) + ".", icon=":material/warning:")


def _roc_title(splits: set[str]) -> str:
    if not splits:
        return "No ROC to draw: pick models above (a card without a ROC has none to show)"
    if splits == {"test"}:
        return "ROC on each model's locked test split"
    if splits == {"validation"}:
        return "ROC on each model's validation split (none has a locked test split: optimistic)"
    return "ROC on the locked test split where a model has one, else validation (the legend says which)"


def _roc_models(cards) -> list:
    """The models whose ROC to draw: the default of each role to begin with (18 curves in one legend could not
    be read), any registered model when picked."""
    names = [c.name for c in cards]
    default = [c.name for c in cards if c.default] or names[:2]
    picked = st.multiselect("Models on the ROC plot", names, default=default, key="models_roc_pick",
                            help="The default teacher and student to begin with; add any other model.")
    return [c for c in cards if c.name in picked]


def _roc_figure(cards) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="chance"))
    splits = set()
    for c in cards:
        split, m = c.reported
        roc = m.get("roc")
        if roc:
            splits.add(split)
            fig.add_trace(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines",
                                     name=f"{c.name} ({SHORT_SPLIT[split]} AUC {m.get('auc', float('nan')):.3f})"))
    fig.update_layout(height=420, xaxis_title="1 − specificity", yaxis_title="sensitivity",
                      margin=dict(l=10, r=10, t=40, b=10), title=_roc_title(splits))
    return fig


def _reliability_figure(card) -> go.Figure | None:
    split, m = card.reported
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0.5, 1], y=[0.5, 1], mode="lines", line=dict(dash="dot", color="grey"),
                             name="perfect calibration"))
    found = False
    for key, label in (("reliability_before", "T = 1"), ("reliability", f"T = {card.temperature:.2f}")):
        bins = m.get(key)
        if bins:
            found = True
            fig.add_trace(go.Scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins],
                                     mode="lines+markers", name=label,
                                     text=[f"n={b['n']}" for b in bins]))
    where = "locked test split" if split == "test" else "validation split (in-sample)"
    fig.update_layout(height=360, xaxis_title="confidence", yaxis_title="accuracy",
                      margin=dict(l=10, r=10, t=40, b=10), title=f"Reliability of {card.name} on its {where}")
    return fig if found else None


def _ece_caption(card) -> str | None:
    split, m = card.reported
    before, after = m.get("ece_before"), m.get("ece_after", m.get("ece"))
    if before is None or after is None:
        return None
    null = m.get("ece_null")
    where = ("On the locked test split; temperature fitted on validation. " if split == "test" else
             "On the validation split, in-sample: the temperature was fitted on these same images, so this "
             "flatters the calibration. ")
    text = (f"{where}ECE (15 bins) {before:.3f} at T = 1 → {after:.3f} "
            f"at the fitted T = {card.temperature:.2f}")
    if null:
        text += (f". Sampling noise alone: a perfectly calibrated model with these probabilities would show "
                 f"{null['mean']:.3f} on average (95% up to {null['p95']:.3f}) on {m.get('n', 'these')} images")
    return text + "."


def _subgroups(card) -> None:
    groups = card.test_metrics.get("subgroups")
    if not groups:
        return
    st.subheader("Subgroups (locked test split)")
    rows = [{"attribute": attr, "value": value, "n": r.get("n"), "malignant n": r.get("n_positive"),
             "AUC": "—" if r.get("auc") is None else f"{r['auc']:.3f}",
             "95% CI": _ci(r.get("auc_ci")) or "—", "note": r.get("note") or "—"}
            for attr, values in groups.items() for value, r in values.items()]
    st.dataframe(pd.DataFrame(rows), width="stretch", hide_index=True, height=_rows_height(len(rows)),
                 column_config={"note": st.column_config.TextColumn("note", width="large")})
    st.caption("Small groups cannot be read: with few images of either class the AUC swings widely (see the "
               "interval), and a group with too few has no AUC at all.")


def _split_text(card) -> str:
    d = card.data
    if "protocol" not in d:
        return ("made before the locked test split: photos of one lesion may sit on both sides of its split; "
                "its numbers are on the split it was tuned on.")
    g = d.get("grouping") or {}
    meta = g.get("metadata")
    dups = g.get("near_duplicates", "—")
    how = (f"lesion-grouped via {Path(meta).name} ({g.get('images_with_id', 0)} images with a lesion id), "
           f"near-duplicates: {dups}" if meta else
           f"no metadata table: photos of one lesion are kept together only when they are near-duplicates ({dups})")
    return f"{d.get('n_train')} train / {d.get('n_val')} validation / {d.get('n_test')} test images; {how}"


def _kd_text(kd: dict | None) -> str:
    """The distillation settings in words ('logit at T = 20, alpha 0.5; head diagnosis; ...'), not a dict; any
    value a valid card may hold is shown as text, never formatted as a number it is not."""
    if not kd:
        return "—"
    rest = {k: v for k, v in kd.items() if k not in ("objectives", "temperature", "alpha")}
    objectives = kd.get("objectives")  # a card from before objectives were recorded does not say
    head = "" if not objectives else (" + ".join(map(_plain, objectives)) if isinstance(objectives, list)
                                      else _plain(objectives))
    if "temperature" in kd:
        head += (" at " if head else "") + f"T = {_plain(kd['temperature'])}"
    if "alpha" in kd:
        head += (", " if head else "") + f"alpha {_plain(kd['alpha'])}"
    return "; ".join(filter(None, [head] + [f"{k.replace('_', ' ')} {_plain(v)}" for k, v in rest.items()])) or "—"


def _plain(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _card_details(card) -> None:
    st.markdown(f"**{card.name}** — {card.description or card.arch}")
    st.markdown(f"Role: {card.role} · teacher: {card.teacher or '—'} · KD: {_kd_text(card.kd)}  \n"
                f"Input {card.input_size}px, mean {card.mean}, std {card.std} · activation map: "
                f"{cam_name(card.cam_method)} on `{card.cam_layer}`"
                f"  \nSplit seed {card.split_seed} · created {card.created}")
    st.markdown(f"Split: {_split_text(card)}")
    if card.fusion:
        members = ", ".join(f"{m['name']} ({m['input_size']}px)" for m in card.fusion["members"])
        st.markdown(f"Fused from {members}: mean probability over the members and over "
                    f"{len(card.fusion['views'])} view(s) of the photo ({', '.join(card.fusion['views'])}). "
                    "No weights of its own were trained.")


def _card_json(card) -> None:
    with st.expander("Full model card (JSON)", expanded=False):
        d = dataclasses.asdict(card)
        for key in ("metrics", "test_metrics"):
            d[key] = {k: v for k, v in d[key].items() if k not in CURVES}
        st.json(d, expanded=1)  # its sections open, their long lists folded


def _paired() -> None:
    if not PAIRED_FILE.exists():
        return
    rows = json.loads(PAIRED_FILE.read_text())
    st.subheader("Paired comparisons on the same images")
    st.dataframe(pd.DataFrame([{
        "model A": r.get("model_a"), "model B": r.get("model_b"), "relation": r.get("relation"),
        "split": r.get("split"), "n": r.get("n"), "AUC A": _rounded(r.get("auc_a"), 4),
        "AUC B": _rounded(r.get("auc_b"), 4),  # as stored: rounded again to 3 places, 0.8675 read 0.868 beside 0.867
        "ΔAUC (A − B)": f"{r['delta_auc']:+.3f}" if isinstance(r.get("delta_auc"), (int, float)) else "—",
        "95% CI": f"{r['delta_auc_ci'][0]:+.3f} to {r['delta_auc_ci'][1]:+.3f}" if r.get("delta_auc_ci") else "—",
        "DeLong p": f"{r['p_delong']:.2g}" if isinstance(r.get("p_delong"), (int, float)) else "—"}
        for r in rows]), width="stretch", hide_index=True)
    st.caption("Both models scored on the same images. ΔAUC is A minus B; its interval is a 95% paired bootstrap "
               "(both models on the same resamples); p is DeLong's test. An interval that spans 0 shows no "
               "difference these images can detect.")


def _pm(m_sd) -> str:
    return f"{m_sd[0]:.3f} ± {m_sd[1]:.3f}"


def _objective_row(s: dict) -> dict:
    return {"network": s["network"] + (f" {s['image_size']} px" if s["image_size"] else " 96 px"),
            "objective": s["variant"], "seeds": s["seeds"], "test AUC": _pm(s["auc"]),
            "control": _pm(s["auc_control"]), "ΔAUC": f"{s['delta_auc'][0]:+.3f}",
            "seeds better / worse": f"{s['seeds_better']} / {s['seeds_worse']}",
            "ΔAUC per seed": ", ".join(f"{d:+.3f}" for d, _, _ in s["deltas"]),
            "val AUC": "—" if None in s["val_auc"] else f"{s['val_auc'][0]:.3f} / {s['val_auc'][1]:.3f}"}


def _objectives() -> None:
    summary = studies.load_study()  # studies.OBJECTIVES_STUDY: each objective against its control
    if not summary:
        return
    st.subheader("Distillation objectives against their controls")
    st.dataframe(pd.DataFrame([_objective_row(s) for s in summary]), width="stretch", hide_index=True,
                 height=_rows_height(len(summary)))
    teachers = sorted({s["teacher"] for s in summary if s["teacher"]})
    st.caption(f"Teacher {', '.join(teachers)}; each student against the same network, input size, schedule and "
               "seed trained without distillation (control), both on the locked test split. ΔAUC is the mean over "
               "seeds; a seed counts as better (worse) when its paired 95% bootstrap interval lies above (below) "
               "zero (the intervals themselves: docs/results/kd_objectives_lite012.json). 'init' starts from the "
               "teacher's own layers without distillation. val AUC: variant / control, what a choice made on "
               "validation sees. Commands: docs/experiments.md.")


def _sweep() -> None:
    # the logit objective at each T against its control, per seed; batches of temperatures in files of their own
    rows, chosen = studies.sweep(studies.load_rows(studies.SWEEP_STUDIES))
    if not rows:
        return
    st.subheader("Temperature sweep (distilling dsnet at different T)")
    df = pd.DataFrame([{"distillation T": s["temperature"], "seeds": s["seeds"],
                        "val AUC": "—" if s["val_auc"][0] is None else f"{s['val_auc'][0]:.3f}",
                        "test AUC": _pm(s["auc"]), "control test AUC": _pm(s["auc_control"]),
                        "ΔAUC vs control": f"{s['delta_auc'][0]:+.3f} ± {s['delta_auc'][1]:.3f}",
                        "seeds better / worse": f"{s['seeds_better']} / {s['seeds_worse']}",
                        "chosen on validation": "✓" if s is chosen else ""} for s in rows])
    st.dataframe(df, width="stretch", hide_index=True, height=_rows_height(len(df)))
    st.plotly_chart(_sweep_figure(rows), width="stretch", key="models_sweep")
    pick = (f" Validation picks T = {chosen['temperature']:g} (mean validation AUC {chosen['val_auc'][0]:.3f}); "
            f"its test AUC is {_pm(chosen['auc'])}." if chosen else "")
    st.caption(f"dsnet (dsnet-kd's recipe, 96 px) distilled from {rows[0]['teacher']} at each T with alpha 0.5, "
               f"against the same network, schedule and seed trained without distillation (dashed: "
               f"{_controls(rows)}); all on the locked test split, mean ± sd over seeds; a seed is better (worse) "
               f"when its paired 95% interval clears zero.{pick} Commands: docs/experiments.md.")


def _controls(rows: list[dict]) -> str:
    """The controls each batch of temperatures was compared with: one value when every batch shares it."""
    batches: dict[str, list[float]] = {}
    for s in rows:
        batches.setdefault(_pm(s["auc_control"]), []).append(s["temperature"])
    if len(batches) == 1:
        return next(iter(batches))
    return "; ".join(f"{c} for T = {', '.join(f'{t:g}' for t in ts)}" for c, ts in batches.items()) + \
        ", each batch of temperatures with controls trained alongside it"


def _sweep_figure(rows: list[dict]) -> go.Figure:
    temps = [s["temperature"] for s in rows]
    fig = go.Figure(go.Scatter(x=temps, y=[s["auc"][0] for s in rows], mode="lines+markers",
                               error_y=dict(array=[s["auc"][1] for s in rows]), name="distilled (mean ± sd)"))
    fig.add_trace(go.Scatter(x=temps, y=[s["auc_control"][0] for s in rows], mode="lines+markers",
                             line=dict(dash="dash", color="grey"), name="no distillation (same seeds)"))
    fig.update_layout(height=320, xaxis_type="log", xaxis_title="distillation temperature T (log scale)",
                      yaxis_title="test AUC", margin=dict(l=10, r=10, t=10, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
                      xaxis=dict(tickvals=temps, ticktext=[f"{t:g}" for t in temps]))
    return fig


def render() -> None:
    st.title("Models")
    cards = common.registry().cards()
    common.broken_models_note()
    if not cards:
        st.error("No models are registered yet.")
        return
    _registry_table(cards)
    st.plotly_chart(_roc_figure(_roc_models(cards)), width="stretch", key="models_roc")
    names = [c.name for c in cards]
    first = next((i for i, c in enumerate(cards) if c.default and c.role == "student"), 0)  # the default student
    name = st.selectbox("Model card", names, index=first, key="models_card")
    card = next(c for c in cards if c.name == name)
    c1, c2 = st.columns(2)
    with c1:
        fig = _reliability_figure(card)
        if fig is not None:
            st.plotly_chart(fig, width="stretch", key="models_rel")
        caption = _ece_caption(card)
        if caption:
            st.caption(caption)
    with c2:
        _card_details(card)
    _subgroups(card)
    _card_json(card)
    _paired()
    _objectives()
    _sweep()
