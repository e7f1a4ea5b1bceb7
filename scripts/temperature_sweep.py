#!/usr/bin/env python3
"""The paper's Table 1 on our data: distil dsnet at several temperatures (and seeds), through the CLI.

Every run is `python -m skinapp distill ...` into a scratch registry that holds a copy of the teacher, so the
sweep never touches weights/. Results (validation-split metrics from each card) are written as JSON for the
Models page and printed as a Markdown table.

    .venv/bin/python scripts/temperature_sweep.py --data ../shared/data/isic9 --teacher teacher-lite0 \
        --temperatures 1,3,5,7,10,20,50,100 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from skinapp.registry import Registry  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--temperatures", default="1,3,5,7,10,20,50,100")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--scratch", default=str(ROOT / "runs" / "sweep"), help="scratch registry for sweep models")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "temperature_sweep.json"))
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (a GPU has room for several)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the runs already recorded in the --out records and run only the missing (T, seed)")
    ap.add_argument("--summarize", action="store_true",
                    help="run nothing: rebuild the table from the per-run records of an earlier (maybe cut) sweep")
    ap.add_argument("--reevaluate", action="store_true",
                    help="with --summarize: score every recorded model again with `evaluate` (the decoding inference uses)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="more distill arguments after --")
    args = ap.parse_args()
    out = Path(args.out)
    records = out.with_name(out.stem + "_runs.json")
    if args.summarize:
        runs = json.loads(records.read_text())
        if args.reevaluate:
            reevaluate(runs, Path(args.scratch), args.data)
            records.write_text(json.dumps(runs, indent=2) + "\n")
        temps = sorted({r["T"] for r in runs})
        return summarize(runs, temps, out)
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    src = Registry()
    card = src.get(args.teacher)
    for suffix in (".json", ".safetensors"):
        shutil.copy2(src.root / f"{card.name}{suffix}", scratch / f"{card.name}{suffix}")
    extra = [a for a in args.extra if a != "--"]
    temps = [float(x) for x in args.temperatures.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]

    def run(t: float, seed: int) -> dict:
        name = f"sweep-T{t:g}-a{args.alpha:g}-s{seed}"
        rec = {"T": t, "alpha": args.alpha, "seed": seed, **distill_run(scratch, name, [
            "--data", args.data, "--name", name, "--teacher", args.teacher, "-T", str(t), "--alpha", str(args.alpha),
            "--seed", str(seed), "--arch", "dsnet", "--overwrite", *extra])}
        print(json.dumps(rec), flush=True)
        return rec

    out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = json.loads(records.read_text()) if args.resume and records.exists() else []
    done = {(r["T"], r["alpha"], r["seed"]) for r in runs}

    def record(rec: dict) -> None:  # after every run, so a sweep cut short still leaves what it measured
        runs.append(rec)
        records.write_text(json.dumps(runs, indent=2) + "\n")

    # seed-major: a sweep stopped early still has whole seeds; the first run of each seed builds its cache
    plan = [(t, seed) for seed in seeds for t in temps if (t, args.alpha, seed) not in done]
    if args.jobs <= 1:
        for t, seed in plan:
            record(run(t, seed))
    else:
        first = list({seed: (t, seed) for t, seed in reversed(plan)}.values())
        with cf.ThreadPoolExecutor(args.jobs) as pool:
            for rec in pool.map(lambda p: run(*p), first):
                record(rec)
            for rec in pool.map(lambda p: run(*p), [p for p in plan if p not in first]):
                record(rec)
    return summarize(runs, sorted({r["T"] for r in runs}), out)


METRICS = ("auc", "accuracy", "sens_at_spec80")


def distill_run(scratch: Path, name: str, distill_args: list[str]) -> dict:
    """One `python -m skinapp distill` into the scratch registry: its card's validation metrics and exact command."""
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "skinapp", "--weights", str(scratch), "distill", *distill_args],
                   check=True, cwd=ROOT)
    m = Registry(scratch).get(name).metrics
    return {**{k: m[k] for k in METRICS}, "seconds": round(time.time() - t0, 1),
            "command": " ".join(["python", "-m", "skinapp", "distill", *distill_args])}


def mean_sd(results: list[dict]) -> dict:
    """Mean and sample sd of each metric over runs (sd 0 for a single run)."""
    row = {}
    for key in METRICS:
        vals = [r[key] for r in results]
        row[f"{key}_mean"] = round(statistics.mean(vals), 4)
        row[f"{key}_sd"] = round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0
    return row


def reevaluate(runs: list[dict], scratch: Path, data: str) -> None:
    """Runs recorded by older code may have scored validation images decoded differently; score all alike."""
    from skinapp.data import scan_dataset
    from skinapp.inference import Predictor, evaluate_dataset

    reg, datasets = Registry(scratch), {}
    for rec in runs:
        pred = Predictor(*reg.load(f"sweep-T{rec['T']:g}-a{rec['alpha']:g}-s{rec['seed']}"))
        task = pred.card.task
        ds = datasets[task] = datasets.get(task) or scan_dataset(data, task)
        m = evaluate_dataset(pred, ds, "val")
        rec.update(auc=m["auc"], accuracy=m["accuracy"], sens_at_spec80=m["sens_at_spec80"], scored_by="evaluate")


def summarize(runs: list[dict], temps: list[float], out: Path) -> int:
    rows = []
    for t in temps:
        results = [r for r in runs if r["T"] == t]
        if not results:
            continue
        rows.append({"T": t, "alpha": results[0]["alpha"], "seeds": len(results), **mean_sd(results)})
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| T | alpha | seeds | AUC mean ± sd | accuracy mean ± sd | sens@spec80 mean ± sd |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['T']:g} | {r['alpha']:g} | {r['seeds']} | {r['auc_mean']:.4f} ± {r['auc_sd']:.4f} | "
              f"{r['accuracy_mean']:.4f} ± {r['accuracy_sd']:.4f} | "
              f"{r['sens_at_spec80_mean']:.4f} ± {r['sens_at_spec80_sd']:.4f} |")
    return 0

if __name__ == "__main__":
    sys.exit(main())
