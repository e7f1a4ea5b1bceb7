#!/usr/bin/env python3
"""Where an ONNX copy's forward pass goes, operator by operator: ONNX Runtime's own profiler on one photo-sized
input, with the app's session settings (why the int8 copy is not 1.3x the fp32 one per photo; docs/experiments.md).

    .venv/bin/python scripts/onnx_op_profile.py --models lite0-tiny-128-kd-onnx,lite0-tiny-128-kd-onnx-int8

Microseconds per run summed by operator type over --runs runs after 50 untimed ones (the profiler's own cost is
in them: compare operators, not totals with the benchmark's).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from skinapp.registry import Registry  # noqa: E402
from skinapp.runtime import session_options  # noqa: E402


def op_times(graph: bytes | str, input_size: int, threads: int = 2, runs: int = 300) -> dict[str, dict]:
    """Operator type -> {"us_per_run", "nodes"}, slowest first, from ONNX Runtime's profile of ``runs`` calls."""
    import onnxruntime as ort

    opts = session_options(threads)
    with tempfile.TemporaryDirectory() as tmp:
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "profile")
        session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, input_size, input_size),
                                                                              dtype=np.float32)}
        for _ in range(50 + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    calls = 50 + runs
    return {op: {"us_per_run": round(us / calls, 1), "nodes": count[op] // calls} for op, us in total.most_common()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="comma-separated registered ONNX copies")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    reg = Registry()
    out = {}
    for name in (m.strip() for m in args.models.split(",")):
        card = reg.get(name)
        out[name] = op_times(str(reg.root / card.weights), card.input_size, args.threads, args.runs)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
