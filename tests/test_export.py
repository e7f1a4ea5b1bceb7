"""ONNX Runtime copies: registered with their source, checked like safetensors, same answers, Grad-CAM via the
source, int8 calibrated on validation images only."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from conftest import assert_no_pair_saturates, lesion
from skinapp.data import decode_dataset, model_input, scan_dataset
from skinapp.explain import explain
from skinapp.inference import Predictor, split_logits
from skinapp.registry import ModelFileError, Registry

pytest.importorskip("onnxruntime")


QUANTISED: list[list[str]] = []  # the kept-float set of every int8 quantisation the export made


@pytest.fixture(scope="module")
def exported(tiny_registry, tiny_data, tmp_path_factory):
    """A registry copy holding tiny-student's fp32 and int8 ONNX copies; the int8 calibration batches kept."""
    from skinapp import export, runtime

    root = tmp_path_factory.mktemp("onnx") / "weights"
    shutil.copytree(tiny_registry, root)
    reg = Registry(root)
    export.export_model(reg, "tiny-student", str(tiny_data))
    seen = []
    real = runtime.Int8Quantizer.quantize

    def spy(self, batches, name, keep=()):
        batches = [b.copy() for b in batches]
        seen[:] = batches  # every call (the copy and a sensitivity search's probes) calibrates on the same images
        QUANTISED.append(list(keep))
        return real(self, batches, name, keep)

    runtime.Int8Quantizer.quantize = spy
    try:
        export.export_model(reg, "tiny-student", str(tiny_data), int8=True)
    finally:
        runtime.Int8Quantizer.quantize = real
    return reg, np.concatenate(seen)


def test_copies_are_registered_with_their_source(exported):
    reg, _ = exported
    src = reg.get("tiny-student")
    for name, precision in (("tiny-student-onnx", "fp32"), ("tiny-student-onnx-int8", "int8")):
        card = reg.get(name)
        assert (card.runtime, card.precision, card.source, card.weights) == ("onnx", precision, "tiny-student",
                                                                             f"{name}.onnx")
        assert card.export["opset"] >= 13 and card.export["runtime"].startswith("onnxruntime")
        assert card.input_size == src.input_size and card.label_names == src.label_names and not card.default
        assert "auc" in card.test_metrics["change"] and card.test_metrics["n"] == src.test_metrics["n"]
    assert reg.get("tiny-student-onnx").export["parity"]["max_abs_p"] <= 1e-4
    q = reg.get("tiny-student-onnx-int8").export["quantisation"]
    assert q["calibration_split"] == "validation" and q["format"] == "QDQ" and q["calibration_images"] > 0
    search = q["sensitivity_search"]  # on validation: the copy's AUC with nothing more kept float comes first
    assert search["steps"][0][0] == [] and search["tolerance"] == 0.005 and isinstance(search["met"], bool)
    assert q["kept_float_convolutions"] == max(search["steps"], key=lambda s: s[1])[0]



def test_a_copys_reliability_is_measured_on_the_copy_on_both_splits(exported, tiny_data):
    """Copies once carried their source's validation reliability bins and had none on the test split, so the
    Models page (which opens on the default student, an int8 copy) showed no reliability diagram for it."""
    from skinapp.evaluation import grouped_probs, reliability_bins

    reg, _ = exported
    for name in ("tiny-student-onnx", "tiny-student-onnx-int8"):
        copy = Predictor.from_registry(name, reg)
        card = copy.card
        ds = scan_dataset(str(tiny_data), card.task)
        for split, m in (("val", card.metrics), ("test", card.test_metrics)):
            sd = split_logits(copy, ds, split)
            y = sd.y
            assert m["reliability"] == reliability_bins(y, grouped_probs(sd.logits, copy.positive,
                                                                         card.temperature).numpy())
            assert m["reliability_before"] == reliability_bins(y, grouped_probs(sd.logits, copy.positive).numpy())
            assert m["ece_after"] == m["ece"]
