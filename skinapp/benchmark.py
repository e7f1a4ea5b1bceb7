"""Latency, throughput and size of registered models, measured the same way for all in one run."""
from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .explain import explain
from .inference import Predictor
from . import checks
from .registry import Registry

log = logging.getLogger(__name__)


def synthetic_lesion(width: int = 600, height: int = 450, seed: int = 0) -> Image.Image:
    """A skin-toned photo with a dark irregular blob: realistic size and content for timing, no patient data."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = height / 2, width / 2
    ang = np.arctan2(yy - cy, xx - cx)
    radius = min(width, height) * (0.25 + 0.05 * np.sin(3 * ang) + 0.03 * np.cos(7 * ang))
    inside = np.hypot(yy - cy, xx - cx) < radius
    img = np.empty((height, width, 3), np.float32)
    img[...] = (214, 170, 150)
    img[inside] = (110, 70, 55)
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def cpu_description() -> str:
    """The CPU's model name and the instruction sets that change ONNX Runtime's int8 kernels: timings only compare
    within one machine, so every recorded run says which it was."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return platform.processor() or platform.machine()
    lines = info.splitlines()
    name = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), platform.machine())
    flags = set(next((x.split(":", 1)[1].split() for x in lines if x.startswith("flags")), []))
    found = [f for f in ("avx2", "avx512_vnni", "amx_int8") if f in flags]
    return f"{name} ({', '.join(found) if found else 'no AVX2'})"


def _percentiles(times_ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(times_ms, 50)), float(np.percentile(times_ms, 95))


def interleaved_latencies(predictors: Sequence[Predictor], img: Image.Image, runs: int = 50,
                          warmup: int = 5, budget_s: float | None = None, min_runs: int = 3) -> list[list[float]]:
    """Single-image latency (preprocess + forward) of several models, one call of each per round, in rotating order.

    On a shared machine speed drifts over seconds; timing the models one after another turns that drift into a
    difference between models (the teacher-to-student ratio swung 6x-11x between runs here). Interleaved, a slow
    spell falls on every model alike. Each timed call follows an untimed one of the same model, so every model is
    timed warm (caches holding its own weights), as a user who keeps one model selected sees it. ``budget_s``:
    stop after the round that passes this many seconds (at least ``min_runs`` rounds), so a slow teacher cannot
    hold a page for minutes; the warm-up calls are never timed.
    """
    for predictor in predictors:
        for _ in range(warmup):
            predictor.predict_image(img)
    times: list[list[float]] = [[] for _ in predictors]
    start = time.perf_counter()
    for r in range(runs):
        if budget_s is not None and r >= min_runs and time.perf_counter() - start > budget_s:
            break
        for k in range(len(predictors)):
            i = (r + k) % len(predictors)
            predictors[i].predict_image(img)
            t0 = time.perf_counter()
            predictors[i].predict_image(img)
            times[i].append((time.perf_counter() - t0) * 1000)
    return times


def benchmark_predictor(predictor: Predictor, img: Image.Image, single: list[float], batch: int = 32,
                        cam_runs: int = 10) -> dict:
    """One model's row: its single-image latencies (timed interleaved with the others), forward throughput on a
    batch, Grad-CAM latency."""
    x = predictor.preprocess(img).repeat(batch, 1, 1, 1)
    predictor.logits(x)
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < 1.0:
        predictor.logits(x)
        reps += 1
    throughput = batch * reps / (time.perf_counter() - t0)
    explain(predictor, img)
    cams = [explain(predictor, img).latency_ms for _ in range(cam_runs)]
    p50, p95 = _percentiles(single)
    card = predictor.card
    return {"model": card.name, "role": card.role, "arch": card.arch, "input_size": card.input_size,
            "latency_ms_p50": round(p50, 3), "latency_ms_p95": round(p95, 3),
            "throughput_ips": round(throughput, 1), "batch": batch,
            "cam_ms_p50": round(_percentiles(cams)[0], 3), "params": card.params, "mflops": card.mflops,
            "file_bytes": card.file_bytes, "dtype": card.dtype, "runtime": card.runtime, "precision": card.precision,
            "source": card.source, "threads": getattr(predictor.model, "threads", torch.get_num_threads()),
            "runs": len(single)}


def run_benchmark(names: Sequence[str] | None = None, registry: Registry | None = None, threads: int | None = None,
                  runs: int = 50, image: Image.Image | None = None) -> list[dict]:
    registry = registry or Registry()
    checks.positive_int("runs", runs)
    if threads is not None:
        torch.set_num_threads(checks.positive_int("threads", threads))
    names = list(names) if names else registry.names()
    img = image or synthetic_lesion()
    log.info("benchmark on %s, %d torch threads, image %dx%d", cpu_description(),
             torch.get_num_threads(), img.width, img.height)
    predictors = [Predictor.from_registry(name, registry, threads) for name in names]
    single = interleaved_latencies(predictors, img, runs)
    return [benchmark_predictor(p, img, t) for p, t in zip(predictors, single)]
