"""The experiment scripts' bookkeeping: tables built from per-run records (the runs themselves are CLI calls)."""
from __future__ import annotations

import dataclasses

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rec(t: float, seed: int, auc: float) -> dict:
    return {"T": t, "alpha": 0.5, "seed": seed, "auc": auc, "accuracy": 0.7, "sens_at_spec80": 0.6, "command": "x"}


def test_sweep_summary_mean_and_sd_per_temperature(tmp_path):
    sweep = load("temperature_sweep")
    out = tmp_path / "sweep.json"
    runs = [rec(10, 0, 0.80), rec(10, 1, 0.84), rec(20, 0, 0.90)]
    assert sweep.summarize(runs, [1, 10, 20], out) == 0
    rows = json.loads(out.read_text())
    assert [r["T"] for r in rows] == [10, 20]  # a temperature with no run is left out, not zero-filled
    assert rows[0]["seeds"] == 2 and rows[0]["auc_mean"] == 0.82 and rows[0]["auc_sd"] == pytest.approx(0.0283, abs=1e-4)
    assert rows[1]["auc_sd"] == 0.0


def test_resume_runs_only_what_is_missing(tmp_path, monkeypatch):
    sweep = load("temperature_sweep")
    out = tmp_path / "sweep.json"
    out.with_name("sweep_runs.json").write_text(json.dumps([rec(10, 0, 0.8)]))
    ran = []

    class FakeRegistry:
        def __init__(self, root=None):
            self.root = Path(root) if root else tmp_path / "weights"

        def get(self, name):
            ran.append(name)
            return type("Card", (), {"name": name, "metrics": {"auc": 0.9, "accuracy": 0.8, "sens_at_spec80": 0.7}})

    (tmp_path / "weights").mkdir()
    for suffix in (".json", ".safetensors"):
        (tmp_path / "weights" / f"t{suffix}").write_text("{}")
    monkeypatch.setattr(sweep, "Registry", FakeRegistry)
    monkeypatch.setattr(sweep.subprocess, "run", lambda *a, **k: None)
    monkeypatch.setattr(sys, "argv", ["x", "--data", "d", "--teacher", "t", "--temperatures", "10,20", "--seeds", "0",
                                      "--scratch", str(tmp_path / "scratch"), "--out", str(out), "--resume"])
    assert sweep.main() == 0
    assert ran == ["t", "sweep-T20-a0.5-s0"]  # the teacher's card, then only the missing run
    records = json.loads(out.with_name("sweep_runs.json").read_text())
    assert [(r["T"], r["auc"]) for r in records] == [(10, 0.8), (20, 0.9)]


def test_controls_table_joins_both_controls(tmp_path):
    controls = load("controls")
    same = tmp_path / "same_runs.json"
    same.write_text(json.dumps([rec(1, 0, 0.82), rec(1, 1, 0.83)]))
    out = tmp_path / "controls.json"
    controls.write(out, [rec(0, 0, 0.80)], str(same))
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == [controls.FRESH[0], controls.SAME[0]]
    assert rows[0]["seeds"] == 1 and rows[1]["auc_mean"] == 0.825


def _card(name, role="student", teacher=None, arch="dsnet", test="T1", compression=False, auc=0.8):
    from skinapp.registry import ModelCard

    digests = {"train": "a", "val": "b", "test": test} if test else None
    return ModelCard(name=name, role=role, arch=arch, label_names=("benign", "malignant"),
                     groups=("benign", "malignant"), teacher=teacher, input_size=96,
                     data={"digests": digests} if digests else {}, weights=f"{name}.safetensors",
                     metrics={"auc": auc, "n": 320} | ({"compression": {}} if compression else {}),
                     test_metrics={"auc": auc, "auc_ci": [auc - 0.04, auc + 0.03], "sens_at_spec80": 0.7,
                                   "sens_at_spec80_ci": [0.6, 0.8], "ece": 0.05, "ece_before": 0.08, "n": 320}
                     if test else {})


