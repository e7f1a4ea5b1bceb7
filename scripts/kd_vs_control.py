#!/usr/bin/env python3
"""Each distillation objective against its no-KD control, seed by seed, on the locked test split.

    .venv/bin/python scripts/kd_vs_control.py --data ../shared/data/isic9 --teacher teacher-lite0 \
        --seeds 0,1,2 --variants kd,attention,relational,function-matching,init,init-kd --scratch runs/kd-vs-control

For each network (the default student's lite0_tiny and the paper's dsnet), variant and seed it trains the student
and its control (same network, input size and schedule, hard labels only, ImageNet or random init as the network
has) into a scratch registry that also holds the teacher (copied from weights/), skipping runs already there; then
compares each with its control on the same test images (`evaluate --against`: ΔAUC with its paired bootstrap
interval) and summarises mean ± sd over seeds. Variants: ``kd`` (the logit objective), each other objective by
name, ``init`` (no KD, started from the teacher's matching layers: what initialisation alone gives) and ``init-kd``
(both). A variant a network cannot take (dsnet has no layers in an EfficientNet teacher) is skipped.
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


OBJECTIVES = ("attention", "relational", "function-matching")
INIT_NETWORKS = ("lite0_tiny",)  # the networks whose layers an EfficientNet-Lite0 teacher holds


def run_name(arch: str, variant: str | bool, seed: int) -> str:
    variant = {True: "kd", False: "nokd"}.get(variant, variant)
    return f"{arch.replace('_', '-')}-{variant}-s{seed}"


def variant_args(variant: str, args) -> list[str]:
    kd = ["--teacher", args.teacher, "-T", str(args.temperature)]
    init = ["--init-from-teacher", args.teacher]
    control = ["--no-kd", "--head", "diagnosis"]
    table = {"nokd": control, "kd": kd, "init": control + init, "init-kd": kd + init}
    table |= {o: kd + ["--kd", o] for o in OBJECTIVES}
    if variant not in table:
        raise SystemExit(f"unknown variant {variant!r}; choose from: {', '.join(table)}")
    return table[variant]


def applies(arch: str, variant: str) -> bool:
    return not variant.startswith("init") or arch in INIT_NETWORKS


def train_missing(args, reg: Registry, seeds: list[int], variants: list[str]) -> None:
    for arch in args.networks:
        for seed in seeds:
            for variant in ["nokd", *variants]:
                name = run_name(arch, variant, seed)
                if name in reg.names() or not applies(arch, variant):
                    continue
                cmd = [sys.executable, "-m", "skinapp", "--weights", str(reg.root), "distill", "--data", args.data,
                       "--name", name, "--seed", str(seed), "--threads", args.threads, *NETWORKS[arch],
                       *variant_args(variant, args)]
                print("+", " ".join(cmd), file=sys.stderr, flush=True)
                subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def compare(args, reg: Registry, seeds: list[int], variants: list[str]) -> list[dict]:
    from skinapp.data import scan_dataset
    from skinapp.inference import Predictor, compare_on_dataset

    ds = scan_dataset(args.data)
    rows = []
    for arch in args.networks:
        for variant in variants:
            for seed in seeds:
                if not applies(arch, variant) or run_name(arch, variant, seed) not in reg.names():
                    continue
                rows.append(_pair(reg, ds, arch, variant, seed, Predictor, compare_on_dataset))
    return rows


def _pair(reg: Registry, ds, arch: str, variant: str, seed: int, Predictor, compare_on_dataset) -> dict:
    kd, ctl = (reg.get(run_name(arch, v, seed)) for v in (variant, "nokd"))
    c = compare_on_dataset(Predictor(*reg.load(kd.name)), Predictor(*reg.load(ctl.name)), ds, "auto")
    return {"arch": arch, "variant": variant, "seed": seed, "kd": kd.name, "control": ctl.name, "split": c["split"],
            "n": c["n"], "auc_kd": c["auc_a"], "auc_control": c["auc_b"], "delta_auc": c["delta_auc"],
            "delta_auc_ci": c["delta_auc_ci"], "p_delong": c["p_delong"],
            "sens_at_spec80_kd": kd.test_metrics["sens_at_spec80"],
            "sens_at_spec80_control": ctl.test_metrics["sens_at_spec80"],
            "ece_kd": kd.test_metrics["ece"], "ece_control": ctl.test_metrics["ece"],
            "train_s_kd": kd.train.get("train_time_s"), "train_s_control": ctl.train.get("train_time_s"),
            "threads": kd.train.get("threads"), "val_auc_kd": kd.metrics.get("auc"),
            "val_auc_control": ctl.metrics.get("auc")}


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def _val(rows: list[dict]) -> str:
    """Validation AUC means: what a choice made on validation would have seen."""
    if not all(x.get("val_auc_kd") is not None for x in rows):
        return "—"
    return f"{statistics.mean(x['val_auc_kd'] for x in rows):.4f} / {statistics.mean(x['val_auc_control'] for x in rows):.4f}"


def _secs(values: list[float]) -> str:
    return f"{statistics.mean(values):.0f}" if values else "—"


def summary(rows: list[dict]) -> list[str]:
    out = ["| network | variant | seeds | test AUC, variant | test AUC, control | ΔAUC per seed [95% paired CI] | "
           "sens@spec80 variant / control | ECE variant / control | val AUC variant / control | training s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for arch, variant in dict.fromkeys((x["arch"], x.get("variant", "kd")) for x in rows):
        r = [x for x in rows if x["arch"] == arch and x.get("variant", "kd") == variant]
        deltas = "; ".join(f"{x['delta_auc']:+.3f} [{x['delta_auc_ci'][0]:+.3f}, {x['delta_auc_ci'][1]:+.3f}]"
                           for x in r)
        secs = [x["train_s_kd"] for x in r if x.get("train_s_kd")]
        out.append(f"| {arch} | {variant} | {len(r)} | {_ms([x['auc_kd'] for x in r])} | {_ms([x['auc_control'] for x in r])} | "
                   f"{deltas} | {_ms([x['sens_at_spec80_kd'] for x in r])} / "
                   f"{_ms([x['sens_at_spec80_control'] for x in r])} | {_ms([x['ece_kd'] for x in r])} / "
                   f"{_ms([x['ece_control'] for x in r])} | {_val(r)} | {_secs(secs)} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--teacher", required=True, help="a teacher made under the locked test split")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default="kd", help="comma-separated: kd, attention, relational, "
                                                     "function-matching, init, init-kd")
    ap.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated: " + ", ".join(NETWORKS))
    ap.add_argument("-T", "--temperature", type=float, default=20.0)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--scratch", default=str(ROOT / "runs" / "kd-vs-control"))
    ap.add_argument("--out-json", default=str(ROOT / "docs" / "results" / "kd_vs_control.json"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    args.networks = args.networks.split(",")
    for v in variants:
        variant_args(v, args)  # every name checked before hours of training
    reg = Registry(args.scratch)
    if args.teacher not in reg.names():
        reg.root.mkdir(parents=True, exist_ok=True)
        for ext in ("json", "safetensors"):
            shutil.copy(DEFAULT_WEIGHTS_DIR / f"{args.teacher}.{ext}", reg.root)
    train_missing(args, reg, seeds, variants)
    rows = compare(args, reg, seeds, variants)
    Path(args.out_json).write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(summary(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
