#!/usr/bin/env python3
"""The no-KD controls that the temperature sweep is read against, through the CLI, as docs/results/controls.json.

Two controls per seed, both dsnet with the sweep's head, schedule and seed, no soft targets:
  - fresh augmentation: `distill --no-kd` (the shipped `dsnet-nokd` recipe: a new augmentation every step);
  - the sweep's own cached views: `--alpha 1` (the soft term weighs 0), recorded by scripts/temperature_sweep.py
    in docs/results/control_same_views_runs.json.

    .venv/bin/python scripts/temperature_sweep.py --data ../shared/data/isic9 --teacher teacher-lite0 \
        --temperatures 1 --alpha 1 --seeds 0,1,2 --out docs/results/control_same_views.json --resume -- ...
    .venv/bin/python scripts/controls.py --data ../shared/data/isic9 --seeds 0,1,2 --resume -- ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from temperature_sweep import ROOT, distill_run, mean_sd  # noqa: E402

FRESH = ("no-KD, fresh augmentation",
         "the shipped control's recipe: hard labels, a fresh augmentation of every image at every step, no teacher.")
SAME = ("no-KD, same cached views",
        "hard labels only on the very same 4 cached views and schedule as the sweep (alpha = 1: the soft term has weight 0).")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--scratch", default=str(ROOT / "runs" / "sweep"), help="scratch registry for control models")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "controls.json"))
    ap.add_argument("--same-views", default=str(ROOT / "docs" / "results" / "control_same_views_runs.json"),
                    help="records of the alpha = 1 runs (scripts/temperature_sweep.py --alpha 1)")
    ap.add_argument("--resume", action="store_true", help="keep the fresh-augmentation runs already in --out")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="more distill arguments after --")
    args = ap.parse_args()
    out, extra = Path(args.out), [a for a in args.extra if a != "--"]
    old = json.loads(out.read_text()) if args.resume and out.exists() else []
    runs = next((c["runs"] for c in old if c["name"] == FRESH[0]), [])
    for seed in (int(s) for s in args.seeds.split(",")):
        if any(r["seed"] == seed for r in runs):
            continue
        runs.append(run_fresh(args.data, Path(args.scratch), seed, extra))
        write(out, runs, args.same_views)
    write(out, runs, args.same_views)
    return 0


def run_fresh(data: str, scratch: Path, seed: int, extra: list[str]) -> dict:
    name = f"control-nokd-s{seed}"
    return {"seed": seed, **distill_run(scratch, name, ["--data", data, "--name", name, "--no-kd", "--head",
                                                        "diagnosis", "--seed", str(seed), "--arch", "dsnet", "--overwrite", *extra])}


def summary(name: str, description: str, runs: list[dict]) -> dict:
    return {"name": name, "description": description, "seeds": len(runs), **mean_sd(runs),
            "runs": sorted(runs, key=lambda r: r["seed"])}


def write(out: Path, fresh: list[dict], same_views: str) -> None:
    rows = [summary(*FRESH, fresh)] if fresh else []
    same = Path(same_views)
    if same.exists():
        rows.append(summary(*SAME, json.loads(same.read_text())))
    out.write_text(json.dumps(rows, indent=2) + "\n")
    for r in rows:
        print(f"| {r['name']} | {r['seeds']} | {r['auc_mean']:.4f} ± {r['auc_sd']:.4f} | {r['accuracy_mean']:.4f} ± "
              f"{r['accuracy_sd']:.4f} | {r['sens_at_spec80_mean']:.4f} ± {r['sens_at_spec80_sd']:.4f} |")


if __name__ == "__main__":
    sys.exit(main())