def test_int8_copy_is_its_kept_set_quantised_once(exported):
    """The search's best probe is registered as it is: the same outputs as quantising its set afresh, and no set
    is quantised twice."""
    from skinapp import runtime
    from skinapp.export import _plain

    reg, calib = exported
    keep = reg.get("tiny-student-onnx-int8").export["quantisation"]["kept_float_convolutions"]
    assert len(QUANTISED) == len({tuple(k) for k in QUANTISED}) and keep in QUANTISED
    p = Predictor.from_registry("tiny-student", reg)
    graph, _ = runtime.export_graph(_plain(p.model), p.card.input_size, "x")
    fresh = runtime.OnnxModel(runtime.quantize_int8(graph, [calib], "x", keep), 1)
    made = Predictor.from_registry("tiny-student-onnx-int8", reg).model
    x = torch.as_tensor(np.random.default_rng(1).normal(size=(8, 3, p.card.input_size, p.card.input_size)),
                        dtype=torch.float32)
    assert torch.equal(made(x), fresh(x))


def test_int8_weights_use_seven_bits_so_no_cpu_saturates(exported):
    reg, _ = exported
    assert_no_pair_saturates(reg.root / reg.get("tiny-student-onnx-int8").weights)


def test_fp32_copy_gives_the_sources_probabilities(exported, tiny_data):
    reg, _ = exported
    src, copy = Predictor.from_registry("tiny-student", reg), Predictor.from_registry("tiny-student-onnx", reg)
    for seed in range(6):
        img = lesion(seed, seed % 2 == 0, 70)
        assert copy.predict_image(img).p_positive == pytest.approx(src.predict_image(img).p_positive, abs=1e-4)


def test_int8_calibration_reads_validation_images_only(exported, tiny_data):
    reg, calib = exported
    card = reg.get("tiny-student")
    ds = scan_dataset(tiny_data)
    decoded = decode_dataset(ds, card.input_size)
    pred = Predictor.from_registry("tiny-student", reg)

    def inputs(split):
        index = split_logits(pred, ds, split, decoded).selection.index
        return model_input(decoded.images[torch.as_tensor(index)].float() / 255, card.input_size, card.mean,
                           card.std).numpy()

    val, test = inputs("val"), inputs("test")
    assert len(calib) == reg.get("tiny-student-onnx-int8").export["quantisation"]["calibration_images"]
    for x in calib:
        assert np.isclose(val, x, atol=1e-6).all(axis=(1, 2, 3)).any()
        assert not np.isclose(test, x, atol=1e-6).all(axis=(1, 2, 3)).any()


def test_a_tampered_graph_is_refused(exported, tmp_path):
    reg, _ = exported
    root = tmp_path / "w"
    shutil.copytree(reg.root, root)
    path = root / "tiny-student-onnx.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match its model card"):
        Registry(root).load("tiny-student-onnx")


def test_grad_cam_of_a_copy_comes_from_its_source(exported):
    reg, _ = exported
    img = lesion(3, True, 64)
    src, copy = Predictor.from_registry("tiny-student", reg), Predictor.from_registry("tiny-student-onnx", reg)
    a, b = explain(src, img, "malignant"), explain(copy, img, "malignant")
    assert np.allclose(a.heatmap, b.heatmap, atol=1e-5) and b.target == "malignant"


def test_a_copys_first_map_does_not_count_loading_its_source(exported, monkeypatch):
    """The first map of an ONNX copy loads its PyTorch source (and timm: about 4 s once per process). The page
    showed that as "Grad-CAM 4091 ms"; the map's time is its own, and the app loads the source in the background
    as soon as it loads the copy."""
    from skinapp.ui import common

    reg, _ = exported
    copy = Predictor.from_registry("tiny-student-onnx", reg)
    real = Predictor.from_registry

    def slow(name, registry=None, threads=None):
        time.sleep(0.5)
        return real(name, registry, threads)

    monkeypatch.setattr(Predictor, "from_registry", staticmethod(slow))
    res = explain(copy, lesion(4, True, 64))
    assert copy._cam is not None and 0 < res.latency_ms < 500
    loaded = common._load("tiny-student-onnx-int8", reg.get("tiny-student-onnx-int8").sha256, str(reg.root))
    deadline = time.monotonic() + 30  # loaded in the background with the copy, not in the first photo's analysis
    while loaded._cam is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loaded._cam is not None


