"""AppTest for every page, on a tiny registry and generated images."""
from __future__ import annotations

import io
import json
import os
import shutil
import time

import numpy as np
import pytest

from conftest import lesion, make_dataset
from skinapp.decision import one_in

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "app.py")


def png(seed: int = 1, malignant: bool = True, size: int = 64, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    img = lesion(seed, malignant, size)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture()
def env(tmp_path, tiny_registry, tiny_data, monkeypatch):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_registry, weights)
    monkeypatch.setenv("SKINAPP_WEIGHTS", str(weights))
    monkeypatch.setenv("SKINAPP_DATA_ROOTS", f"{tiny_data.parent}{os.pathsep}{tmp_path}")
    monkeypatch.setenv("SKINAPP_JOBS", str(tmp_path / "jobs"))
    return weights


def page(name: str) -> AppTest:
    return AppTest.from_string(
        f"from skinapp.ui import common, {name}\ncommon.disclaimer()\n{name}.render()\n", default_timeout=60)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert any("not a medical device" in w.value for w in at.warning)


def edit_card(weights, name: str, **changes) -> dict:
    """Rewrite one card of the test registry copy (e.g. test_metrics={} makes it a legacy card)."""
    path = weights / f"{name}.json"
    card = json.loads(path.read_text())
    card.update(changes)
    path.write_text(json.dumps(card))
    return card


def make_legacy(weights, name: str) -> dict:
    card = json.loads((weights / f"{name}.json").read_text())
    data = {k: v for k, v in card["data"].items() if k not in ("protocol", "n_test", "grouping", "digests")}
    return edit_card(weights, name, test_metrics={}, data=data)


def op_caption(at: AppTest) -> str:
    return next(c.value for c in at.caption if " split (n=" in c.value)


def roc_at(metrics: dict, threshold: float) -> tuple[float, float]:
    roc = metrics["roc"]
    i = [k for k, t in enumerate(roc["thresholds"]) if t >= threshold][-1]
    return roc["tpr"][i], 1 - roc["fpr"][i]


def test_app_starts_on_the_analyse_page(env):
    """The first page is not called Diagnose: it sits under 'not for diagnosis'."""
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert_clean(at)
    assert at.title[0].value == "Analyse photos"
    assert not any("Diagnos" in t.value for t in at.title)
    assert at.selectbox(key="dx_model").value == "tiny-student"