def test_honest_tables_pairs_only_models_that_share_a_locked_test_split():
    tables = load("honest_tables")
    cards = [_card("t", role="teacher", arch="efficientnet_lite0"), _card("kd", teacher="t"), _card("nokd"),
             _card("kd-fp16", teacher="t", compression=True), _card("old-nokd", test=None),
             _card("other-split-nokd", test="T2"), _card("kd-old-teacher", teacher="old-t"),
             _card("old-t", role="teacher", arch="fused", test=None)]
    cards.append(dataclasses.replace(_card("kd-onnx-int8", teacher="t"), source="kd", runtime="onnx",
                                     export={"precision": "int8"}))  # a copy: judged in its own card
    got = [(a.name, b.name, rel) for a, b, rel in tables.pairs(cards)]
    assert got == [("kd", "nokd", "vs its no-KD control"), ("kd", "t", "vs its teacher"),
                   ("kd-old-teacher", "nokd", "vs its no-KD control")]
    rows = tables.model_rows(cards)
    assert rows[0].startswith("| model |") and len(rows) == 2 + len(cards)
    old = next(r for r in rows if r.startswith("| `old-nokd`"))
    assert "made before the locked test split" in old and "| — |" in old
    assert "0.800 [0.760, 0.830]" in next(r for r in rows if r.startswith("| `kd` "))
    assert "| onnx int8 |" in next(r for r in rows if r.startswith("| `kd-onnx-int8` "))


def test_honest_tables_writes_between_markers_only(tmp_path):
    tables = load("honest_tables")
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- models-table:start -->\nold\n<!-- models-table:end -->\nafter\n")
    tables.put(doc, "models-table", ["| new |"])
    assert doc.read_text() == "before\n<!-- models-table:start -->\n| new |\n<!-- models-table:end -->\nafter\n"


def test_the_paired_table_shows_aucs_as_stored():
    """0.86746 is stored as 0.8675; rounded again to three places it read 0.868 beside the models table's 0.867."""
    tables = load("honest_tables")
    row = {"model_a": "kd", "model_b": "nokd", "relation": "vs its no-KD control", "split": "test", "n": 320,
           "auc_a": 0.8675, "auc_b": 0.8414, "delta_auc": 0.0261, "delta_auc_ci": [0.004, 0.049], "p_delong": 0.021}
    assert "| 0.8675 vs 0.8414 | +0.026 [+0.004, +0.049] | 0.021 |" in tables.paired_rows([row])[2]


def test_kd_vs_control_summary_is_mean_and_sd_over_seeds():
    kvc = load("kd_vs_control")
    rows = [{"arch": "dsnet", "seed": s, "auc_kd": a, "auc_control": c, "delta_auc": a - c,
             "delta_auc_ci": [a - c - 0.025, a - c + 0.025], "sens_at_spec80_kd": 0.7, "sens_at_spec80_control": 0.6,
             "ece_kd": 0.05, "ece_control": 0.06} for s, a, c in ((0, 0.86, 0.84), (1, 0.88, 0.84), (2, 0.87, 0.85))]
    (line,) = [r for r in kvc.summary(rows) if r.startswith("| dsnet")]
    assert "| 3 | 0.8700 ± 0.0100 | 0.8433 ± 0.0058 |" in line and "+0.020 [-0.005, +0.045]" in line
    assert kvc.run_name("lite0_tiny", True, 2) == "lite0-tiny-kd-s2"
    assert kvc.run_name("dsnet", "attention", 1) == "dsnet-attention-s1"
    assert not kvc.applies("dsnet", "init-kd") and kvc.applies("lite0_tiny", "init-kd")
    assert "| 1 / 0 |" in line  # only seed 1's interval lies above zero


def test_kd_vs_control_networks_carry_an_input_size_and_their_own_variants():
    kvc = load("kd_vs_control")
    assert kvc.network("lite0_tiny@128:init-kd+kd") == ("lite0_tiny", 128, ["init-kd", "kd"])
    assert kvc.run_name("lite0_tiny@180:init-kd", "nokd", 0) == "lite0-tiny-180px-nokd-s0"
    assert kvc.network_args("lite0_tiny@180")[-2:] == ["--image-size", "180"]
    assert kvc.network_args("dsnet") == kvc.NETWORKS["dsnet"]
    assert kvc.applies("lite0_tiny@128:init-kd", "nokd") and kvc.applies("lite0_tiny@128:init-kd", "init-kd")
    assert not kvc.applies("lite0_tiny@128:init-kd", "kd")
    with pytest.raises(SystemExit, match="unknown network 'resnet'.*lite0_tiny, dsnet"):
        kvc.network("resnet@96")


