#!/usr/bin/env python3
"""The paper's Table 2 for our models, from the project's own `benchmark` and `evaluate` commands in one run.

    .venv/bin/python scripts/table2.py --data ../shared/data/isic9 --threads 2 > docs/results/table2.md
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from skinapp.benchmark import cpu_description  # noqa: E402
from skinapp.registry import Registry  # noqa: E402


def cli(*args: str) -> object:
    out = subprocess.run([sys.executable, "-m", "skinapp", *args], cwd=ROOT, check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--runs", default="100")
    ap.add_argument("--out-json", default=str(ROOT / "docs" / "results" / "table2.json"))
    args = ap.parse_args()
    reg = Registry()
    bench = {r["model"]: r for r in cli("benchmark", "--threads", args.threads, "--runs", args.runs, "--json")}
    rows = []
    for card in reg.cards():
        # each model's locked test split when its card has one; validation (optimistic) for older cards
        ev = cli("evaluate", "--model", card.name, "--data", args.data, "--split", "test" if card.test_metrics
                 else "val", "--json")
        b = bench[card.name]
        pc = ev["per_class"]
        rows.append({"model": card.name, "role": card.role, "runtime": f"{b['runtime']} {b['precision']}",
                     "arch": card.arch, "teacher": card.teacher,
                     "params": card.params, "mflops": card.mflops, "file_bytes": card.file_bytes,
                     "train_time_s": card.train.get("train_time_s"), "latency_ms_p50": b["latency_ms_p50"],
                     "latency_ms_p95": b["latency_ms_p95"], "throughput_ips": b["throughput_ips"],
                     "cam_ms_p50": b["cam_ms_p50"], "split": ev["split"], "n": ev["n"], "auc_ci": ev["auc_ci"],
                     "auc": ev["auc"], "accuracy": ev["accuracy"],
                     "balanced_accuracy": ev["balanced_accuracy"], "sens_at_spec80": ev["sens_at_spec80"],
                     "ece": ev["ece"], "per_class": pc})
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(rows, indent=2) + "\n")
    cpu = cpu_description()
    print(f"Machine: {cpu}, {args.threads} torch threads; latency = preprocess + forward of one 600x450 image, "
          f"p50 over {args.runs} runs, the models timed in turn (interleaved), each warm; "
          "throughput = forward on batches of 32; AUC etc. on each model's locked test split where it has one, "
          "else on its validation split (optimistic: tuned on it).\n")
    print("| model | role | runtime | params | MFLOPs | size | train s | p50 ms | p95 ms | img/s | Grad-CAM ms | AUC | "
          "acc | bal. acc | benign P/R/F1 | malignant P/R/F1 | split (n) |")
    print("|" + "---|" * 17)
    for r in rows:
        b, m = r["per_class"]["benign"], r["per_class"]["malignant"]
        print(f"| {r['model']} | {r['role']} | {r['runtime']} | {r['params']:,} | {r['mflops']:.0f} | {r['file_bytes'] / 1e6:.2f} MB | "
              f"{r['train_time_s'] or '-'} | {r['latency_ms_p50']:.2f} | {r['latency_ms_p95']:.2f} | "
              f"{r['throughput_ips']:.0f} | {r['cam_ms_p50']:.1f} | {r['auc']:.4f} [{r['auc_ci'][0]:.3f}, "
              f"{r['auc_ci'][1]:.3f}] | {r['accuracy']:.4f} | "
              f"{r['balanced_accuracy']:.4f} | {b['precision']:.3f}/{b['recall']:.3f}/{b['f1']:.3f} | "
              f"{m['precision']:.3f}/{m['recall']:.3f}/{m['f1']:.3f} | {r['split']} ({r['n']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
