"""AppTest for every page, on a tiny registry and generated images."""
from __future__ import annotations

import io
import shutil
import time

import pytest
from PIL import Image

from conftest import lesion

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
def env(tmp_path, tiny_registry, monkeypatch):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_registry, weights)
    monkeypatch.setenv("SKINAPP_WEIGHTS", str(weights))
    monkeypatch.setenv("SKINAPP_JOBS", str(tmp_path / "jobs"))
    return weights


def page(name: str) -> AppTest:
    return AppTest.from_string(
        f"from skinapp.ui import common, {name}\ncommon.disclaimer()\n{name}.render()\n", default_timeout=60)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert any("not a medical device" in w.value for w in at.warning)


def test_app_starts_on_diagnose(env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert_clean(at)
    assert at.title[0].value == "Diagnose"
    assert "tiny-student" in at.selectbox(key="dx_model").value.name


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


def test_diagnose_prediction_under_one_second(env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.file_uploader(key="dx_files").set_value(("warm.png", png(6), "image/png"))
    at.run()  # first run imports plotly etc.
    at.file_uploader(key="dx_files").set_value(("fresh.png", png(7), "image/png"))
    t0 = time.perf_counter()
    at.run()
    assert not at.exception
    assert time.perf_counter() - t0 < 1.0


def test_compare_page(env):
    at = page("compare").run()
    assert_clean(at)
    at.file_uploader(key="cmp_file").set_value(("c.png", png(8), "image/png"))
    at.slider(key="cmp_repeats").set_value(3)
    at.run()
    assert not at.exception
    df = at.dataframe[0].value
    assert set(df["model"]) == {"tiny-teacher", "tiny-student"}
    assert (df["median_ms"] > 0).all()
    assert at.success or at.warning  # agreement line


def test_compare_bad_file(env):
    at = page("compare").run()
    at.file_uploader(key="cmp_file").set_value(("c.jpg", b"\x00" * 10, "image/jpeg")).run()
    assert not at.exception
    assert "c.jpg" in at.error[0].value


def test_models_page(env):
    at = page("models").run()
    assert_clean(at)
    df = at.dataframe[0].value
    assert set(df["name"]) == {"tiny-teacher", "tiny-student", "tiny-nokd"}
    assert len(at.get("plotly_chart")) >= 2  # ROC + reliability


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


def test_models_page_shows_the_sweep_against_its_control(env, tmp_path, monkeypatch):
    import json

    from skinapp.ui import models

    sweep, controls = tmp_path / "temperature_sweep.json", tmp_path / "controls.json"
    sweep.write_text(json.dumps([{"T": t, "alpha": 0.5, "seeds": 2, "auc_mean": 0.8 + t / 1000, "auc_sd": 0.01}
                                 for t in (1, 10, 100)]))
    controls.write_text(json.dumps([{"name": "dsnet-nokd", "description": "hard labels only.", "seeds": 2,
                                     "auc_mean": 0.79, "auc_sd": 0.02}]))
    monkeypatch.setattr(models, "SWEEP_FILE", sweep)
    monkeypatch.setattr(models, "CONTROLS_FILE", controls)
    at = page("models").run()
    assert_clean(at)
    assert any(list(d.value["T"]) == [1, 10, 100] for d in at.dataframe if "T" in d.value)
    assert any("dsnet-nokd: hard labels only. AUC 0.7900 ± 0.0200 over 2 seed(s)" in c.value for c in at.caption)


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
    from skinapp.distill import DEFAULT_STUDENT_ARCH, recipe

    at = page("train").run()
    assert at.selectbox(key="train_arch").value == DEFAULT_STUDENT_ARCH
    assert at.selectbox(key="train_teacher").value == "tiny-teacher"  # the registry's default teacher
    for arch in (DEFAULT_STUDENT_ARCH, "dsnet"):
        at.selectbox(key="train_arch").set_value(arch).run()
        plan = recipe(arch)
        shown = {w.label: w.value for w in at.number_input}
        assert (shown["Epochs"], shown["Learning rate"], shown["Batch size"]) == (
            plan.epochs, plan.lr, plan.batch_size)
    assert recipe("dsnet") != recipe(DEFAULT_STUDENT_ARCH)


def test_train_page_runs_a_job(env, tiny_data, tmp_path):
    at = page("train").run()
    at.text_input(key="train_data").set_value(str(tiny_data)).run()
    assert not at.error
    at.selectbox(key="train_arch").set_value("dsnet").run()  # the quickest network to train in a test
    form_inputs = {w.label: w for w in at.text_input}
    form_inputs["New model name"].set_value("ui-student")
    for w in at.number_input:
        if w.label == "Epochs":
            w.set_value(1)
        if w.label == "Image size (pixels)":
            w.set_value(48)
        if w.label == "Batch size":
            w.set_value(8)
    at.button[0].click().run()
    assert not at.exception
    from skinapp import jobs
    deadline = time.time() + 120
    while time.time() < deadline:
        state = jobs.list_jobs()[0]
        if state.status != "running":
            break
        time.sleep(1)
    assert state.status == "done", jobs.log_tail(state.id)
    from skinapp.registry import Registry
    assert Registry().get("ui-student").teacher == "tiny-teacher"
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert any("ui-student" in o for o in at.selectbox(key="dx_model").options)


def test_shipped_default_student_under_one_second(tmp_path, monkeypatch):
    """The real shipped registry: the app opens on it, and a fresh upload is answered in under a second."""
    from skinapp.registry import DEFAULT_WEIGHTS_DIR, Registry

    if not Registry(DEFAULT_WEIGHTS_DIR).cards():
        pytest.skip("no shipped models in weights/")
    monkeypatch.setenv("SKINAPP_WEIGHTS", str(DEFAULT_WEIGHTS_DIR))
    monkeypatch.setenv("SKINAPP_JOBS", str(tmp_path / "jobs"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert_clean(at)
    assert at.selectbox(key="dx_model").value.name == Registry(DEFAULT_WEIGHTS_DIR).default("student").name
    at.file_uploader(key="dx_files").set_value(("warm.png", png(21, size=300), "image/png")).run()
    at.file_uploader(key="dx_files").set_value(("fresh.png", png(22, size=300), "image/png"))
    t0 = time.perf_counter()
    at.run()
    assert not at.exception
    assert time.perf_counter() - t0 < 1.0
    assert [c for c in at.caption if c.value.startswith("P(malignant)")]
