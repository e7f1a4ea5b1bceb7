#!/usr/bin/env python3
"""Choose the default student's input size on validation alone: lite0_tiny at two sizes over moved validation splits.

The locked test split never moves (it depends only on the lesions and the test seed); ``--split-seed`` deals a
different set of lesions to validation each time. For every split seed this trains lite0_tiny without KD (the
no-KD control's recipe) at each size into a scratch registry, skipping runs already there, and compares each pair
on that split's validation images (paired bootstrap ΔAUC, DeLong's p). Nothing here reads the test split.

    .venv/bin/python scripts/input_size_selection.py --data ../shared/data/isic9 --sizes 96,180 \
        --split-seeds 0,1,2,3,4 --scratch runs/size-cv --out-json docs/results/input_size_selection.json

Decision rule, fixed before the runs: the larger size is chosen when its mean validation ΔAUC over the split
seeds is above zero and it is ahead on a majority of them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from skinapp.registry import Registry  # noqa: E402

RECIPE = ["--arch", "lite0_tiny", "--pretrained", "package", "--epochs", "20", "--lr", "2e-3", "--batch-size", "32",
          "--no-kd", "--head", "diagnosis", "--seed", "0"]


def run_name(size: int, split_seed: int) -> str:
    return f"lite0-tiny-{size}px-nokd-split{split_seed}"


def train_missing(args, reg: Registry) -> None:
    for sp in args.split_seeds:
        for size in args.sizes:
            name = run_name(size, sp)
            if name in reg.names():
                continue
            cmd = [sys.executable, "-m", "skinapp", "--weights", str(reg.root), "distill", "--data", args.data,
                   "--name", name, "--image-size", str(size), "--split-seed", str(sp), "--threads", args.threads,
                   "--device", args.device, *RECIPE]
            print("+", " ".join(cmd), file=sys.stderr, flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def compare(args, reg: Registry) -> list[dict]:
    from skinapp.data import scan_dataset
    from skinapp.inference import Predictor, compare_on_dataset

    ds = scan_dataset(args.data)
    small, large = args.sizes
    rows = []
    for sp in args.split_seeds:
        a, b = (reg.get(run_name(s, sp)) for s in (large, small))
        c = compare_on_dataset(Predictor(*reg.load(a.name)), Predictor(*reg.load(b.name)), ds, "val")
        if c["split"] != "val":
            raise SystemExit(f"{a.name} was not compared on its validation split ({c['split']}): {c['note']}")
        rows.append({"split_seed": sp, "n": c["n"], "large": a.name, "small": b.name, "auc_large": c["auc_a"],
                     "auc_small": c["auc_b"], "delta_auc": c["delta_auc"], "delta_auc_ci": c["delta_auc_ci"],
                     "p_delong": c["p_delong"], "train_s_large": a.train.get("train_time_s"),
                     "train_s_small": b.train.get("train_time_s")})
    return rows


def decide(rows: list[dict]) -> dict:
    deltas = [r["delta_auc"] for r in rows]
    ahead = sum(d > 0 for d in deltas)
    mean = statistics.fmean(deltas)
    return {"mean_delta_auc": mean, "sd_delta_auc": statistics.stdev(deltas) if len(deltas) > 1 else 0.0,
            "larger_ahead": ahead, "splits": len(deltas), "choose_larger": mean > 0 and ahead > len(deltas) / 2}


def table(rows: list[dict], small: int, large: int) -> list[str]:
    out = [f"| split seed | val n | val AUC {large} px | val AUC {small} px | ΔAUC [95% paired CI] | DeLong p | "
           f"training s ({large} / {small} px) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lo, hi = r["delta_auc_ci"]
        out.append(f"| {r['split_seed']} | {r['n']} | {r['auc_large']:.4f} | {r['auc_small']:.4f} | "
                   f"{r['delta_auc']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {r['p_delong']:.3f} | "
                   f"{r['train_s_large']:.0f} / {r['train_s_small']:.0f} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--sizes", default="96,180", help="two input sizes, smaller first")
    ap.add_argument("--split-seeds", default="0,1,2,3,4")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--scratch", default=str(ROOT / "runs" / "size-cv"))
    ap.add_argument("--out-json", default=str(ROOT / "docs" / "results" / "input_size_selection.json"))
    args = ap.parse_args()
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    args.split_seeds = [int(s) for s in args.split_seeds.split(",")]
    if len(args.sizes) != 2:
        raise SystemExit(f"--sizes takes two input sizes, got {args.sizes}")
    reg = Registry(args.scratch)
    reg.root.mkdir(parents=True, exist_ok=True)
    train_missing(args, reg)
    rows = compare(args, reg)
    result = {"sizes": args.sizes, "recipe": RECIPE, "rows": rows, "decision": decide(rows)}
    Path(args.out_json).write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(table(rows, *args.sizes)))
    print(json.dumps(result["decision"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
