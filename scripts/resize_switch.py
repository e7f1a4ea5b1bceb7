#!/usr/bin/env python3
"""The resize switch: Pillow's bilinear resize (used everywhere until 3 December) against the app's resize now,
PyTorch's antialiased uint8 resize (``skinapp.data.square_uint8``): each model's test AUC and probabilities, the
time per photo (issue #14's per-photo targets hinge on it), and whether PyTorch's pixels depend on the CPU.

    .venv/bin/python scripts/resize_switch.py --data ../shared/data/isic9 \\
        --models lite0-tiny-128-kd-onnx,lite0-tiny-128-kd-onnx-int8,lite0-tiny-128-kd,dsnet-kd,teacher-lite012 \\
        --json docs/results/resize_switch.json

Pillow's resize is kept here (``pillow_resize_square``) and swapped in for ``skinapp.data.resize_square`` (the
step that decodes a dataset for training and evaluation) inside this process only. Accuracy: every model's locked
test split decoded both ways, the paired AUC difference with its bootstrap interval, the largest probability change
and the labels that flip at 0.5. Time: the benchmark's interleaved loop on its generated 600x450 photo, Pillow and
PyTorch preprocessing of the same models taking turns. The ISIC photos here are 180 px, so the accuracy side sees
only mild downsampling (students) and upsampling (the teacher), never a camera-size photo (where the app keeps
Pillow's resize: ``skinapp.data.pillow_reduces``). Portability: the PyTorch resize of the same photos with
PyTorch's portable CPU kernel forced must give the same bytes as its SIMD kernel.
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
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from skinapp import data  # noqa: E402
from skinapp.benchmark import cpu_description, interleaved_latencies, synthetic_lesion  # noqa: E402
from skinapp.evaluation import paired_comparison  # noqa: E402
from skinapp.inference import Predictor, split_logits  # noqa: E402

APP_RESIZE = data.resize_square


def pillow_resize_square(img: Image.Image, size: int) -> Image.Image:
    """The app's resize until 3 December: Pillow's bilinear filter (box-reducing first for large downscales),
    with the app's geometry (shorter side to ``size``, centre crop)."""
    nw, nh, left, top = data.square_geometry(*img.size, size)
    scale = size / min(img.size)
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None if scale > 0.5 else 2.0)
    return img.crop((left, top, left + size, top + size))


class PillowPreprocessing(Predictor):
    """The same model with the photo resized by Pillow and normalised through NumPy floats, as until 3 December."""

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(pillow_resize_square(img, self.card.input_size), dtype=np.float32) / 255.0
        return data.normalize(torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0), self.card.mean, self.card.std)


def test_probabilities(p: Predictor, ds, resize) -> tuple[np.ndarray, np.ndarray]:
    data.resize_square = resize
    try:
        sd = split_logits(p, ds, "test")
    finally:
        data.resize_square = APP_RESIZE
    return sd.y, p.probabilities(sd.logits).numpy()


def accuracy_rows(models: list[str], data_dir: str) -> list[dict]:
    rows = []
    for name in models:
        p = Predictor.from_registry(name)
        ds = data.scan_dataset(data_dir, p.card.task)
        y, p_pillow = test_probabilities(p, ds, pillow_resize_square)
        y2, p_torch = test_probabilities(p, ds, APP_RESIZE)
        assert np.array_equal(y, y2)
        c = paired_comparison(y, p_torch, p_pillow)
        rows.append({"model": name, "n": c["n"], "auc_pillow": c["auc_b"], "auc_torch": c["auc_a"],
                     "delta_auc": c["delta_auc"], "delta_auc_ci": c["delta_auc_ci"],
                     "max_abs_dp": round(float(np.abs(p_torch - p_pillow).max()), 4),
                     "labels_flipped_at_0.5": int(((p_torch >= 0.5) != (p_pillow >= 0.5)).sum())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def latency_rows(models: list[str], threads: int, runs: int) -> dict:
    torch.set_num_threads(threads)
    img = synthetic_lesion()
    pillow = [PillowPreprocessing.from_registry(m, threads=threads) for m in models]
    fast = [Predictor.from_registry(m, threads=threads) for m in models]
    times = interleaved_latencies(pillow + fast, img, runs)
    pre = {}
    for label, p in (("pillow", pillow[0]), ("torch", fast[0])):
        ts = []
        for _ in range(220):
            t0 = time.perf_counter()
            p.preprocess(img)
            ts.append((time.perf_counter() - t0) * 1000)
        pre[label] = round(float(np.median(ts[20:])), 3)
    n = len(models)
    return {"p50_ms_pillow": {m: round(float(np.median(t)), 3) for m, t in zip(models, times[:n])},
            "p50_ms_torch": {m: round(float(np.median(t)), 3) for m, t in zip(models, times[n:])},
            "preprocess_ms": pre}


def resized_digest(data_dir: str, n: int = 60) -> str:
    """A hash of the app's (PyTorch) resize of three generated photos and ``n`` ISIC photos, at 128 and 96 px."""
    import hashlib

    from skinapp.imageio import load_image

    imgs = [synthetic_lesion(seed=s) for s in range(3)]
    imgs += [load_image(p) for p in sorted(Path(data_dir).rglob("*.jpg"))[:n]]
    h = hashlib.sha256()
    for size in (128, 96):
        for img in imgs:
            h.update(data.square_uint8(img, size).numpy().tobytes())
    return h.hexdigest()


def same_pixels_without_simd(data_dir: str) -> dict:
    """PyTorch picks its resize kernel by CPU (an AVX2/AVX-512 one where it can): the same photos resized with the
    portable kernel forced (ATEN_CPU_CAPABILITY=default, as on a CPU without them) must give the same bytes."""
    code = ("import sys; sys.path.insert(0, 'scripts'); import torch, resize_switch as r; "
            f"print(torch.backends.cpu.get_cpu_capability(), r.resized_digest({data_dir!r}))")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    here = resized_digest(data_dir)
    return {"capability_here": torch.backends.cpu.get_cpu_capability(), "capability_forced": out[0],
            "same_bytes": out[1] == here}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", required=True, help="comma-separated registered models")
    ap.add_argument("--timing-models", default="lite0-tiny-128-kd,lite0-tiny-128-kd-onnx,lite0-tiny-128-kd-onnx-int8",
                    help="models timed both ways in one interleaved loop")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    portable = same_pixels_without_simd(args.data)
    print(json.dumps(portable), flush=True)
    timing = latency_rows([m.strip() for m in args.timing_models.split(",")], args.threads, args.runs)
    print(json.dumps(timing), flush=True)
    rows = accuracy_rows([m.strip() for m in args.models.split(",")], args.data)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_description(), "threads": args.threads, "runs": args.runs,
                                         "portable": portable, "timing": timing,
                                         "accuracy": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