def test_kd_vs_control_rerun_rows_replace_only_their_own(tmp_path, monkeypatch):
    kvc = load("kd_vs_control")
    old = [{"arch": "lite0_tiny", "image_size": s, "variant": "init-kd", "seed": k, "auc_kd": 0.8}
           for s in (None, 180) for k in (0, 1)]
    new = [{"arch": "lite0_tiny", "image_size": 180, "variant": "init-kd", "seed": k, "auc_kd": 0.9} for k in (1, 2)]
    merged = kvc.merge_rows(old, new)
    assert [(r["image_size"], r["seed"], r["auc_kd"]) for r in merged] == [
        (None, 0, 0.8), (None, 1, 0.8), (180, 0, 0.8), (180, 1, 0.9), (180, 2, 0.9)]
    # a network that takes none of the variants asked for would train only its controls: refused before training
    monkeypatch.setattr(sys, "argv", ["kd_vs_control.py", "--data", str(tmp_path), "--teacher", "t",
                                      "--networks", "lite0_tiny@180:init-kd", "--scratch", str(tmp_path / "s")])
    with pytest.raises(SystemExit, match="'lite0_tiny@180:init-kd' takes none of the variants kd"):
        kvc.main()
    assert not (tmp_path / "s").exists()


def test_kd_vs_control_sweeps_the_temperature_as_variants():
    import argparse

    kvc = load("kd_vs_control")
    args = argparse.Namespace(teacher="teacher-x", temperature=20.0)
    assert kvc.variant_args("kd-T5", args) == ["--teacher", "teacher-x", "-T", "5"]
    assert kvc.variant_args("kd-T0.5", args)[-1] == "0.5"
    assert kvc.variant_args("kd", args)[-1] == "20.0"
    assert kvc.run_name("dsnet", "kd-T5", 2) == "dsnet-kd-T5-s2"
    with pytest.raises(SystemExit, match="unknown variant 'kd-Tx'.*kd-T<temperature>"):
        kvc.variant_args("kd-Tx", args)


def test_input_size_rule_needs_a_positive_mean_and_a_majority_of_splits():
    decide = load("input_size_selection").decide
    rows = lambda *d: [{"delta_auc": x} for x in d]  # noqa: E731
    assert decide(rows(0.02, 0.01, -0.005))["choose_larger"]  # mean > 0, ahead on 2 of 3
    assert not decide(rows(0.06, -0.01, -0.01))["choose_larger"]  # mean > 0, but ahead on 1 of 3
    assert not decide(rows(0.001, 0.002, -0.02))["choose_larger"]  # ahead on 2 of 3, mean < 0
    got = decide(rows(-0.004, -0.0278, -0.0018, 0.0265, -0.0035))  # the five splits measured
    assert got["larger_ahead"] == 1 and got["mean_delta_auc"] == pytest.approx(-0.00212) and not got["choose_larger"]


def test_onnx_spinning_measures_the_setting_the_app_ships():
    from skinapp import runtime

    spinning = load("onnx_spinning")
    assert spinning.SETTINGS["during"] == runtime.SPINNING["during"] == runtime.session_config()
    assert spinning.SETTINGS["never"] == runtime.SPINNING["never"]


