#!/usr/bin/env python3
"""Does an int8 copy score the same on another CPU? Its validation and test AUC on this machine and on an emulated
CPU without VNNI (``qemu-x86_64 -cpu Haswell``: AVX2, the instruction set whose u8 x s8 multiply-add saturates).

ONNX Runtime picks its int8 kernels from the CPU it runs on; an int8 copy's card is measured on the machine that
exported it. This runs each copy's ONNX graph with ONNX Runtime alone (no torch) on the host and under qemu-user,
on the copy's own validation and test images, and compares probabilities and AUC against the float source.

    apt-get install -y qemu-user        # once
    .venv/bin/python scripts/int8_portability.py --data ../shared/data/isic9 \
        --models lite0-tiny-kd-onnx-int8,dsnet-kd-onnx-int8 --out-json docs/results/int8_portability.json

Emulation is slow (a few minutes per model for 640 images); the numbers, not the times, are the point.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(graph: str, inputs: str, out: str) -> None:
    """Logits of one graph on saved inputs, ONNX Runtime only (this is what runs under emulation)."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    name, data = session.get_inputs()[0].name, np.load(inputs)
    logits = {k: np.concatenate([session.run(None, {name: data[k][i:i + 64]})[0]
                                 for i in range(0, len(data[k]), 64)]) for k in data.files}
    np.savez(out, **logits)


def prepare(reg, name: str, data: str, tmp: Path) -> dict:
    """The copy's graph, its validation and test inputs, labels and the float source's probabilities."""
    import numpy as np

    from skinapp.data import decode_dataset, model_input, scan_dataset
    from skinapp.inference import Predictor, split_logits

    copy = Predictor.from_registry(name, reg)
    source = Predictor.from_registry(copy.card.source, reg)
    ds = scan_dataset(data, copy.card.task)
    decoded = decode_dataset(ds, copy.card.input_size)
    parts, inputs = {}, {}
    for split in ("val", "test"):
        s = split_logits(source, ds, split, decoded)
        if s.selection.split != split:
            raise SystemExit(f"{data} is not {name}'s own data: {s.selection.note}")
        x = decoded.images[s.selection.index].float() / 255.0
        inputs[split] = model_input(x, copy.card.input_size, copy.card.mean, copy.card.std).numpy()
        parts[split] = {"y": s.y, "p_source": source.probabilities(s.logits).numpy()}
    np.savez(tmp / f"{name}.npz", **inputs)
    return {"predictor": copy, "parts": parts, "graph": str(reg.root / copy.card.weights)}


def run_on(cpu: str | None, graph: str, inputs: Path, out: Path) -> None:
    cmd = [sys.executable, __file__, "--worker", graph, str(inputs), str(out)]
    if cpu:
        cmd = ["qemu-x86_64", "-cpu", cpu, *cmd]
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)


def measure(prep: dict, logits_file: Path) -> dict:
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    logits = np.load(logits_file)
    row = {}
    for split, part in prep["parts"].items():
        p = prep["predictor"].probabilities(torch.as_tensor(logits[split])).numpy()
        row[split] = {"auc": round(float(roc_auc_score(part["y"], p)), 4),
                      "auc_source": round(float(roc_auc_score(part["y"], part["p_source"])), 4),
                      "max_abs_p_vs_source": round(float(np.abs(p - part["p_source"]).max()), 4),
                      "mean_abs_p_vs_source": round(float(np.abs(p - part["p_source"]).mean()), 4), "p": p}
    return row


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        return worker(*sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", required=True, help="comma-separated int8 (or fp32) ONNX copies")
    ap.add_argument("--cpu", default="Haswell", help="qemu CPU model to emulate (one without VNNI)")
    ap.add_argument("--out-json")
    args = ap.parse_args()
    if not shutil.which("qemu-x86_64"):
        raise SystemExit("qemu-x86_64 not found: apt-get install -y qemu-user")
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from skinapp.registry import Registry

    reg, rows = Registry(), []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for name in args.models.split(","):
            prep = prepare(reg, name, args.data, tmp)
            res = {}
            for where, cpu in (("host", None), (f"qemu {args.cpu}", args.cpu)):
                out = tmp / f"{name}-{cpu}.npz"
                run_on(cpu, prep["graph"], tmp / f"{name}.npz", out)
                res[where] = measure(prep, out)
            host, emu = res.values()
            diff = max(float(np.abs(host[s]["p"] - emu[s]["p"]).max()) for s in ("val", "test"))
            for r in res.values():
                for s in r.values():
                    s.pop("p")
            rows.append({"model": name, "source": prep["predictor"].card.source,
                         "quantisation": prep["predictor"].card.export.get("quantisation", {}).get("weights"),
                         "max_abs_p_host_vs_emulated": round(diff, 4), **res})
            print(json.dumps(rows[-1]), flush=True)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
