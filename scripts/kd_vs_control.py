#!/usr/bin/env python3
"""Distillation against its no-KD control, seed by seed, on the locked test split (the protocol's KD table).

    .venv/bin/python scripts/kd_vs_control.py --data ../shared/data/isic9 --teacher teacher-lite0 \
        --seeds 0,1,2 --scratch runs/kd-vs-control

For each network (the default student's lite0_tiny and the paper's dsnet) and seed it trains the distilled student
and its control (same network, input size and schedule, hard labels only) into a scratch registry that also holds
the teacher (copied from weights/), skipping runs already there; then compares each pair on the same test images
(`evaluate --against`: ΔAUC with its paired bootstrap interval) and summarises mean ± sd over seeds. Runs made by
the shipped-models script may be reused by copying them into the scratch registry first.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from skinapp.registry import DEFAULT_WEIGHTS_DIR, Registry  # noqa: E402

NETWORKS = {
    "lite0_tiny": ["--arch", "lite0_tiny", "--pretrained", "package", "--epochs", "20", "--lr", "2e-3",
                   "--batch-size", "32"],
    "dsnet": ["--arch", "dsnet", "--epochs", "30", "--lr", "3e-3", "--batch-size", "64"],
}


def run_name(arch: str, kd: bool, seed: int) -> str:
    return f"{arch.replace('_', '-')}-{'kd' if kd else 'nokd'}-s{seed}"


def train_missing(args, reg: Registry, seeds: list[int]) -> None:
    for arch, recipe in NETWORKS.items():
        for seed in seeds:
            for kd in (True, False):
                name = run_name(arch, kd, seed)
                if name in reg.names():
                    continue
                how = ["--teacher", args.teacher, "-T", str(args.temperature)] if kd else ["--no-kd", "--head",
                                                                                           "diagnosis"]
                cmd = [sys.executable, "-m", "skinapp", "--weights", str(reg.root), "distill", "--data", args.data,
                       "--name", name, "--seed", str(seed), "--threads", args.threads, *recipe, *how]
                print("+", " ".join(cmd), file=sys.stderr, flush=True)
                subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def compare(args, reg: Registry, seeds: list[int]) -> list[dict]:
    from skinapp.data import scan_dataset
    from skinapp.inference import Predictor, compare_on_dataset

    ds = scan_dataset(args.data)
    rows = []
    for arch in NETWORKS:
        for seed in seeds:
            kd, ctl = (reg.get(run_name(arch, k, seed)) for k in (True, False))
            c = compare_on_dataset(Predictor(*reg.load(kd.name)), Predictor(*reg.load(ctl.name)), ds, "auto")
            rows.append({"arch": arch, "seed": seed, "kd": kd.name, "control": ctl.name, "split": c["split"],
                         "n": c["n"], "auc_kd": c["auc_a"], "auc_control": c["auc_b"], "delta_auc": c["delta_auc"],
                         "delta_auc_ci": c["delta_auc_ci"], "p_delong": c["p_delong"],
                         "sens_at_spec80_kd": kd.test_metrics["sens_at_spec80"],
                         "sens_at_spec80_control": ctl.test_metrics["sens_at_spec80"],
                         "ece_kd": kd.test_metrics["ece"], "ece_control": ctl.test_metrics["ece"],
                         "train_s_kd": kd.train.get("train_time_s"), "train_s_control": ctl.train.get("train_time_s")})
    return rows


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def summary(rows: list[dict]) -> list[str]:
    out = ["| network | seeds | test AUC, KD | test AUC, control | ΔAUC per seed [95% paired CI] | sens@spec80 KD / "
           "control | ECE KD / control |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for arch in NETWORKS:
        r = [x for x in rows if x["arch"] == arch]
        if not r:
            continue
        deltas = "; ".join(f"{x['delta_auc']:+.3f} [{x['delta_auc_ci'][0]:+.3f}, {x['delta_auc_ci'][1]:+.3f}]"
                           for x in r)
        out.append(f"| {arch} | {len(r)} | {_ms([x['auc_kd'] for x in r])} | {_ms([x['auc_control'] for x in r])} | "
                   f"{deltas} | {_ms([x['sens_at_spec80_kd'] for x in r])} / "
                   f"{_ms([x['sens_at_spec80_control'] for x in r])} | {_ms([x['ece_kd'] for x in r])} / "
                   f"{_ms([x['ece_control'] for x in r])} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--teacher", required=True, help="a teacher made under the locked test split")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("-T", "--temperature", type=float, default=20.0)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--scratch", default=str(ROOT / "runs" / "kd-vs-control"))
    ap.add_argument("--out-json", default=str(ROOT / "docs" / "results" / "kd_vs_control.json"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    reg = Registry(args.scratch)
    if args.teacher not in reg.names():
        reg.root.mkdir(parents=True, exist_ok=True)
        for ext in ("json", "safetensors"):
            shutil.copy(DEFAULT_WEIGHTS_DIR / f"{args.teacher}.{ext}", reg.root)
    train_missing(args, reg, seeds)
    rows = compare(args, reg, seeds)
    Path(args.out_json).write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(summary(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