def test_compare_times_a_copy_only_once_its_source_has_loaded(exported, monkeypatch):
    """The source loads in the background; its 4-5 s of CPU must not fall inside the copy's timed runs."""
    from skinapp.ui import compare
    from test_ui import page, png

    reg, _ = exported
    timed = []
    real = compare.interleaved_latencies

    def check(predictors, *args, **kw):
        timed.extend((p.card.name, p.onnx, p._cam is not None) for p in predictors)
        return real(predictors, *args, **kw)

    monkeypatch.setattr(compare, "interleaved_latencies", check)
    monkeypatch.setenv("SKINAPP_WEIGHTS", str(reg.root))
    compare.common._load.clear()  # a copy loaded by an earlier test would have its source already
    at = page("compare").run()
    at.multiselect(key="cmp_models").set_value(["tiny-teacher", "tiny-student-onnx-int8"]).run()
    at.slider(key="cmp_budget").set_value(1)
    at.file_uploader(key="cmp_file").set_value(("c.png", png(8), "image/png")).run()
    assert not at.exception and not at.error
    assert ("tiny-student-onnx-int8", True, True) in timed


def test_a_copy_whose_source_is_gone_is_refused_once_naming_it(exported, monkeypatch, tmp_path):
    """Every page that loads a model draws its maps, so a copy without its source is refused when it is loaded,
    saying which model is missing, rather than failing photo by photo."""
    from streamlit.testing.v1 import AppTest

    from test_ui import APP

    reg, _ = exported
    root = tmp_path / "weights"
    shutil.copytree(reg.root, root)
    for f in root.glob("tiny-student.*"):
        f.unlink()
    monkeypatch.setenv("SKINAPP_WEIGHTS", str(root))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.selectbox(key="dx_model").set_value("tiny-student-onnx-int8").run()
    assert not at.exception and not at.file_uploader  # no upload offered for a model that cannot answer
    assert [e.value for e in at.error] == [
        "Model tiny-student-onnx-int8 cannot be used: model 'tiny-student-onnx-int8' is an ONNX copy of "
        "'tiny-student', the PyTorch model its activation maps run on, which cannot be loaded: unknown model "
        "'tiny-student'; registered models: tiny-teacher, tiny-nokd, tiny-student-onnx, tiny-student-onnx-int8"]


def test_one_session_serves_concurrent_callers(exported):
    reg, _ = exported
    copy = Predictor.from_registry("tiny-student-onnx", reg, threads=1)
    xs = [copy.preprocess(lesion(s, s % 2 == 0, 64)) for s in range(8)]
    want = [copy.logits(x) for x in xs]
    got: dict[int, list] = {}

    def worker(k):
        got[k] = [copy.logits(x) for x in xs for _ in range(5)][::5]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert all(torch.equal(a, b) for a, b in zip(got[k], want))