def test_diagnose_many_files_with_bad_ones(env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    files = [("good.png", png(1), "image/png"), ("empty.jpg", b"", "image/jpeg"),
             ("text.jpg", b"not an image at all", "image/jpeg"),
             ("cmyk.jpg", png(2, mode="CMYK", fmt="JPEG"), "image/jpeg"),
             ("rgba.png", png(3, mode="RGBA"), "image/png"), ("trunc.jpg", png(4, fmt="JPEG")[:300], "image/jpeg")]
    at.file_uploader(key="dx_files").set_value(files)
    at.run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    for bad in ("empty.jpg", "text.jpg", "trunc.jpg"):
        assert bad in errors
    assert "Traceback" not in errors
    verdicts = [m.value for m in at.markdown if m.value.startswith("####")]
    assert len(verdicts) == 3  # good, cmyk, rgba
    df = at.dataframe[0].value
    assert list(df["file"]) == [f[0] for f in files]
    assert list(df.columns) == ["file", "verdict", "p_malignant", "p_benign", "model", "temperature", "threshold",
                                "band", "latency_ms", "error"]  # a fixed order, errors last
    bad = df[df["file"] == "empty.jpg"].iloc[0]
    assert bad["verdict"] == "" and bad["p_malignant"] == "" and "empty" in bad["error"]  # blank, not None/NaN
    good = df[df["file"] == "good.png"].iloc[0]
    assert good["error"] == "" and 0 <= float(good["p_malignant"]) <= 1 and good["model"] == "tiny-student"
    assert at.get("download_button")


def test_diagnose_temperature_moves_probability(env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.file_uploader(key="dx_files").set_value(("one.png", png(5), "image/png"))
    at.run()
    caption = [c.value for c in at.caption if c.value.startswith("P(")][0]
    p1 = float(caption.split("= ")[1].split(" ")[0])
    key = [s.key for s in at.slider if s.key and s.key.startswith("dx_T_")][0]
    at.slider(key=key).set_value(10.0).run()
    caption = [c.value for c in at.caption if c.value.startswith("P(")][0]
    p2 = float(caption.split("= ")[1].split(" ")[0])
    assert abs(p2 - 0.5) < abs(p1 - 0.5) or abs(p1 - 0.5) < 1e-3


def test_diagnose_follows_a_card_recalibrated_while_the_page_is_open(env):
    """The model widget once held card objects: a card recalibrated on disk kept its old temperature in an open
    session, and the probability stayed at it while the caption said the new one."""
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.file_uploader(key="dx_files").set_value(("one.png", png(5), "image/png")).run()
    edit_card(env, "tiny-student", temperature=2.5)
    at.run()
    assert not at.exception
    assert any(c.value.startswith("Calibrated: T = 2.50.") for c in at.caption)
    (p_caption,) = [c.value for c in at.caption if c.value.startswith("P(")]
    assert "at T = 2.50," in p_caption
    fresh = AppTest.from_file(APP, default_timeout=60).run()
    fresh.file_uploader(key="dx_files").set_value(("one.png", png(5), "image/png")).run()
    assert [c.value for c in fresh.caption if c.value.startswith("P(")] == [p_caption]  # as a new session sees it


def test_diagnose_uses_the_calibrated_temperature_itself_until_the_slider_moves(env):
    """The slider shows two decimals; it once fed T rounded (0.96 for 0.9644) to the page, where the CLI,
    Compare and the report use the calibrated value."""
    edit_card(env, "tiny-student", temperature=1.23456)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.file_uploader(key="dx_files").set_value([("a.png", png(5), "image/png"), ("b.png", png(6), "image/png")])
    at.run()
    assert list(at.dataframe[0].value["temperature"]) == [1.23456, 1.23456]
    key = next(s.key for s in at.slider if s.key and s.key.startswith("dx_T_"))
    at.slider(key=key).set_value(2.0).run()
    assert list(at.dataframe[0].value["temperature"]) == [2.0, 2.0]


def test_diagnose_says_what_the_band_covers_and_when_the_probabilities_are_no_longer_calibrated(env):
    """A QA reading found a photo at 0.93 called 'Uncertain' (threshold 0.70, band 0.25) with nothing saying why,
    and a moved temperature still described as calibrated."""
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.slider(key="dx_tiny-student_thr").set_value(0.7)
    at.slider(key="dx_tiny-student_band").set_value(0.25).run()
    captions = [c.value for c in at.caption]
    assert "Uncertain when P(malignant) is between 0.45 and 0.95." in captions
    assert not any("no longer calibrated" in c for c in captions)
    note = next(c for c in captions if "not this patient's risk" in c)  # the score note, from the card's groups
    assert note.startswith("The score P(malignant) is calibrated") and "here means basal cell carcinoma" in note
    key = next(s.key for s in at.slider if s.key and s.key.startswith("dx_T_"))
    at.slider(key=key).set_value(3.0).run()
    assert any("no longer calibrated" in c.value for c in at.caption)
    note = next(c.value for c in at.caption if "not this patient's risk" in c.value)
    assert note.startswith("The score P(malignant) at T = 3.00 is not calibrated")  # not 'is calibrated' any more


def test_a_benign_lean_is_not_green_and_says_what_it_does_not_rule_out(env):
    """A clinician's reading: a green 'Leans benign' reads as all clear. It is blue, with the share of malignant
    photos the model misses at this threshold under it; a malignant lean carries no such line."""
    from skinapp.ui.common import NEGATIVE_COLOUR, POSITIVE_COLOUR

    at = AppTest.from_file(APP, default_timeout=60).run()
    at.file_uploader(key="dx_files").set_value(("a.png", png(5), "image/png")).run()
    for threshold in (0.01, 0.99):  # the same photo leaning malignant, then benign
        at.slider(key="dx_tiny-student_thr").set_value(max(0.05, min(0.95, threshold))).run()
        assert_clean(at)
        (head,) = [m.value for m in at.markdown if m.value.startswith("#### ")]
        caveats = [c.value for c in at.caption if c.value.startswith("Leaning benign does not rule out malignancy")]
        if "Leans benign" in head:
            assert head.startswith("#### :blue[") and len(caveats) == 1 and "scored below 0.85" in caveats[0]
        else:
            assert head.startswith("#### :red[Leans malignant") and not caveats
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    bar = chart["data"][0]
    assert bar["marker"]["color"] == [NEGATIVE_COLOUR, POSITIVE_COLOUR] and "green" not in NEGATIVE_COLOUR
    assert bar["textangle"] == 0 and chart["layout"]["xaxis"]["tickvals"][-1] == 1  # level labels; a 100% tick


def test_an_uncertain_verdict_says_it_does_not_rule_malignancy_out(env):
    """A clinician's reading: 'Uncertain' had nothing under it, on a page whose benign lean says it does not rule
    malignancy out; unresolved is not reassuring either. Compare words it the same way."""
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.file_uploader(key="dx_files").set_value(("a.png", png(5), "image/png")).run()
    p = float(next(c.value for c in at.caption if c.value.startswith("P(malignant) = ")).split()[2])
    at.slider(key="dx_tiny-student_thr").set_value(min(0.95, max(0.05, round(p, 2))))
    at.slider(key="dx_tiny-student_band").set_value(0.3).run()  # the photo now sits inside the band
    assert_clean(at)
    (head,) = [m.value for m in at.markdown if m.value.startswith("#### ")]
    assert "Uncertain" in head
    unresolved = [c.value for c in at.caption if "treat it as unresolved" in c.value]
    assert unresolved == ["Too close to the threshold for the model to lean either way; this does not rule out "
                          "malignancy: treat it as unresolved."]
    assert not any(c.value.startswith("Leaning benign") for c in at.caption)


def test_the_temperature_sits_under_advanced_and_a_moved_one_shows_with_it_closed(env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    (adv,) = [e for e in at.expander if e.label.startswith("Advanced: softmax temperature")]
    (slider,) = [s for s in adv.slider if s.key.startswith("dx_T_")]
    assert not any(s.key.startswith("dx_T_") for e in at.columns for s in e.slider)
    # a browser snaps to the step: on a 0.05 grid a calibrated T such as 0.96 could not be set again once moved
    assert slider.step == 0.01 and round(slider.value / slider.step) * slider.step == pytest.approx(slider.value)
    slider.set_value(3.0).run()
    (flag,) = [c for c in at.caption if "no longer calibrated" in c.value]
    assert flag.value.startswith(":orange[Temperature 3.00, not the calibrated")
    assert not any("no longer calibrated" in c.value for c in at.expander[0].caption)  # outside the section


def test_diagnose_prediction_under_one_second(env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.file_uploader(key="dx_files").set_value(("warm.png", png(6), "image/png"))
    at.run()  # first run imports plotly etc.
    at.file_uploader(key="dx_files").set_value(("fresh.png", png(7), "image/png"))
    t0 = time.perf_counter()
    at.run()
    assert not at.exception
    assert time.perf_counter() - t0 < 1.0


def test_compare_keeps_verdicts_and_timing_when_a_map_fails(env):
    """A card whose map layer does not exist once made Compare raise for every model chosen."""
    edit_card(env, "tiny-student", cam_layer="no.such.layer")
    at = page("compare")
    at.run()
    at.file_uploader(key="cmp_file").set_value(("c.png", png(8), "image/png"))
    at.slider(key="cmp_budget").set_value(1)
    at.run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert "activation map could not be drawn" in error and "no.such.layer" in error
    df = at.dataframe[0].value
    assert set(df["model"]) == {"tiny-teacher", "tiny-student"} and (df["median_ms"] > 0).all()
    assert sum("regions that raised the" in i.proto.imgs[0].caption for i in at.get("image")) == 1  # the teacher's


def test_pages_list_a_card_with_odd_fields_as_broken_and_keep_working(env):
    """A hand-edited card ("temperature": 0, "metrics": null, or an ECE without its pair) once crashed the pages
    that listed it; now it is named in the 'left out' note, or shown without the missing line."""
    edit_card(env, "tiny-nokd", temperature=0)
    edit_card(env, "tiny-teacher", test_metrics=dict(json.loads((env / "tiny-teacher.json").read_text())
                                                     ["test_metrics"], ece_before=0.1, ece_after=None))
    for name in ("diagnose", "compare", "models"):
        at = page(name).run()
        assert not at.exception, name
        (note,) = [w.value for w in at.warning if "left out" in w.value]
        assert "tiny-nokd.json" in note and "temperature must be a number above 0" in note


def test_compare_gives_verdicts_agreement_and_timing_before_the_maps(env, monkeypatch):
    from skinapp.ui import common

    order = []
    real_verdict, real_explain = common.verdict, common.explain
    monkeypatch.setattr(common, "verdict", lambda *a: order.append("verdict") or real_verdict(*a))
    monkeypatch.setattr(common, "explain", lambda *a: order.append("map") or real_explain(*a))
    at = page("compare")
    at.run()
    at.file_uploader(key="cmp_file").set_value(("c.png", png(8), "image/png"))
    at.slider(key="cmp_budget").set_value(1)
    at.run()
    assert not at.exception and order == ["verdict", "verdict", "map", "map"]
    assert sum("regions that raised the" in i.proto.imgs[0].caption for i in at.get("image")) == 2
    assert not any("map follows" in c.value for c in at.caption)


def test_compare_page(env):
    at = page("compare").run()
    assert_clean(at)
    at.file_uploader(key="cmp_file").set_value(("c.png", png(8), "image/png"))
    at.slider(key="cmp_budget").set_value(1)
    t0 = time.perf_counter()
    at.run()
    assert not at.exception
    assert time.perf_counter() - t0 < 30  # the budget bounds the timing, whatever the models
    (note,) = [c.value for c in at.caption if "timed runs per model" in c.value]
    assert "until the 1 s budget was spent" in note and "first (warm-up) run is not counted" in note
    assert int(note.split("Median of ")[1].split()[0]) >= 3
    df = at.dataframe[0].value
    assert set(df["model"]) == {"tiny-teacher", "tiny-student"}
    assert (df["median_ms"] > 0).all()
    ms = dict(zip(df["model"], df["median_ms"]))  # the student against its teacher, in the caption's words
    assert (f"tiny-student answered {ms['tiny-teacher'] / ms['tiny-student']:.0f}x faster than tiny-teacher "
            f"({ms['tiny-student']:.1f} against {ms['tiny-teacher']:.1f} ms).") in note
    verdicts = set(df["verdict"])
    if len(verdicts) == 1 and "Uncertain" not in df["verdict"][0]:  # the agreement line matches the table
        assert any(f"Both models: {df['verdict'][0]}, at threshold 0.50" in s.value for s in at.info)
        assert not at.success  # agreement is not good news: 'Both models: Leans benign' in green read as all clear
    elif len(verdicts) == 1:
        assert any("No model can call this photo" in i.value for i in at.info)
    else:
        assert any("The models do not agree at threshold 0.50" in w.value for w in at.warning)
    assert "c.png" in image_captions(at)  # the photo itself, beside the overlays


@pytest.mark.parametrize("name", ["diagnose", "compare"])
def test_a_card_naming_an_unknown_map_method_is_left_out_with_its_reason(env, name):
    """Found when the card is read (every photo used to fail on Diagnose, and Compare raised)."""
    edit_card(env, "tiny-student", cam_method="scorecam")
    at = page(name).run()
    assert not at.exception
    assert any("`tiny-student.json`: tiny-student.json: activation-map method 'scorecam' is not one of: gradcam, "
               "hirescam, layercam" in w.value for w in at.warning)
    if name == "compare":
        at.slider(key="cmp_budget").set_value(1)
        at.file_uploader(key="cmp_file").set_value(("c.png", png(8), "image/png")).run()
        assert not at.exception and set(at.dataframe[0].value["model"]) == {"tiny-teacher", "tiny-nokd"}


def test_compare_says_how_much_faster_each_student_answered():
    from skinapp.ui.compare import speedups

    row = lambda model, role, ms, teacher=None: {"model": model, "role": role, "median_ms": ms, "teacher": teacher}
    rows = [row("big", "teacher", 260.0), row("small", "teacher", 20.0), row("s1", "student", 4.0, "small"),
            row("s2", "student", 2.6, "gone")]
    assert speedups(rows) == (" s1 answered 5x faster than small (4.0 against 20.0 ms)."
                              " s2 answered 100x faster than big (2.6 against 260.0 ms).")
    assert speedups([row("s1", "student", 4.0, "small")]) == ""  # no teacher chosen: nothing to compare with


@pytest.mark.parametrize("threshold, band", [(0.05, 0.0), (0.95, 0.0), (0.5, 0.3)])
def test_compare_words_verdicts_as_diagnose_does(env, threshold, band):
    """Same threshold and band as Analyse (carried over from it), same verdict wording, read off the same P."""
    from skinapp.registry import Registry
    from skinapp.ui.common import verdict

    at = page("compare")
    at.session_state["_decision"] = {"threshold": threshold, "band": band}  # as Analyse leaves it
    at.run()
    assert at.slider(key="cmp_thr").value == threshold and at.slider(key="cmp_band").value == band
    at.slider(key="cmp_budget").set_value(1)
    at.file_uploader(key="cmp_file").set_value(("c.png", png(8), "image/png")).run()
    assert not at.exception
    reg = Registry(env)
    df = at.dataframe[0].value
    for _, row in df.iterrows():
        assert row["verdict"] == verdict(reg.get(row["model"]), row["p_malignant"], threshold, band)[0]
    headlines = [m.value for m in at.markdown if m.value.startswith("##### ")]
    assert [h.split("[")[1].rstrip("]") for h in headlines] == list(df["verdict"])
    caveats = [c.value for c in at.caption if c.value.startswith("Leaning benign does not rule out malignancy")]
    assert len(caveats) == list(df["verdict"]).count("Leans benign")  # worded as on Analyse, under each benign lean
    from skinapp.ui.common import operating_caption  # each model's own misses: agreeing models can differ there

    for name in df["model"]:
        card = reg.get(name)
        rates = operating_caption(card, threshold, card.temperature)
        assert rates.startswith("Locked test split (n=") and rates in [c.value for c in at.caption]
    if threshold == 0.05:
        assert set(df["verdict"]) == {"Leans malignant"} and "Both models: Leans malignant" in at.info[0].value
    if threshold == 0.95:
        assert set(df["verdict"]) == {"Leans benign"} and len(caveats) == 2
        assert "Both models: Leans benign" in at.info[0].value and not at.success  # neutral, not green


def test_compare_bad_file(env):
    at = page("compare").run()
    at.file_uploader(key="cmp_file").set_value(("c.jpg", b"\x00" * 10, "image/jpeg")).run()
    assert not at.exception
    assert "c.jpg" in at.error[0].value


def test_models_page(env):
    at = page("models").run()
    assert_clean(at)
    identity, performance = (at.dataframe[0].value, at.dataframe[1].value)
    assert set(identity["name"]) == set(performance["name"]) == {"tiny-teacher", "tiny-student", "tiny-nokd"}
    assert list(identity.columns) == ["name", "role", "default", "architecture", "teacher", "runtime", "params", "file"]
    assert list(performance.columns)[:3] == ["name", "val AUC", "test AUC"]
    assert len(at.get("plotly_chart")) >= 2  # ROC + reliability


def roc_names(at: AppTest) -> list[str]:
    (roc,) = [c for c in at.get("plotly_chart")
              if "ROC" in json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "")]
    return [t["name"] for t in json.loads(roc.proto.spec)["data"]]


def test_the_models_roc_plot_begins_with_the_defaults_and_takes_any_model(env):
    """With every shipped model on it the legend held 18 curves and scrolled."""
    at = page("models").run()
    assert_clean(at)
    names = roc_names(at)
    assert names[0] == "chance" and sorted(n.split(" (")[0] for n in names[1:]) == ["tiny-student", "tiny-teacher"]
    at.multiselect(key="models_roc_pick").select("tiny-nokd").run()
    assert sorted(n.split(" (")[0] for n in roc_names(at)[1:]) == ["tiny-nokd", "tiny-student", "tiny-teacher"]


def test_the_models_page_names_numbers_too_thin_to_read(env, monkeypatch):
    """A 20-photo job showed 'test AUC 1.000, 95% CI 1.00-1.00' on 4 test photos with no caution; the shipped
    models (320 test photos, 161 malignant) get none."""
    from skinapp.evaluation import small_sample_note
    from skinapp.registry import DEFAULT_WEIGHTS_DIR, Registry

    at = page("models").run()
    assert_clean(at)
    thin = [c for c in Registry(env).cards() if small_sample_note(c.reported[1]["n_positive"], c.reported[1]["n"],
                                                                  c.task_labels)]
    assert thin  # the tiny registry's splits are small
    (warning,) = [w.value for w in at.warning if w.value.startswith("Numbers too thin to read")]
    for card in thin:
        assert f"**{card.name}** (" in warning
    monkeypatch.setenv("SKINAPP_WEIGHTS", str(DEFAULT_WEIGHTS_DIR))
    if not any(DEFAULT_WEIGHTS_DIR.glob("*.json")):
        pytest.skip("no shipped models in weights/")
    shipped = page("models").run()
    assert not [w for w in shipped.warning if w.value.startswith("Numbers too thin")]


def test_a_card_shows_its_distillation_settings_in_words():
    from skinapp.ui.models import _kd_text

    assert _kd_text({"alpha": 0.5, "objectives": ["logit", "attention"], "temperature": 20.0, "teacher_views": 4}) \
        == "logit + attention at T = 20, alpha 0.5; teacher views 4"
    assert _kd_text(None) == "—" and _kd_text({"objectives": []}) == "—"  # a valid card, once shown as 'KD: '
    assert _kd_text({"alpha": 0.5, "head": "diagnosis", "temperature": 20.0}) == "T = 20, alpha 0.5; head diagnosis"
    # whatever a valid card holds is shown, never formatted as a number it is not (a QA probe crashed the page)
    assert _kd_text({"temperature": "20", "alpha": None, "objectives": [1, 2]}) == "1 + 2 at T = 20, alpha None"
    assert _kd_text({"objectives": "logit", "head": {"x": [1]}}) == "logit; head {'x': [1]}"


def test_small_labels_read_once_and_an_empty_roc_says_why():
    """QA probe: 'Benign (benign)' under a thumbnail, and a ROC titled for curves it did not draw."""
    from skinapp.ui.models import _roc_figure
    from skinapp.ui.train import _thumb_label

    assert _thumb_label("Benign", {"Benign": "benign"}) == "Benign"
    assert _thumb_label("basal_cell_carcinoma", {"basal_cell_carcinoma": "malignant"}) == \
        "basal cell carcinoma (malignant)"
    assert _roc_figure([]).layout.title.text.startswith("No ROC to draw: pick models above")


def test_a_fused_teacher_on_the_models_and_compare_pages(env, tiny_data):
    from skinapp.fuse import fuse_models
    from skinapp.registry import Registry

    fuse_models(Registry(env), ["tiny-teacher", "tiny-student"], "tiny-fused", str(tiny_data), default=True)
    at = page("models").run()
    at.selectbox(key="models_card").set_value("tiny-fused").run()
    assert_clean(at)
    assert any("Fused from tiny-teacher (48px), tiny-student (48px)" in m.value for m in at.markdown)
    at = page("compare").run()
    assert "tiny-fused" in at.multiselect(key="cmp_models").value
    at.file_uploader(key="cmp_file").set_value(("c.png", png(5), "image/png")).run()
    assert_clean(at)
    assert not at.error


def _sweep_rows(temps_val_test: dict) -> list[dict]:
    """Pair rows as scripts/kd_vs_control.py writes them: per T, two seeds against the same control (0.80)."""
    return [{"arch": "dsnet", "image_size": None, "variant": f"kd-T{t:g}", "seed": seed, "teacher": "tiny-teacher",
             "temperature": t, "auc_kd": test + d, "auc_control": 0.80, "delta_auc": test + d - 0.80,
             "delta_auc_ci": [test + d - 0.83, test + d - 0.77], "val_auc_kd": val, "val_auc_control": 0.79}
            for t, (val, test) in temps_val_test.items() for seed, d in ((0, -0.01), (1, 0.01))]


def _models_page_sweep(tmp_path, monkeypatch, *batches: list[dict]):
    """The Models page's sweep table and captions, with each batch of rows in a study file of its own."""
    import json

    from skinapp import studies

    paths = [tmp_path / f"sweep{i}.json" for i in range(len(batches))]
    for path, rows in zip(paths, batches):
        path.write_text(json.dumps(rows))
    monkeypatch.setattr(studies, "SWEEP_STUDIES", (*paths, tmp_path / "not-run-yet.json"))
    at = page("models").run()
    assert_clean(at)
    return next(d.value for d in at.dataframe if "chosen on validation" in d.value), [c.value for c in at.caption]


def test_models_page_shows_the_sweep_against_its_control(env, tmp_path, monkeypatch):
    """By temperature on the locked test split, the control beside it, and the T a choice on validation makes
    (the best validation AUC, here not the best test AUC)."""
    table, captions = _models_page_sweep(
        tmp_path, monkeypatch, _sweep_rows({10.0: (0.86, 0.84), 1.0: (0.84, 0.88), 100.0: (0.85, 0.81)}))
    assert list(table["distillation T"]) == [1.0, 10.0, 100.0] and list(table["chosen on validation"]) == ["", "✓", ""]
    assert list(table["ΔAUC vs control"]) == ["+0.080 ± 0.014", "+0.040 ± 0.014", "+0.010 ± 0.014"]
    assert list(table["val AUC"]) == ["0.840", "0.860", "0.850"]
    assert any("Validation picks T = 10 (mean validation AUC 0.860); its test AUC is 0.840 ± 0.014" in c
               and "dashed: 0.800 ± 0.000)" in c for c in captions)


def test_sweep_batches_each_show_their_own_controls(env, tmp_path, monkeypatch):
    """Temperatures run later, with controls retrained alongside them, join the same table and plot; each row
    shows the control it was compared with, and the caption says which controls go with which T."""
    later = _sweep_rows({5.0: (0.87, 0.85)})
    for r in later:
        r["auc_control"], r["delta_auc"] = 0.82, r["auc_kd"] - 0.82
    table, captions = _models_page_sweep(tmp_path, monkeypatch,
                                         _sweep_rows({10.0: (0.86, 0.84), 1.0: (0.84, 0.88)}), later)
    assert list(table["distillation T"]) == [1.0, 5.0, 10.0] and list(table["chosen on validation"]) == ["", "✓", ""]
    assert list(table["control test AUC"]) == ["0.800 ± 0.000", "0.820 ± 0.000", "0.800 ± 0.000"]
    assert list(table["ΔAUC vs control"]) == ["+0.080 ± 0.014", "+0.030 ± 0.014", "+0.040 ± 0.014"]
    assert any("dashed: 0.800 ± 0.000 for T = 1, 10; 0.820 ± 0.000 for T = 5, each batch" in c for c in captions)


def test_a_run_in_two_sweep_files_is_refused(tmp_path):
    import json

    from skinapp import studies

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_sweep_rows({10.0: (0.86, 0.84)})))
    b.write_text(json.dumps(_sweep_rows({10.0: (0.86, 0.84)})[:1]))
    with pytest.raises(studies.StudyError, match="kd-T10 seed 0 is in both a.json and b.json"):
        studies.load_rows([a, b])
    assert [r["study"] for r in studies.load_rows([a, tmp_path / "absent.json"])] == ["a.json", "a.json"]


def test_sweep_rows_without_a_temperature_are_refused(tmp_path):
    from skinapp import studies

    rows = _sweep_rows({10.0: (0.86, 0.84)})
    del rows[0]["temperature"], rows[1]["temperature"]
    with pytest.raises(studies.StudyError, match="sweep rows of kd-T10 lack their temperature"):
        studies.sweep(rows)


def test_diagnose_operating_point_comes_from_the_locked_test_split(env):
    from skinapp.registry import Registry

    card = Registry(env).get("tiny-student")
    assert card.test_metrics.get("roc"), "the fixture's models are trained with a locked test split"
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert_clean(at)
    sens, spec = roc_at(card.test_metrics, 0.5)
    assert op_caption(at).startswith(f"Locked test split (n={card.test_metrics['n']}): sensitivity {sens:.0%}, "
                                     f"specificity {spec:.0%}")
    assert op_caption(at).endswith(f": it missed {one_in(1 - sens, 'malignant photos')} and flagged "
                                   f"{one_in(1 - spec, 'benign photos')} as malignant.")  # the same, in words
    assert any(o.startswith("tiny-student") and "test AUC" in o for o in at.selectbox(key="dx_model").options)


def test_diagnose_legacy_card_says_it_has_no_test_split(env):
    card = make_legacy(env, "tiny-student")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert_clean(at)
    sens, spec = roc_at(card["metrics"], 0.5)
    caption = op_caption(at)
    assert caption.startswith(f"Validation split (n={card['metrics']['n']}; this model has no locked test split")
    assert f"sensitivity {sens:.0%}, specificity {spec:.0%}" in caption
    label = next(o for o in at.selectbox(key="dx_model").options if o.startswith("tiny-student"))
    assert "val AUC" in label and "(no test split)" in label and "test AUC" not in label


def test_operating_point_follows_the_temperature(env):
    import dataclasses

    from skinapp.registry import Registry
    from skinapp.ui import common

    roc = {"thresholds": [1.0, 0.9, 0.65, 0.3], "tpr": [0.0, 0.5, 1.0, 1.0], "fpr": [0.0, 0.0, 0.5, 1.0]}
    card = dataclasses.replace(Registry(env).get("tiny-student"), temperature=1.0,
                               test_metrics={"n": 4, "roc": roc}, metrics={"n": 9, "roc": roc})
    assert common.operating_point(card, 0.7) == (0.5, 1.0, "test", 4)
    assert common.operating_point(card, 0.7, 1.0) == (0.5, 1.0, "test", 4)
    # T = 0.5 doubles the log-odds: 70% at T = 0.5 is the card's 60.4% cut, which takes in the 0.65 point
    assert common.operating_point(card, 0.7, 0.5) == (1.0, 0.5, "test", 4)
    for t in (0.1, 1.0, 10.0):  # which side of 50% never depends on T
        assert common.operating_point(card, 0.5, t)[:2] == (1.0, 0.5)
    legacy = dataclasses.replace(card, test_metrics={})
    assert common.operating_point(legacy, 0.7) == (0.5, 1.0, "validation", 9)


def test_models_table_reports_the_locked_test_split(env):
    from skinapp.registry import Registry

    make_legacy(env, "tiny-nokd")
    cards = {c.name: c for c in Registry(env).cards()}
    at = page("models").run()
    assert_clean(at)
    df = next(d.value for d in at.dataframe if "test AUC" in d.value).set_index("name")
    for name in ("tiny-teacher", "tiny-student"):
        t = cards[name].test_metrics
        assert df.loc[name, "test AUC"] == f"{t['auc']:.3f}"
        assert df.loc[name, "test AUC 95% CI"] == f"{t['auc_ci'][0]:.2f}–{t['auc_ci'][1]:.2f}"
        assert df.loc[name, "split"] == f"locked test, n={t['n']}"
        assert df.loc[name, "val AUC"] == f"{cards[name].metrics['auc']:.3f}"
    assert df.loc["tiny-nokd", "test AUC"] == "—" and df.loc["tiny-nokd", "test AUC 95% CI"] == "—"
    assert df.loc["tiny-nokd", "split"] == "no test split (legacy)"
    at.multiselect(key="models_roc_pick").select("tiny-nokd").run()
    roc = at.get("plotly_chart")[0].proto.spec
    assert "tiny-student (test AUC" in roc and "tiny-nokd (val AUC" in roc


def test_models_card_says_where_its_calibration_was_measured(env):
    make_legacy(env, "tiny-nokd")
    at = page("models").run()
    at.selectbox(key="models_card").set_value("tiny-student").run()
    assert any(c.value.startswith("On the locked test split; temperature fitted on validation") for c in at.caption)
    assert any(" test images; no metadata table: photos of one lesion" in m.value for m in at.markdown)
    at.selectbox(key="models_card").set_value("tiny-nokd").run()
    assert_clean(at)
    assert any(c.value.startswith("On the validation split, in-sample") for c in at.caption)
    assert any("Split: made before the locked test split" in m.value for m in at.markdown)


def test_models_subgroups_table(env):
    card = json.loads((env / "tiny-student.json").read_text())
    card["test_metrics"]["subgroups"] = {"sex": {
        "female": {"n": 40, "n_positive": 15, "auc": 0.8123, "auc_ci": [0.7, 0.9], "note": ""},
        "male": {"n": 6, "n_positive": 2, "auc": None, "auc_ci": None, "note": "too few to read"}}}
    edit_card(env, "tiny-student", test_metrics=card["test_metrics"])
    at = page("models").run()
    at.selectbox(key="models_card").set_value("tiny-teacher").run()
    assert "Subgroups (locked test split)" not in [h.value for h in at.subheader]
    at.selectbox(key="models_card").set_value("tiny-student").run()
    assert_clean(at)
    assert "Subgroups (locked test split)" in [h.value for h in at.subheader]
    df = next(d.value for d in at.dataframe if "attribute" in d.value).set_index("value")
    assert df.loc["female", "AUC"] == "0.812" and df.loc["female", "95% CI"] == "0.70–0.90"
    assert df.loc["male", "AUC"] == "—" and df.loc["male", "note"] == "too few to read"
    assert df.loc["male", "malignant n"] == 2


def test_models_paired_comparisons_only_when_there_are_some(env, tmp_path, monkeypatch):
    from skinapp.ui import models

    monkeypatch.setattr(models, "PAIRED_FILE", tmp_path / "absent.json")
    at = page("models").run()
    assert "Paired comparisons on the same images" not in [h.value for h in at.subheader]
    paired = tmp_path / "paired.json"
    paired.write_text(json.dumps([{"model_a": "tiny-student", "model_b": "tiny-nokd", "relation": "vs its no-KD "
                                   "control", "n": 320, "auc_a": 0.91, "auc_b": 0.89, "delta_auc": 0.02,
                                   "delta_auc_ci": [-0.011, 0.052], "p_delong": 0.21, "split": "test"}]))
    monkeypatch.setattr(models, "PAIRED_FILE", paired)
    at = page("models").run()
    assert_clean(at)
    assert "Paired comparisons on the same images" in [h.value for h in at.subheader]
    row = next(d.value for d in at.dataframe if "ΔAUC (A − B)" in d.value).iloc[0]
    assert (row["ΔAUC (A − B)"], row["95% CI"], row["DeLong p"]) == ("+0.020", "-0.011 to +0.052", "0.21")


def test_train_page_says_whether_it_can_group_lesions(env, tiny_data, tmp_path):
    at = page("train").run()
    at.text_input(key="train_data").set_value(str(tiny_data)).run()
    assert_clean(at)
    assert any("No metadata table was found" in w.value for w in at.warning)
    data = make_dataset(tmp_path / "with-meta", per_class=12)
    images = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.jpg"))[:10]
    (data / "metadata.csv").write_text("image,lesion_id\n" + "".join(f"{im},L{i // 2}\n" for i, im in
                                                                      enumerate(images)))
    at.text_input(key="train_data").set_value(str(data)).run()
    assert_clean(at)
    assert not any("No metadata table" in w.value for w in at.warning)
    assert any(str(data / "metadata.csv") in c.value and "10 of 24 images a lesion_id" in c.value for c in at.caption)


def test_train_page_shows_example_photos_in_the_charts_order_with_what_they_count_as(env, tmp_path):
    """The thumbnails were alphabetical while the chart beside them grouped the folders by label."""
    data = make_dataset(tmp_path / "dx", per_class=4)
    at = page("train").run()
    at.text_input(key="train_data").set_value(str(data)).run()
    assert_clean(at)
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    drawn = [x for bar in chart["data"] for x in bar["x"]]
    assert drawn == ["basal cell carcinoma", "melanoma", "dermatofibroma", "nevus"]  # grouped, not alphabetical
    shown = [i.proto.imgs[0].caption for i in at.get("image")]  # in page order
    assert shown == ["basal cell carcinoma (malignant)", "melanoma (malignant)", "dermatofibroma (benign)",
                     "nevus (benign)"]


def test_train_page_refuses_bad_folder(env, tmp_path):
    at = page("train").run()
    assert_clean(at)
    at.text_input(key="train_data").set_value(str(tmp_path / "nope")).run()
    assert not at.exception
    assert "does not exist" in at.error[0].value
    at.button[0].click().run()  # the form's submit button
    assert any("no job was started" in e.value for e in at.error)
    assert not list((tmp_path / "jobs").glob("*/job.json"))


def test_train_page_fills_in_each_architectures_own_schedule(env, tiny_data):
    from skinapp.distill import DEFAULT_STUDENT_ARCH, default, option, recipe

    at = page("train").run()
    assert at.selectbox(key="train_arch").value == DEFAULT_STUDENT_ARCH
    assert at.selectbox(key="train_teacher").value == "tiny-teacher"  # the registry's default teacher
    for arch in (DEFAULT_STUDENT_ARCH, "dsnet"):
        at.selectbox(key="train_arch").set_value(arch).run()
        plan = recipe(arch)
        shown = {w.label: w.value for w in at.number_input}
        assert (shown["Epochs"], shown["Learning rate"], shown["Batch size"]) == (
            plan.epochs, plan.lr, plan.batch_size)
        # limits and defaults come from the engine's TrainConfig, the same source as the CLI's arguments
        widgets = {w.label: w for w in at.number_input}
        for label, name in (("Epochs", "epochs"), ("Distillation temperature T", "temperature"),
                            ("Locked test fraction", "test_frac"), ("Batch size", "batch_size")):
            assert (widgets[label].min, widgets[label].max) == (option(name).lo, option(name).hi), label
        assert shown["Distillation temperature T"] == default("temperature") == 20.0
    assert recipe("dsnet") != recipe(DEFAULT_STUDENT_ARCH)


def test_train_page_keeps_a_typed_model_name_when_the_architecture_changes(env):
    at = page("train").run()
    name = lambda: {w.label: w for w in at.text_input}["New model name"].value  # noqa: E731
    assert name() == "my-lite0-tiny"
    at.selectbox(key="train_arch").set_value("dsnet").run()
    assert name() == "my-dsnet"  # the default follows the architecture
    {w.label: w for w in at.text_input}["New model name"].set_value("clinic-run-1").run()
    at.selectbox(key="train_arch").set_value("lite0_tiny").run()
    assert name() == "clinic-run-1"  # a typed name stays


def test_train_page_offers_each_objective_with_its_knobs(env, tiny_data):
    from skinapp import jobs
    from skinapp.distill import option

    at = page("train").run()
    assert at.selectbox(key="train_kd").options == ["logit", "attention", "relational", "function-matching",
                                                    "logit+attention"]
    assert not at.info  # the logit objective runs on cached views
    at.selectbox(key="train_kd").set_value("relational").run()
    labels = [w.label for w in at.number_input]
    assert "Relational scale" in labels and "Rotation task weight" in labels and "Attention weight beta" not in labels
    assert option("kd_relation").help in [w.help for w in at.number_input]
    assert "feature maps" in at.info[0].value and "Estimate time" in at.info[0].value  # no shipped file has them
    at.selectbox(key="train_kd").set_value("function-matching").run()
    assert "teacher at every training step" in at.info[0].value
    # a student that cannot start from this teacher's layers is refused on the page, before any job
    at.text_input(key="train_data").set_value(str(tiny_data)).run()
    at.checkbox(key="train_init").check()
    at.button[0].click().run()
    assert "cannot start from tiny-teacher's layers" in at.error[0].value
    assert not jobs.list_jobs()


def test_train_page_estimates_the_time_before_launch(env, tiny_data, monkeypatch):
    """Estimate time: the run's own preparation and a few timed steps, in a subprocess; no job, no model."""
    from skinapp import jobs
    from skinapp.registry import Registry

    monkeypatch.setenv("SKINAPP_CACHE", str(env.parent / "cache"))
    at = page("train").run()
    at.text_input(key="train_data").set_value(str(tiny_data)).run()
    at.selectbox(key="train_arch").set_value("dsnet").run()
    at.selectbox(key="train_kd").set_value("attention").run()
    values = {"Epochs": 1, "Image size (pixels)": 48, "Batch size": 8}
    for w in at.number_input:
        if w.label in values:
            w.set_value(values[w.label])
    before = Registry().names()
    assert [b.label for b in at.button][:2] == ["Launch training", "Estimate time"]
    at.button[1].click().run()
    assert not at.exception and not at.error
    (shown,) = [i.value for i in at.info if i.value.startswith("Expected time")]
    assert "about" in shown and "training (" in shown and "teacher's pass" in shown
    assert not jobs.list_jobs() and Registry().names() == before


def test_train_page_refuses_a_teacher_that_cannot_teach_the_folder(env, tmp_path):
    """A folder with a diagnosis the default teacher never saw: the reason is on the page and no job starts."""
    from skinapp import jobs
    from conftest import lesion

    data = tmp_path / "own"  # under env's data roots
    for name, malignant in (("melanoma", True), ("vascular_lesion", False)):
        (data / name).mkdir(parents=True)
        for i in range(4):
            lesion(i + (50 if malignant else 0), malignant).save(data / name / f"{i}.jpg")
    at = page("train").run()
    at.text_input(key="train_data").set_value(str(data)).run()
    assert not at.error
    at.button[0].click().run()
    assert "cannot teach this folder" in at.error[0].value and "vascular_lesion" in at.error[0].value
    assert not jobs.list_jobs()


def launch(tiny_data, name: str, teacher: str | None = None, test_frac: float | None = None):
    """Fill in the Train form for a quick dsnet run, launch it and wait for the job to end."""
    from skinapp import jobs

    at = page("train").run()
    at.text_input(key="train_data").set_value(str(tiny_data)).run()
    assert not at.error
    at.selectbox(key="train_arch").set_value("dsnet").run()  # the quickest network to train in a test
    {w.label: w for w in at.text_input}["New model name"].set_value(name)
    if teacher is not None:
        at.selectbox(key="train_teacher").set_value(teacher)
    values = {"Epochs": 1, "Image size (pixels)": 48, "Batch size": 8, "Locked test fraction": test_frac}
    for w in at.number_input:
        if values.get(w.label) is not None:
            w.set_value(values[w.label])
    at.button[0].click().run()
    assert not at.exception
    deadline = time.time() + 120
    while time.time() < deadline:
        state = jobs.list_jobs()[0]
        if state.status != "running":
            break
        time.sleep(1)
    assert state.status == "done", jobs.log_tail(state.id)
    return state


def test_train_page_runs_a_job(env, tiny_data, tmp_path):
    from skinapp.registry import Registry

    state = launch(tiny_data, "ui-student")
    card = Registry().get("ui-student")
    assert card.teacher == "tiny-teacher"
    assert state.spec["args"]["test_frac"] == 0.2 and card.test_metrics["n"] == card.data["n_test"] > 0
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert any("ui-student" in o for o in at.selectbox(key="dx_model").options)


@pytest.mark.parametrize("name, test_frac, reason", [
    ("bad name", None, "must be 1-100 letters"),
    ("ok-name", 0.9, "test fraction 0.9 must leave training images"),
    ("tiny-student", None, "model 'tiny-student' already exists"),
    ("broken-one", None, "taken by the card file broken-one.json, which cannot be used"),
])
def test_train_page_refuses_before_launch_what_the_job_would_refuse(env, tiny_data, name, test_frac, reason):
    """Each of these once started a job that failed in its log (the name taken by a broken card only after every
    epoch), the page saying only that the process ended without a result."""
    from skinapp import jobs

    (env / "broken-one.json").write_text("{not json")
    at = page("train").run()
    at.text_input(key="train_data").set_value(str(tiny_data)).run()
    at.selectbox(key="train_arch").set_value("dsnet").run()
    {w.label: w for w in at.text_input}["New model name"].set_value(name)
    if test_frac is not None:
        next(w for w in at.number_input if w.label == "Locked test fraction").set_value(test_frac)
    at.button[0].click().run()
    assert not at.exception
    (error,) = [e.value.replace("\\", "") for e in at.error]
    assert reason in error and error.endswith("No job was started.")
    assert not jobs.list_jobs()


def test_train_page_without_a_usable_jobs_folder_says_so_and_still_checks_folders(env, tiny_data, tmp_path,
                                                                                monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SKINAPP_JOBS", str(tmp_path / "a-file" / "jobs"))
    at = page("train").run()
    at.text_input(key="train_data").set_value(str(tiny_data)).run()
    assert not at.exception
    assert any("Training jobs are unavailable on this server" in e.value for e in at.error)
    assert any("images" in s.value for s in at.success)  # the folder check still works


def test_train_page_skips_a_damaged_job_and_follows_a_vanished_one_calmly(env, tmp_path):
    from skinapp import jobs

    good, bad = jobs.jobs_dir() / "20261130-000000-aaa", jobs.jobs_dir() / "20261130-000001-bbb"
    for d in (good, bad):
        d.mkdir(parents=True)
    (good / "job.json").write_text(json.dumps({"pid": 0, "pid_start": None, "started": 1.0,
                                               "args": {"name": "kept"}}))
    (bad / "job.json").write_text('{"pid": 1, "sta')  # cut off mid-write
    at = page("train").run()
    assert not at.exception
    assert list(at.dataframe[-1].value["model"]) == ["kept"]
    at.session_state["train_job"] = "20261130-000009-gone"  # a job this session followed, since removed
    at.run()
    assert not at.exception
    assert any("20261130-000009-gone cannot be read" in w.value for w in at.warning)


@pytest.mark.parametrize("typed, shown", [
    ("{root}/a\nb", "/a\\nb does not exist or is not a folder"),  # the escaped newline and all after it
    ("{root}/\x00bad", "holds a NUL character; no folder is named so"),
])
def test_train_page_names_an_odd_typed_path_whole(env, tmp_path, typed, shown):
    """A newline in a typed path once cut the message at it; a NUL byte raised from Path.resolve."""
    at = page("train").run()
    at.text_input(key="train_data").set_value(typed.format(root=tmp_path)).run()
    assert not at.exception
    (error,) = [e.value.replace("\\\\", "\\") for e in at.error]  # Markdown's escaped backslashes, as read
    assert shown in error


def test_train_page_test_fraction_reaches_the_model(env, tiny_data):
    from skinapp.registry import Registry

    state = launch(tiny_data, "ui-nokd", teacher="(none: train without distillation)", test_frac=0.3)
    card = Registry().get("ui-nokd")
    assert card.teacher is None and state.spec["args"]["test_frac"] == 0.3
    assert card.data["test_frac"] == 0.3 and card.data["n_test"] == card.test_metrics["n"] > 0


def test_shipped_default_student_under_one_second(tmp_path, monkeypatch):
    """The real shipped registry: the app opens on it, and a fresh upload is answered in under a second."""
    from skinapp.registry import DEFAULT_WEIGHTS_DIR, Registry

    if not Registry(DEFAULT_WEIGHTS_DIR).cards():
        pytest.skip("no shipped models in weights/")
    monkeypatch.setenv("SKINAPP_WEIGHTS", str(DEFAULT_WEIGHTS_DIR))
    monkeypatch.setenv("SKINAPP_JOBS", str(tmp_path / "jobs"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert_clean(at)
    assert at.selectbox(key="dx_model").value == Registry(DEFAULT_WEIGHTS_DIR).default("student").name
    at.file_uploader(key="dx_files").set_value(("warm.png", png(21, size=300), "image/png")).run()
    at.file_uploader(key="dx_files").set_value(("fresh.png", png(22, size=300), "image/png"))
    t0 = time.perf_counter()
    at.run()
    assert not at.exception
    assert time.perf_counter() - t0 < 1.0
    assert [c for c in at.caption if c.value.startswith("P(malignant)")]


def test_training_can_be_switched_off_for_demos(monkeypatch):
    from skinapp.ui.common import training_enabled

    assert training_enabled()
    for value in ("off", "OFF", "0", "false", "no"):
        monkeypatch.setenv("SKINAPP_TRAINING", value)
        assert not training_enabled()
    at = AppTest.from_file(APP, default_timeout=60).run()  # the app still starts without the page
    assert not at.exception
    monkeypatch.setenv("SKINAPP_TRAINING", "on")
    assert training_enabled()


def test_server_binds_to_localhost_by_default():
    import re
    from pathlib import Path

    text = (Path(APP).parent / ".streamlit" / "config.toml").read_text()
    server = re.search(r"^\[server\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M).group(1)
    assert re.search(r'^address = "localhost"$', server, re.M)


def test_a_broken_card_and_tampered_weights_are_named_once_and_the_rest_works(env):
    (env / "notes.json").write_text('["a stray list"]')
    weights = env / "tiny-student.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    at = page("diagnose").run()
    assert not at.exception
    notes = " ".join(w.value for w in at.warning)
    assert "notes.json" in notes and "not a model card" in notes
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "tiny-student cannot be used" in errors[0] and "altered" in errors[0]
    at.selectbox(key="dx_model").select(next(c for c in at.selectbox(key="dx_model").options
                                             if c.startswith("tiny-nokd"))).run()
    assert not at.error and not at.exception  # another model still serves
    models = page("models").run()
    assert not models.exception and "notes.json" in " ".join(w.value for w in models.warning)


@pytest.mark.parametrize("folder", ["/", "/proc", "/etc", "/nonexistent/secret", "../../.."])
def test_train_page_reads_only_under_its_data_roots(env, folder):
    at = page("train").run()
    at.text_input(key="train_data").set_value(folder).run()
    assert not at.exception
    (err,) = [e.value.replace("\\", "") for e in at.error]  # as read, without Markdown escapes
    assert "must be inside" in err and "SKINAPP_DATA_ROOTS" in err
    assert "does not exist" not in err and "Permission" not in err  # nothing said about the folder itself


# ---------------------------------------------------------------- odd inputs on pages

def test_an_extreme_aspect_photo_gets_a_result_not_an_exception(env):
    from PIL import Image

    img = Image.new("RGB", (20000, 8), (190, 120, 100))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.file_uploader(key="dx_files").set_value(("strip.png", buf.getvalue(), "image/png")).run()
    assert not at.exception and not at.error
    assert len([m for m in at.markdown if m.value.startswith("####")]) == 1
    shown, square = at.session_state["_decoded_uploads"][next(iter(at.session_state["_decoded_uploads"]))]
    assert shown.size == (1024, 128)  # at most 1024 px, letterboxed to 8:1
    assert square.size == (8, 8)  # the centre square the model saw, for the overlay


def image_captions(at: AppTest) -> list[str]:
    """Captions of every st.image on the page (AppTest has no accessor for them)."""
    out, stack = [], [at._tree]
    while stack:
        node = stack.pop()
        stack.extend(getattr(node, "children", {}).values())
        if getattr(node, "type", "") == "image":
            out += [i.caption for i in node.proto.imgs]
    return out


def test_file_names_are_plain_text_on_the_page(env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    name = "[see results](https://example.invalid)\n*x*.jpg"
    at.file_uploader(key="dx_files").set_value((name, b"not an image", "image/jpeg")).run()
    (err,) = at.error
    assert "\\[see results\\](https\\://example.invalid)" in err.value and "\n" not in err.value
    assert "\\*x\\*" in err.value
    good = "[open me](https://example.invalid) _i_.png"
    at.file_uploader(key="dx_files").set_value((good, png(3), "image/png")).run()
    assert "\\[open me\\](https\\://example.invalid) \\_i\\_.png" in image_captions(at)  # the photo's caption too


def test_decoded_uploads_are_kept_per_session_under_a_byte_cap(env, monkeypatch):
    from skinapp.ui import common

    monkeypatch.setattr(common, "SESSION_IMAGE_BYTES", 2 * 300 * 300 * 3)
    at = AppTest.from_file(APP, default_timeout=60).run()
    files = [(f"{i}.png", png(30 + i, size=300), "image/png") for i in range(4)]
    at.file_uploader(key="dx_files").set_value(files).run()
    assert not at.exception
    store = at.session_state["_decoded_uploads"]
    held = sum(i.width * i.height * 3 for pair in store.values() for i in pair)
    assert held <= 2 * 300 * 300 * 3 and 1 <= len(store) < 4
    assert "_decoded_uploads" not in AppTest.from_file(APP, default_timeout=60).run().session_state  # nor another


def test_downloaded_csv_cells_cannot_run_as_formulas():
    import pandas as pd

    from skinapp.ui.common import csv_safe

    df = pd.DataFrame({"file": ["=HYPERLINK(\"http://x\")", "+1.png", "-x.png", "@a.png", "ok.png"],
                       "p_malignant": [0.1, 0.2, 0.3, 0.4, -0.0]})
    text = csv_safe(df).to_csv(index=False)
    assert text.splitlines()[1:] == ["\"'=HYPERLINK(\"\"http://x\"\")\",0.1", "'+1.png,0.2", "'-x.png,0.3",
                                     "'@a.png,0.4", "ok.png,-0.0"]


def test_grad_cam_explains_the_label_shown_at_the_users_threshold(env):
    """The CAM is of the verdict the page shows: the side of the user's threshold the photo falls on."""
    from skinapp.registry import Registry
    from skinapp.ui import common

    card = Registry().get("tiny-student")
    data = png(5)
    photo = common.Upload(data, "one.png")
    p = common.p_positive(card, common.predict(card, photo).logits, card.temperature)
    below, above = (common.activation_map(card, photo, common.shown_label(card, p, t)) for t in (p / 2, (1 + p) / 2))
    assert (below.target, above.target) == ("malignant", "benign")
    assert not np.allclose(below.heatmap, above.heatmap)  # two different explanations, not one relabelled


def test_diagnose_shows_which_photo_it_is_on_then_clears_it(env, monkeypatch):
    import streamlit as st

    said, cleared = [], []

    class Bar:
        def progress(self, value, text=None):
            said.append((round(value, 2), text))

        def empty(self):
            cleared.append(True)

    monkeypatch.setattr(st, "progress", lambda *a, **k: Bar())
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.file_uploader(key="dx_files").set_value([(f"{i}.png", png(40 + i), "image/png") for i in range(3)]).run()
    assert not at.exception
    assert [t for _, t in said] == ([f"Analysing photo {i} of 3 with tiny-student…" for i in (1, 2, 3)]
                                    + [f"Drawing activation map {i} of 3…" for i in (1, 2, 3)])
    assert [v for v, _ in said] == [0.0, 0.17, 0.33, 0.5, 0.67, 0.83] and cleared == [True]


def test_diagnose_shows_every_verdict_before_drawing_a_map(env, monkeypatch):
    """A map takes 8x a verdict's time on the fused teacher (1.9 s against 0.23 s): the page gives every photo's
    verdict first, then draws the maps in their places."""
    from skinapp.ui import common

    order = []
    real_verdict, real_explain = common.verdict, common.explain
    monkeypatch.setattr(common, "verdict", lambda *a: order.append("verdict") or real_verdict(*a))
    monkeypatch.setattr(common, "explain", lambda *a: order.append("map") or real_explain(*a))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.file_uploader(key="dx_files").set_value([(f"{i}.png", png(60 + i), "image/png") for i in range(3)]).run()
    assert not at.exception
    assert order == ["verdict"] * 3 + ["map"] * 3
    captions = [i.proto.imgs[0].caption for i in at.get("image")]
    assert sum("regions that raised the" in c for c in captions) == 3
    assert not any("map follows" in c.value for c in at.caption)  # every placeholder was replaced


def test_diagnose_holds_one_full_size_decode_at_a_time(env, monkeypatch):
    """Verdicts come before maps, so a page of many photos once kept every full-size decode until it ended (five
    7000 px photos: 1.3 GB); now the verdict and the page's copies share one decode, the map decodes again, and
    no decode outlives its step."""
    import gc
    import weakref

    from skinapp.ui import common

    decodes, names = [], []  # weak references: PIL images are unhashable, so no WeakSet
    real = common.load_image

    def spy(data, name=None):
        gc.collect()
        held = sum(ref() is not None for ref in decodes)
        assert not held, f"{held} full-size decode(s) still held when {name} is decoded"
        img = real(data, name=name)
        decodes.append(weakref.ref(img))
        names.append(name)
        return img

    monkeypatch.setattr(common, "load_image", spy)
    at = AppTest.from_file(APP, default_timeout=60).run()
    # over 1024 px, so the page's display copy is a copy (a smaller photo is kept as it is: it is small)
    at.file_uploader(key="dx_files").set_value([(f"{i}.png", png(80 + i, size=1100), "image/png") for i in range(3)])
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert names == ["0.png", "1.png", "2.png"] * 2  # verdict and copies, then the map


def test_diagnose_keeps_the_verdict_when_the_map_fails(env, monkeypatch):
    from test_report import pages_text

    import streamlit as st
    from skinapp.explain import ExplainError
    from skinapp.ui import common

    def broken(*a):
        raise ExplainError("no layer named 'blocks.9' in this network")

    buttons = {}
    real = st.download_button
    monkeypatch.setattr(st, "download_button", lambda label, data, *a, **k: buttons.setdefault(label, data)
                        and real(label, data, *a, **k))
    monkeypatch.setattr(common, "explain", broken)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.file_uploader(key="dx_files").set_value([("a.png", png(70), "image/png"), ("b.png", png(71), "image/png")])
    at.run()
    assert not at.exception
    assert len([m for m in at.markdown if m.value.startswith("####")]) == 2  # both verdicts stand
    errors = [e.value for e in at.error]
    assert len(errors) == 2 and all("activation map could not be drawn" in e and "blocks.9" in e for e in errors)
    assert list(at.dataframe[0].value["error"]) == ["", ""]
    report = pages_text(buttons["Download case report (PDF)"]())
    assert len(report) == 3 and "P(malignant) =" in report[1] and "regions that raised" not in report[1]
    assert "No activation map: it could not be drawn for this photo." in report[1]
    assert not any("regions that raised" in i.proto.imgs[0].caption for i in at.get("image"))


def test_results_csv_says_what_it_is_and_reads_back(env):
    import pandas as pd

    from skinapp.registry import Registry
    from skinapp.ui.diagnose import results_csv, results_table

    card = Registry().get("tiny-student")
    rows = [{"file": "=a.png", "verdict": "Leans benign", "p_malignant": 0.2, "p_benign": 0.8, "model": card.name,
             "temperature": 1.5, "threshold": 0.5, "band": 0.1, "latency_ms": 3.0, "error": ""},
            {"file": "b.jpg", "model": card.name, "error": "b.jpg: the file is empty (0 bytes)."}]
    text = results_csv(results_table(rows, card)).decode()
    assert text.startswith("# Research and education tool") and "not a medical device" in text.splitlines()[0]
    back = pd.read_csv(io.StringIO(text), comment="#", keep_default_na=False)
    assert list(back["file"]) == ["'=a.png", "b.jpg"] and list(back["model"]) == [card.name] * 2
    assert back["temperature"].tolist() == ["1.5", ""] and back["threshold"].tolist() == ["0.5", ""]
    assert back["band"].tolist() == ["0.1", ""]  # with the threshold, what makes a row 'Uncertain'


def test_diagnose_case_report_matches_the_page(env, monkeypatch):
    """The PDF button's report carries what the page shows: each photo's verdict, P, threshold and temperature."""
    import streamlit as st
    from test_report import pages_text

    buttons = {}
    real = st.download_button

    def spy(label, data, *args, **kwargs):
        buttons[label] = data
        return real(label, data, *args, **kwargs)

    monkeypatch.setattr(st, "download_button", spy)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.slider(key="dx_tiny-student_thr").set_value(0.3)
    at.file_uploader(key="dx_files").set_value([("one.png", png(50), "image/png"),
                                                ("two.png", png(51, malignant=False), "image/png"),
                                                ("bad.jpg", b"nope", "image/jpeg")]).run()
    assert not at.exception
    build = buttons["Download case report (PDF)"]
    assert callable(build)  # built only when clicked
    text = pages_text(build())
    verdicts = [m.value.split("[")[1].rstrip("]") for m in at.markdown if m.value.startswith("####")]
    captions = [c.value for c in at.caption if c.value.startswith("P(")]
    assert len(text) == 3 and len(verdicts) == 2
    for page, head, cap in zip(text[1:], verdicts, captions):
        p = float(cap.split("= ")[1].split(" ")[0])
        assert " ".join(head.replace("—", "-").split()) in page and f"P(malignant) = {p:.3f}" in page
        assert "threshold 0.30" in page
    assert "bad.jpg not analysed" in text[0]


def test_diagnose_offers_no_report_when_no_photo_could_be_read(env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.file_uploader(key="dx_files").set_value(("bad.jpg", b"nope", "image/jpeg")).run()
    assert not at.exception and at.error
    assert not at.get("download_button")


def test_train_progress_bar_reads_100_only_when_done():
    from types import SimpleNamespace as NS

    from skinapp.ui.train import _bar

    running = NS(preparation=None, status="running", fraction=1.0, eta_s=3.0)
    assert _bar(running) == (0.99, "Training: 99%, about 3 s left")
    assert _bar(NS(preparation=None, status="done", fraction=1.0, eta_s=0.0)) == (1.0, "100% — done")
    prep = NS(preparation=("decoding the photos", 0.5, 12.0), status="running", fraction=0.0, eta_s=None)
    assert _bar(prep) == (0.5, "Preparing — decoding the photos: 50%, about 12 s left")


def test_train_charts_have_labelled_axes_and_sane_ranges():
    from skinapp.ui.train import _auc_chart, _counts_chart, _loss_chart

    auc = _auc_chart([{"epoch": 1, "val_auc": 0.7}, {"epoch": 2, "val_auc": 0.8}])
    assert auc.layout.xaxis.title.text == "epoch" and auc.layout.yaxis.title.text == "AUC"
    assert tuple(auc.layout.yaxis.range) == (0, 1.02)
    loss = _loss_chart([{"epoch": 1, "step": 5, "steps": 10, "loss": 0.6}, {"epoch": 2, "step": 10, "steps": 10,
                                                                           "loss": 0.4}])
    assert list(loss.data[0].x) == [0.5, 2.0] and loss.layout.xaxis.title.text == "epoch"
    counts = _counts_chart({"melanoma": 5, "nevus": 7}, {"melanoma": "malignant", "nevus": "benign"})
    assert [t.name for t in counts.data] == ["malignant", "benign"] and counts.layout.legend.title.text


def test_train_history_follows_the_job_it_shows(env, tmp_path):
    """The job history sits in the refreshed fragment: a job that ends shows as ended there too."""
    import json

    from skinapp import jobs

    job = jobs.jobs_dir() / "20261130-000000-abc"
    job.mkdir(parents=True)
    (job / "job.json").write_text(json.dumps({"pid": os.getpid(), "pid_start": None, "started": 1.0,
                                              "args": {"name": "slow-one"}}))
    (job / "progress.jsonl").write_text("")
    (job / "log.txt").write_text("reading /srv/alice/lesions\n")
    mine, theirs = page("train"), page("train")
    mine.session_state["train_job"] = job.name  # as _launch leaves it
    mine.run(), theirs.run()
    assert list(mine.dataframe[-1].value["status"]) == ["running"]
    assert [b.label for b in mine.button if b.label == "Cancel"] == ["Cancel"]
    # another session sees how far the running job is, but not its log, and cannot cancel it
    assert any("slow-one" in m.value and "started in another session" in m.value for m in theirs.markdown)
    assert not [b for b in theirs.button if b.label == "Cancel"] and not [c for c in theirs.code]
    (job / "progress.jsonl").write_text(json.dumps({"event": "done", "name": "slow-one"}) + "\n")
    mine.run(), theirs.run()
    assert list(mine.dataframe[-1].value["status"]) == ["done"]
    assert any("slow-one" in m.value and "done" in m.value for m in mine.markdown)
    assert list(theirs.dataframe[-1].value["status"]) == ["done"]  # in the history only


def test_models_page_shows_each_objective_against_its_control(env, tmp_path, monkeypatch):
    from skinapp import studies

    rows = [{"arch": "dsnet", "image_size": None, "variant": "relational", "seed": s, "teacher": "tiny-teacher",
             "auc_kd": a, "auc_control": 0.80, "delta_auc": a - 0.80, "delta_auc_ci": ci, "val_auc_kd": 0.81,
             "val_auc_control": 0.79} for s, a, ci in ((0, 0.83, [0.01, 0.05]), (1, 0.81, [-0.02, 0.04]))]
    study = tmp_path / "objectives.json"
    study.write_text(json.dumps(rows))
    monkeypatch.setattr(studies, "OBJECTIVES_STUDY", study)
    at = page("models").run()
    assert_clean(at)
    assert "Distillation objectives against their controls" in [h.value for h in at.subheader]
    row = next(d.value for d in at.dataframe if "objective" in d.value).iloc[0]
    assert (row["network"], row["objective"], row["ΔAUC"], row["seeds better / worse"]) == (
        "dsnet 96 px", "relational", "+0.020", "1 / 0")
    assert row["ΔAUC per seed"] == "+0.030, +0.010"
    monkeypatch.setattr(studies, "OBJECTIVES_STUDY", tmp_path / "absent.json")
    at = page("models").run()
    assert "Distillation objectives against their controls" not in [h.value for h in at.subheader]


def test_train_page_says_what_the_chosen_objective_did_here(env, tmp_path, monkeypatch):
    from skinapp import studies

    rows = [{"arch": "dsnet", "image_size": None, "variant": v, "seed": 0, "teacher": "tiny-teacher",
             "auc_kd": 0.83, "auc_control": 0.80, "delta_auc": d, "delta_auc_ci": ci}
            for v, d, ci in (("kd", 0.03, [0.01, 0.05]), ("relational", -0.02, [-0.04, -0.01]))]
    study = tmp_path / "study.json"
    study.write_text(json.dumps(rows))
    monkeypatch.setattr(studies, "OBJECTIVES_STUDY", study)
    at = page("train").run()
    assert any("dsnet: ΔAUC +0.030 over 1 seed (1 better, 0 worse)" in c.value
               and "distilled from tiny-teacher," in c.value for c in at.caption)
    at.selectbox(key="train_kd").set_value("relational").run()
    assert any("dsnet: ΔAUC -0.020 over 1 seed (0 better, 1 worse)" in c.value for c in at.caption)
    at.selectbox(key="train_kd").set_value("logit+attention").run()
    assert any("dsnet: ΔAUC +0.030" in c.value for c in at.caption)  # its logit part


def test_what_maps_need_is_prepared_by_one_thread_at_a_time(monkeypatch):
    """Two models' background preparations (timm, the map library) once imported torchvision at the same time and
    left it half imported; they, and a page's map, now take turns."""
    import threading
    import time as _time
    from types import SimpleNamespace

    from skinapp.ui import common

    active, most = [0], [0]

    def slow_import(method):
        active[0] += 1
        most[0] = max(most[0], active[0])
        _time.sleep(0.2)
        active[0] -= 1

    monkeypatch.setattr(common, "load_cam_library", slow_import)
    preds = [SimpleNamespace(cam_model=lambda: None, card=SimpleNamespace(cam_method="gradcam")) for _ in range(3)]
    threads = [threading.Thread(target=common.maps_ready, args=(p,)) for p in preds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most[0] == 1 and active[0] == 0


def test_a_page_builds_its_model_under_the_map_preparation_lock(monkeypatch):
    """A page's model build imports timm: it must not run beside another model's background map preparation,
    which imports the map library (the pair once left torchvision half imported)."""
    from types import SimpleNamespace

    from skinapp.ui import common

    seen = []

    def from_registry(name, registry):
        seen.append(common._MAP_IMPORTS.locked())
        return SimpleNamespace(onnx=False, cam_model=lambda: None, card=SimpleNamespace(cam_method="gradcam",
                                                                                         name=name))
    monkeypatch.setattr(common.Predictor, "from_registry", staticmethod(from_registry))
    monkeypatch.setattr(common, "load_cam_library", lambda method: None)
    common._load.clear()
    common._load("some-model", "0" * 64, "/nowhere")
    assert seen == [True]
