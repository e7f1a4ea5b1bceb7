"""The experiment scripts' bookkeeping: tables built from per-run records (the runs themselves are CLI calls)."""
from __future__ import annotations

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