def test_sessions_spin_only_while_a_run_lasts_unless_told_never(exported, monkeypatch):
    """Threads that keep spinning after a run took the cores from the next model on two cores; threads that never
    spin are woken for every operator (docs/experiments.md, "Spinning during a run only"); a server whose cores
    are always busy may choose that."""
    reg, _ = exported

    def entries():
        opts = Predictor.from_registry("tiny-student-onnx", reg, threads=2).model.session.get_session_options()
        out = {}
        for key in ("session.intra_op.allow_spinning", "session.force_spinning_stop"):
            try:
                out[key] = opts.get_session_config_entry(key)
            except RuntimeError:  # not set
                pass
        return out

    monkeypatch.delenv("SKINAPP_ONNX_SPINNING", raising=False)
    assert entries() == {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"}
    monkeypatch.setenv("SKINAPP_ONNX_SPINNING", "Never")
    assert entries() == {"session.intra_op.allow_spinning": "0"}
    monkeypatch.setenv("SKINAPP_ONNX_SPINNING", "sometimes")
    with pytest.raises(ModelFileError, match=r"SKINAPP_ONNX_SPINNING='sometimes' is not a setting; use one of: "
                                             r"during, never"):
        entries()


def test_an_onnx_copy_is_not_exported_again(exported, tiny_data):
    from skinapp.export import ExportError, export_model

    reg, _ = exported
    with pytest.raises(ExportError, match="already an ONNX copy; export its source 'tiny-student'"):
        export_model(reg, "tiny-student-onnx", str(tiny_data))


def test_recovery_removes_an_orphan_graph_but_not_a_users_file(exported, tmp_path):
    reg, _ = exported
    root = tmp_path / "w"
    shutil.copytree(reg.root, root)
    (root / "tiny-student-onnx.json").unlink()  # killed between the graph and its card
    (root / "mine.onnx").write_bytes(b"a user's own file")
    removed = Registry(root).recover()
    assert removed == ["tiny-student-onnx.onnx"] and (root / "mine.onnx").exists()


def test_cli_lists_predicts_and_benchmarks_copies(exported, tmp_path):
    reg, _ = exported
    image = tmp_path / "x.png"
    lesion(5, True, 80).save(image)

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "skinapp", "--weights", str(reg.root), *args, "--json"],
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    rows = {r["name"]: r for r in run("models")}
    assert (rows["tiny-student-onnx-int8"]["runtime"], rows["tiny-student-onnx-int8"]["precision"],
            rows["tiny-student-onnx-int8"]["source"]) == ("onnx", "int8", "tiny-student")
    assert (rows["tiny-student"]["runtime"], rows["tiny-student"]["source"]) == ("torch", None)
    (p,) = run("predict", "--model", "tiny-student-onnx", str(image))
    src = Predictor.from_registry("tiny-student", reg).predict(image)
    assert p["p_positive"] == pytest.approx(src.p_positive, abs=1e-4)
    bench = run("benchmark", "--models", "tiny-student,tiny-student-onnx", "--runs", "3", "--threads", "1")
    assert [(b["runtime"], b["precision"]) for b in bench] == [("torch", "fp32"), ("onnx", "fp32")]
    assert all(b["latency_ms_p50"] > 0 and b["cam_ms_p50"] > 0 for b in bench)


def test_diagnose_runs_an_onnx_copy(exported, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from test_ui import APP, png

    reg, _ = exported
    monkeypatch.setenv("SKINAPP_WEIGHTS", str(reg.root))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.selectbox(key="dx_model").set_value("tiny-student-onnx-int8").run()
    at.file_uploader(key="dx_files").set_value(("a.png", png(9), "image/png")).run()
    assert not at.exception and not at.error
    assert any(c.value.startswith("P(malignant) =") for c in at.caption)
    assert "ONNX Runtime int8" in at.selectbox(key="dx_model").format_func(at.selectbox(key="dx_model").value)


def test_an_operator_torchscript_cannot_write_goes_through_the_dynamo_exporter():
    """The fused teacher resizes with antialiasing (no form in the TorchScript exporter at any opset): its copy is
    written by the dynamo exporter at opset 18, says so, and answers like the source at any batch size."""
    import torch.nn.functional as F

    from skinapp.runtime import OnnxModel, export_graph

    class Resizing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2)

        def forward(self, x):
            x = F.interpolate(x, size=(20, 20), mode="bilinear", antialias=True, align_corners=False)
            return self.fc(self.conv(x).mean((2, 3)))

    model = Resizing().eval()
    graph, written = export_graph(model, 48, "resizing")
    assert written["exporter"].startswith("torch.onnx (dynamo)") and written["opset"] == 18
    assert "aten::_upsample_bilinear2d_aa" in written["why"]
    x = torch.rand(5, 3, 48, 48)
    with torch.no_grad():
        assert float((OnnxModel(graph, 1)(x) - model(x)).abs().max()) < 1e-5