def test_resize_switch_measures_pillow_with_the_apps_geometry():
    """The Pillow resize the switch is measured against must differ from the app's only in rounding, never in
    crop or size, and its Pillow preprocessing must feed a model the same tensor up to that rounding."""
    import numpy as np
    import torch

    from skinapp.benchmark import synthetic_lesion
    from skinapp.data import resize_square, to_tensor

    switch = load("resize_switch")
    for w, h, size in ((600, 450, 128), (450, 600, 96), (180, 180, 260), (333, 127, 128)):
        img = synthetic_lesion(w, h, seed=1)
        want = np.asarray(resize_square(img, size), dtype=int)
        got = np.asarray(switch.pillow_resize_square(img, size), dtype=int)
        assert got.shape == want.shape == (size, size, 3)
        # rounding moves a value by one level; a crop shifted by one pixel moves the photo's noise (sd 8) and the
        # blob's edge by tens
        assert np.abs(got - want).max() <= 1 and np.abs(got - want).mean() < 0.3
    card = type("Card", (), {"input_size": 128, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)})()
    pillow = switch.PillowPreprocessing.__new__(switch.PillowPreprocessing)
    pillow.card = card
    img = synthetic_lesion(seed=3)
    step = 1 / 255 / min(card.std)
    assert torch.allclose(pillow.preprocess(img), to_tensor(img, 128, card.mean, card.std), atol=step * 1.01, rtol=0)


def test_remeasure_cards_runs_each_cards_own_make_command():
    """Originals are recalibrated, never retrained; a copy is made again from its source the way it was made
    (fp16 by compress, ONNX by export, int8 only where the card says int8)."""
    from skinapp.registry import DEFAULT_WEIGHTS_DIR, Registry

    remeasure = load("remeasure_cards")
    cards = {c.name: c for c in Registry(DEFAULT_WEIGHTS_DIR).cards()}
    if not cards:
        pytest.skip("no shipped models in weights/")
    assert remeasure.command(cards["dsnet-kd"], "D") == ["calibrate", "--model", "dsnet-kd", "--data", "D"]
    assert remeasure.command(cards["dsnet-kd-fp16"], "D") == [
        "compress", "--model", "dsnet-kd", "--name", "dsnet-kd-fp16", "--data", "D", "--overwrite", "--dtype", "float16"]
    fp32 = remeasure.command(cards["lite0-tiny-kd-onnx"], "D")
    assert fp32[:5] == ["export", "--model", "lite0-tiny-kd", "--name", "lite0-tiny-kd-onnx"] and "--int8" not in fp32
    assert remeasure.command(cards["dsnet-kd-onnx-int8"], "D")[-1] == "--int8"


def test_onnx_op_profile_counts_each_operator_of_the_graph():
    """The profile is of the graph given: a conv-relu-pool-gemm network shows exactly those operators, one node
    each per run (ONNX Runtime may fuse the ReLU into its convolution), slowest first."""
    from torch import nn

    from skinapp.runtime import export_graph

    profile = load("onnx_op_profile")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    graph, _ = export_graph(net.eval(), 16, "tiny")
    ops = profile.op_times(graph, 16, threads=1, runs=5)
    assert {"Conv", "GlobalAveragePool", "Gemm"} <= set(ops) <= {"Conv", "Relu", "GlobalAveragePool", "Flatten",
                                                                 "Gemm", "ReorderInput", "ReorderOutput"}
    assert ops["Conv"]["nodes"] == 1 and ops["Conv"]["us_per_run"] > 0
    assert list(ops) == sorted(ops, key=lambda k: -ops[k]["us_per_run"])


def test_the_rebuild_script_sets_the_defaults_the_registry_ships():
    """train_shipped_models.sh set the fp32 copy as default student while weights/ and README named the int8 one."""
    from skinapp.registry import DEFAULT_WEIGHTS_DIR, Registry

    if not any(DEFAULT_WEIGHTS_DIR.glob("*.json")):
        pytest.skip("no shipped models in weights/")
    script = (Path(__file__).resolve().parents[1] / "scripts" / "train_shipped_models.sh").read_text()
    set_last = {}
    reg = Registry(DEFAULT_WEIGHTS_DIR)
    for line in script.splitlines():
        if "models --set-default" in line and not line.lstrip().startswith("#"):
            name = line.split("--set-default")[1].split()[0]
            set_last[reg.get(name).role] = name
    assert set_last == {"teacher": reg.default("teacher").name, "student": reg.default("student").name}
