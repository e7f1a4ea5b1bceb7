#!/usr/bin/env python3
"""Preprocess and forward pass timed apart, per model: where a single photo's time goes once a model runs in
ONNX Runtime (README's latency table, "forward ms").

    .venv/bin/python scripts/forward_latency.py --models lite0-tiny-kd,lite0-tiny-kd-onnx --threads 2 [--runs 200]

Medians over --runs calls on the benchmark's generated 600x450 photo, after 10 warm-up calls per model.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from skinapp.benchmark import synthetic_lesion  # noqa: E402
from skinapp.inference import Predictor  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="comma-separated registered models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    img = synthetic_lesion()
    for name in args.models.split(","):
        p = Predictor.from_registry(name.strip(), threads=args.threads)
        for _ in range(10):
            p.logits(p.preprocess(img))
        pre, fwd = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            x = p.preprocess(img)
            t1 = time.perf_counter()
            p.logits(x)
            pre.append(t1 - t0)
            fwd.append(time.perf_counter() - t1)
        print(f"{name:26} preprocess {np.median(pre) * 1000:6.2f} ms  forward {np.median(fwd) * 1000:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
