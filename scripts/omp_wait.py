#!/usr/bin/env python3
"""PyTorch's OpenMP threads beside ONNX Runtime's on the same cores: does a PyTorch call slow the ONNX call after it?

    .venv/bin/python scripts/omp_wait.py --runs 30 --repeats 2 --json docs/results/omp_wait_teacher.json
    M=teacher-lite0,dsnet-kd,dsnet-kd-fp16,dsnet-kd-lite0,dsnet-kd-onnx-int8,dsnet-nokd,lite0-tiny-128-kd,\
lite0-tiny-128-kd-onnx,lite0-tiny-128-kd-onnx-int8,lite0-tiny-128-nokd,lite0-tiny-kd,lite0-tiny-kd-fp16,\
lite0-tiny-kd-lite0,lite0-tiny-kd-onnx,lite0-tiny-kd-onnx-int8,lite0-tiny-nokd,mobilenetv3-kd
    .venv/bin/python scripts/omp_wait.py --models $M --repeats 2 --json docs/results/omp_wait.json

PyTorch's pip wheel runs its operators on libgomp, whose threads spin for a while after each parallel region
(``GOMP_SPINCOUNT``, 300,000 by default; ``OMP_WAIT_POLICY=PASSIVE`` makes them sleep at once; skinapp sets
10,000, ``skinapp.GOMP_SPINCOUNT``). The app runs PyTorch models (the teacher,
Grad-CAM) beside ONNX Runtime students, so a spinning PyTorch thread could take a core from the ONNX call that
follows. Each setting runs in its own process (libgomp reads them when it loads), the settings alternating,
``--repeats`` times each. Per process: the benchmark's interleaved per-photo p50 of PyTorch and ONNX models
(``--models``), and the int8 copy's forward pass timed right after a PyTorch call and right after its own.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = "teacher-lite012,lite0-tiny-128-kd,lite0-tiny-128-kd-onnx,lite0-tiny-128-kd-onnx-int8"
# importing skinapp sets GOMP_SPINCOUNT=10000 unless it is set, so libgomp's own defaults are named explicitly
SETTINGS = {"libgomp-default": {"GOMP_SPINCOUNT": "300000"}, "spincount-10000": {"GOMP_SPINCOUNT": "10000"},
            "passive": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}}


def measure(names: list[str], runs: int, pairs: int) -> dict:
    """In this process: per-photo p50 (ms) of each model, interleaved, and the handover forward times."""
    from skinapp.benchmark import interleaved_latencies, synthetic_lesion
    from skinapp.inference import Predictor

    predictors = [Predictor.from_registry(n) for n in names]
    img = synthetic_lesion()
    times = interleaved_latencies(predictors, img, runs)
    row = {"per_photo_p50_ms": {n: round(float(np.median(t)), 3) for n, t in zip(names, times)}}
    torch_model = next((p for p in predictors if not p.onnx), None)
    onnx_model = next((p for p in predictors if p.onnx and p.card.precision == "int8"), None)
    if torch_model is None or onnx_model is None:
        raise SystemExit(f"--models needs a PyTorch model and an ONNX int8 copy; got {', '.join(names)}")
    x = onnx_model.preprocess(img)
    after_torch, after_self = [], []
    for _ in range(pairs):
        torch_model.predict_image(img)
        t0 = time.perf_counter()
        onnx_model.logits(x)
        after_torch.append(time.perf_counter() - t0)
        onnx_model.logits(x)
        t0 = time.perf_counter()
        onnx_model.logits(x)
        after_self.append(time.perf_counter() - t0)
    row["handover"] = {"onnx": onnx_model.card.name, "after": torch_model.card.name,
                       "forward_p50_ms_after_torch": round(float(np.median(after_torch)) * 1e3, 3),
                       "forward_p50_ms_after_itself": round(float(np.median(after_self)) * 1e3, 3)}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS, help="comma-separated; at least one PyTorch model and one int8 copy")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.models.split(","), args.runs, args.pairs)))
        return 0
    from skinapp.benchmark import cpu_description

    rows, load = [], os.getloadavg()[0]
    for rep in range(args.repeats):
        for setting, extra in SETTINGS.items():
            env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")} | extra
            out = subprocess.run([sys.executable, __file__, "--child", "--models", args.models, "--runs",
                                  str(args.runs), "--pairs", str(args.pairs)], env=env, check=True,
                                 capture_output=True, text=True)
            rows.append({"setting": setting, "env": extra, "repeat": rep} | json.loads(out.stdout.splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": cpu_description(), "date": time.strftime("%Y-%m-%d"),
                                               "load_average_at_start": load, "rows": rows},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
