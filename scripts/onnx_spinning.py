#!/usr/bin/env python3
"""ONNX Runtime's thread spinning, three ways, in the benchmark's interleaved loop: the setting the app's sessions use.

    M=teacher-lite012-onnx,lite0-tiny-128-kd-onnx,lite0-tiny-128-kd-onnx-int8,dsnet-kd-onnx-int8,lite0-tiny-128-kd
    SKINAPP_WEIGHTS=runs/bench .venv/bin/python scripts/onnx_spinning.py --models $M --repeats 2 \\
        --json docs/results/onnx_spinning.json
    .venv/bin/python scripts/onnx_spinning.py --models lite0-tiny-128-kd-onnx,lite0-tiny-128-kd-onnx,teacher-lite012 \\
        --saturate 8 --repeats 2 --json docs/results/onnx_spinning_saturated.json

Each setting runs in its own process (fresh thread pools), the settings alternating, ``--repeats`` times each:
``never`` (threads sleep between operators), ``after`` (ONNX Runtime's default: threads spin during a run and for a
while after it) and ``during`` (spin during a run, stop when it returns). The app offers ``during`` (its default) and
``never`` (``SKINAPP_ONNX_SPINNING``; ``skinapp.runtime.SPINNING``). The row per model is the p50 single-photo
latency (preprocess + forward of the generated 600x450 photo) and, timed alone after the interleaved loop, the
forward pass by itself. ``--saturate S`` instead gives every model its own thread calling it without pause for S
seconds (several users at once on two cores): calls made and median latency.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from skinapp.benchmark import cpu_description  # noqa: E402
from skinapp.runtime import SPINNING  # noqa: E402

# the app's two settings, and ONNX Runtime's own default between them
SETTINGS = {"never": SPINNING["never"], "after": {"session.intra_op.allow_spinning": "1"},
            "during": SPINNING["during"]}


def child(models: list[str], setting: str, threads: int, runs: int, saturate: float) -> dict:
    import torch

    from skinapp import runtime
    from skinapp.benchmark import interleaved_latencies, synthetic_lesion
    from skinapp.inference import Predictor

    runtime.session_config = lambda: SETTINGS[setting]
    torch.set_num_threads(threads)
    img = synthetic_lesion()
    predictors = [Predictor.from_registry(m, threads=threads) for m in models]
    if saturate:
        return saturated(models, predictors, img, saturate)
    single = interleaved_latencies(predictors, img, runs)
    out = {}
    for m, p, times in zip(models, predictors, single):
        x = p.preprocess(img)
        fwd = []
        for _ in range(10 + runs):
            t0 = time.perf_counter()
            p.logits(x)
            fwd.append((time.perf_counter() - t0) * 1000)
        out[m] = {"p50_ms": round(float(np.median(times)), 3), "forward_ms": round(float(np.median(fwd[10:])), 3)}
    return out


def saturated(models: list[str], predictors: list, img, seconds: float) -> dict:
    """Each model called back to back in its own thread for ``seconds``, all at once."""
    for p in predictors:
        for _ in range(5):
            p.predict_image(img)
    times: list[list[float]] = [[] for _ in predictors]

    def work(k: int, end: float) -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            predictors[k].predict_image(img)
            times[k].append((time.perf_counter() - t0) * 1000)

    end = time.perf_counter() + seconds
    workers = [threading.Thread(target=work, args=(k, end)) for k in range(len(predictors))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {f"{m}#{k}": {"calls": len(t), "p50_ms": round(float(np.median(t)), 3)}
            for k, (m, t) in enumerate(zip(models, times))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="comma-separated registered models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--saturate", type=float, default=0.0, metavar="S",
                    help="each model in its own thread, called without pause for S seconds")
    ap.add_argument("--json", type=Path, help="write every run here")
    ap.add_argument("--child", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",")]
    if args.child:
        print(json.dumps(child(models, args.child, args.threads, args.runs, args.saturate)))
        return 0
    runs = []
    for r in range(args.repeats):
        for setting in SETTINGS:
            cmd = [sys.executable, __file__, "--models", args.models, "--threads", str(args.threads),
                   "--runs", str(args.runs), "--saturate", str(args.saturate), "--child", setting]
            rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            runs.append({"repeat": r, "setting": setting, "rows": rows})
            print(f"repeat {r} {setting:6} " + "  ".join(
                f"{m} {v['p50_ms']:.2f}/" + (f"{v['forward_ms']:.2f}" if "forward_ms" in v else f"{v['calls']} calls")
                for m, v in rows.items()), flush=True)
    if args.json:
        record = {"cpu": cpu_description(), "threads": args.threads, "runs": args.runs,
                  "saturate_s": args.saturate, "settings": SETTINGS, "runs_by_setting": runs}
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