def test_a_network_no_exporter_can_write_is_refused_in_one_line_before_any_check(exported, tiny_data, monkeypatch):
    """When neither exporter can write the network: a clear refusal, quickly, and nothing registered."""
    import torch.onnx.errors

    from skinapp import export

    def unsupported(*_args, **_kwargs):
        raise torch.onnx.errors.OnnxExporterError("the dynamo exporter failed too: no decomposition for aten::foo")

    decoded = []
    monkeypatch.setattr(export, "export_graph", unsupported)
    monkeypatch.setattr(export, "decode_dataset", lambda *a, **k: decoded.append(1))
    reg, _ = exported
    before = set(reg.names())
    with pytest.raises(export.ExportError, match=r"'tiny-student' cannot be exported to ONNX \(TorchScript exporter "
                                                 r"at opset 17, dynamo exporter at opset 18\): the dynamo exporter "
                                                 r"failed too: no decomposition for aten::foo; it keeps running in "
                                                 r"PyTorch"):
        export.export_model(reg, "tiny-student", str(tiny_data), new_name="tiny-student-unsupported")
    assert not decoded and set(reg.names()) == before


def test_a_failed_torchscript_attempt_prints_nothing_to_stdout(capfd):
    """The TorchScript exporter's C++ side dumps the whole IR graph to stdout when it fails; `export --json` writes
    its JSON there, so the dump is caught before the dynamo exporter takes over."""
    import torch.nn.functional as F

    from skinapp.runtime import export_graph

    class Resizing(torch.nn.Module):
        def forward(self, x):
            return F.interpolate(x, size=(8, 8), mode="bilinear", antialias=True).mean((2, 3))[:, :2]

    print("before")
    export_graph(Resizing().eval(), 16, "resizing")
    print("after")
    out = capfd.readouterr().out
    assert "Torch IR graph" not in out and out.splitlines() == ["before", "after"]


def test_greedy_float_keeps_the_costliest_convolutions_until_within_tolerance():
    from skinapp.export import greedy_float

    cost = {"a": 0.002, "b": 0.006, "c": 0.004, "d": 0.0}  # validation AUC each one's quantisation loses
    calls = []

    def score(keep):
        calls.append(list(keep))
        return 0.90 - sum(v for k, v in cost.items() if k not in keep)

    kept, search = greedy_float(score, lambda: list(cost), target=0.90, max_float=8)
    assert kept == ["b", "c"] and search["met"]  # with b float 0.006 is still lost; with b and c, 0.002
    assert [s[0] for s in search["steps"]] == [[], ["b"], ["b", "c"]]
    assert search["steps"][-1][1] == pytest.approx(0.898)
    assert ["d"] in calls and ["b", "c", "a"] not in calls  # d was tried alone; the search stopped once met
    assert len(calls) == len({tuple(c) for c in calls}) == 6  # [b] is the first step and the best single: once


def test_greedy_float_returns_the_best_set_when_the_tolerance_is_out_of_reach():
    from skinapp.export import greedy_float

    def score(keep):  # keeping x float helps, keeping y as well makes it worse; never within 0.005
        return {(): 0.80, ("x",): 0.85, ("y",): 0.82, ("x", "y"): 0.83}[tuple(keep)]

    kept, search = greedy_float(score, lambda: ["x", "y"], target=0.90, max_float=8)
    assert kept == ["x"] and not search["met"]
    kept, search = greedy_float(score, lambda: ["x", "y"], target=0.80, max_float=8)
    assert kept == [] and search["met"] and len(search["steps"]) == 1  # within tolerance at once: no search


def test_quantize_int8_names_the_convolutions_when_asked_to_keep_an_unknown_one(exported):
    from skinapp import runtime
    from skinapp.export import _plain

    p = Predictor.from_registry("tiny-student", exported[0])
    graph, _ = runtime.export_graph(_plain(p.model), p.card.input_size, "x")
    names = runtime.int8_candidates(graph)
    assert names and all(n.endswith("Conv") for n in names)
    batch = [np.random.default_rng(0).normal(size=(4, 3, p.card.input_size, p.card.input_size)).astype(np.float32)]
    with pytest.raises(ValueError, match="no convolution named nope.*" + re.escape(names[0])):
        runtime.quantize_int8(graph, batch, "x", ["nope"])
    assert runtime.quantize_int8(graph, batch, "x", names[:1])  # a known one is accepted


def _conv_outputs(graph: bytes, outputs: list[str], x: np.ndarray) -> list[np.ndarray]:
    """Convolution outputs, the graph run as written (an int8 one computes in float on dequantised values)."""
    import onnx
    import onnxruntime as ort

    g = onnx.load_from_string(graph)
    g.graph.output.extend(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(g.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(outputs,
                                                                                                   {"image": x})


def test_bias_correction_leaves_each_int8_convolution_within_half_a_bias_step_of_the_float_mean(exported):
    """After correction every int8 convolution's per-channel mean output on the calibration images is the float
    graph's, up to rounding its int32 bias (half a step); without it some channel is further off. Only bias values
    change. The outputs differ in size (strides), which the means must allow for."""
    import onnx
    from onnx import numpy_helper

    from skinapp import runtime
    from skinapp.export import _plain

    reg, calib = exported
    p = Predictor.from_registry("tiny-student", reg)
    graph, _ = runtime.export_graph(_plain(p.model), p.card.input_size, "x")
    with runtime.Int8Quantizer(graph) as q:
        plain, corrected = (q.quantize([calib], "x", bias_correction=c) for c in (False, True))
    ref = {n.name: n.output[0] for n in onnx.load_from_string(graph).graph.node if n.op_type == "Conv"}
    m = onnx.load_from_string(corrected)
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in m.graph.node if n.op_type == "Conv" and n.input[2] in dq]
    want = _conv_outputs(graph, [ref[n.name] for n in convs], calib)
    assert len(convs) >= 2 and len({a.shape[2:] for a in want}) > 1
    want = [a.astype(np.float64).mean(axis=(0, 2, 3)) for a in want]
    step = [init[dq[n.input[2]].input[1]] for n in convs]
    for made, within in ((corrected, True), (plain, False)):
        got = [a.astype(np.float64).mean(axis=(0, 2, 3))
               for a in _conv_outputs(made, [n.output[0] for n in convs], calib)]
        ok = [bool((np.abs(w - g) <= s / 2 + 1e-5 * (1 + np.abs(w))).all()) for w, g, s in zip(want, got, step)]
        assert all(ok) if within else not all(ok)
    before = onnx.load_from_string(plain)
    assert [(n.op_type, list(n.input)) for n in before.graph.node] == [(n.op_type, list(n.input)) for n in m.graph.node]
    changed = {t.name for t in m.graph.initializer} - {
        t.name for t, u in zip(before.graph.initializer, m.graph.initializer) if t == u}
    assert changed and all(c.endswith("bias_quantized") for c in changed)


def test_an_onnx_copy_is_refused_as_a_source_to_compress_or_fuse_and_no_copy_takes_its_sources_name(
        exported, tiny_data, tmp_path):
    """Compressing or fusing an ONNX copy once died in a traceback (no state_dict) after decoding the folder; an
    export named after its source with --overwrite turned the source's card into a copy of itself."""
    from skinapp.compress import compress_model
    from skinapp.export import ExportError, export_model
    from skinapp.fuse import FusionError, fuse_models
    from skinapp.registry import RegistryError

    work = Registry(shutil.copytree(exported[0].root, tmp_path / "w"))
    files = {p.name: p.read_bytes() for p in work.root.iterdir()}
    with pytest.raises(RegistryError, match="'tiny-student-onnx' is an ONNX Runtime copy; compress its source "
                                            "'tiny-student' instead"):
        compress_model(work, "tiny-student-onnx", "half", str(tiny_data))
    with pytest.raises(FusionError, match="'tiny-student-onnx' is an ONNX Runtime copy; fuse its source"):
        fuse_models(work, ["tiny-student-onnx", "tiny-teacher"], "fused", str(tiny_data))
    with pytest.raises(ExportError, match="the copy needs a name of its own; 'tiny-student' is its source's"):
        export_model(work, "tiny-student", str(tiny_data), new_name="tiny-student", overwrite=True)
    assert {p.name: p.read_bytes() for p in work.root.iterdir()} == files
