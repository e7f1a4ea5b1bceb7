#!/usr/bin/env python3
"""Each distillation objective against its no-KD control, seed by seed, on the locked test split.

    .venv/bin/python scripts/kd_vs_control.py --data ../shared/data/isic9 --teacher teacher-lite0 \
        --seeds 0,1,2 --variants kd,attention,relational,function-matching,init,init-kd --scratch runs/kd-vs-control

For each network (the default student's lite0_tiny and the paper's dsnet), variant and seed it trains the student
and its control (same network, input size and schedule, hard labels only, ImageNet or random init as the network
has) into a scratch registry that also holds the teacher (copied from weights/), skipping runs already there; then
compares each with its control on the same test images (`evaluate --against`: ΔAUC with its paired bootstrap
interval) and summarises mean ± sd over seeds. Variants: ``kd`` (the logit objective), each other objective by
name, ``init`` (no KD, started from the teacher's matching layers: what initialisation alone gives) and ``init-kd``
(both); ``kd-T5`` is the logit objective at T=5 instead of ``-T`` (a temperature sweep). A variant a network
cannot take (dsnet has no layers in an EfficientNet teacher) is skipped.
A network may carry an input size and its own variants: ``lite0_tiny@128:init-kd`` trains lite0_tiny at 128 px,
only as ``init-kd`` (variants joined by ``+``; and its control at 128 px). ``--jobs N`` trains N runs at a time
(on a GPU), variant by variant in the order given, so a run cut short by a time limit still leaves whole rows;
``--train-only`` / ``--compare-only`` split training (e.g. on a lent GPU) from the comparison; ``--merge-into
STUDY.json`` puts a rerun's rows in place of a study's old ones.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from skinapp.registry import DEFAULT_WEIGHTS_DIR, Registry  # noqa: E402
from skinapp.studies import summarise_pairs  # noqa: E402

NETWORKS = {
    "lite0_tiny": ["--arch", "lite0_tiny", "--pretrained", "package", "--epochs", "20", "--lr", "2e-3",
                   "--batch-size", "32"],
    "dsnet": ["--arch", "dsnet", "--epochs", "30", "--lr", "3e-3", "--batch-size", "64"],
}


OBJECTIVES = ("attention", "relational", "function-matching")
INIT_NETWORKS = ("lite0_tiny",)  # the networks whose layers an EfficientNet-Lite0 teacher holds


def run_name(arch: str, variant: str | bool, seed: int) -> str:
    variant = {True: "kd", False: "nokd"}.get(variant, variant)
    base, size, _ = network(arch)
    return f"{base.replace('_', '-')}{f'-{size}px' if size else ''}-{variant}-s{seed}"


def network(spec: str) -> tuple[str, int | None, list[str] | None]:
    """``lite0_tiny@128:init-kd+kd`` -> (architecture, input size or None, the only variants it takes or None)."""
    head, _, only = spec.partition(":")
    arch, _, size = head.partition("@")
    if arch not in NETWORKS:
        raise SystemExit(f"unknown network {arch!r}; choose from: {', '.join(NETWORKS)}")
    return arch, int(size) if size else None, only.split("+") if only else None


def network_args(spec: str) -> list[str]:
    arch, size, _ = network(spec)
    return [*NETWORKS[arch], *(["--image-size", str(size)] if size else [])]


def variant_args(variant: str, args) -> list[str]:
    kd = ["--teacher", args.teacher, "-T", str(args.temperature)]
    init = ["--init-from-teacher", args.teacher]
    control = ["--no-kd", "--head", "diagnosis"]
    table = {"nokd": control, "kd": kd, "init": control + init, "init-kd": kd + init}
    table |= {o: kd + ["--kd", o] for o in OBJECTIVES}
    swept = re.fullmatch(r"kd-T(\d+(?:\.\d+)?)", variant)  # the logit objective at another temperature
    if swept:
        return ["--teacher", args.teacher, "-T", swept.group(1)]
    if variant not in table:
        raise SystemExit(f"unknown variant {variant!r}; choose from: {', '.join(table)}, kd-T<temperature>")
    return table[variant]


def applies(spec: str, variant: str) -> bool:
    arch, _, only = network(spec)
    if only is not None and variant != "nokd" and variant not in only:
        return False
    return not variant.startswith("init") or arch in INIT_NETWORKS


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """A study's rows with ``new`` in place of the old rows of the same network, input size, variant and seed: a
    rerun (e.g. after a fix) replaces what it reran, every other row keeps its place."""
    def key(r: dict) -> tuple:
        return r["arch"], r.get("image_size"), r["variant"], r["seed"]

    fresh = {key(r): r for r in new}
    merged = [fresh.pop(key(r), r) for r in old]
    return merged + [r for r in new if key(r) in fresh]


def train_missing(args, reg: Registry, seeds: list[int], variants: list[str]) -> None:
    """Variant by variant (the control first), network by network, seed by seed; ``args.jobs`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    runs = {}
    for variant in ["nokd", *variants]:
        for spec in args.networks:
            for seed in seeds:
                name = run_name(spec, variant, seed)
                if name in reg.names() or not applies(spec, variant):
                    continue
                runs[name] = [sys.executable, "-m", "skinapp", "--weights", str(reg.root), "distill", "--data",
                              args.data, "--name", name, "--seed", str(seed), "--threads", args.threads,
                              "--device", args.device, *network_args(spec), *variant_args(variant, args),
                              *args.extra]
    with ThreadPoolExecutor(args.jobs) as pool:
        failed = [name for name, rc in zip(runs, pool.map(_run, runs.items())) if rc]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(runs)} runs failed: {', '.join(failed)}")


def _run(run: tuple[str, list[str]]) -> int:
    name, cmd = run
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    rc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode
    print(f"{'done' if rc == 0 else f'FAILED ({rc})'}: {name}", file=sys.stderr, flush=True)
    return rc


def compare(args, reg: Registry, seeds: list[int], variants: list[str]) -> list[dict]:
    from skinapp.data import scan_dataset
    from skinapp.inference import Predictor, compare_on_dataset

    ds = scan_dataset(args.data)
    rows = []
    for arch in args.networks:
        for variant in variants:
            for seed in seeds:
                if not applies(arch, variant) or run_name(arch, variant, seed) not in reg.names():
                    continue
                rows.append(_pair(reg, ds, arch, variant, seed, Predictor, compare_on_dataset))
    return rows


def _pair(reg: Registry, ds, arch: str, variant: str, seed: int, Predictor, compare_on_dataset) -> dict:
    kd, ctl = (reg.get(run_name(arch, v, seed)) for v in (variant, "nokd"))
    c = compare_on_dataset(Predictor(*reg.load(kd.name)), Predictor(*reg.load(ctl.name)), ds, "auto")
    base, size, _ = network(arch)
    return {"arch": base, "image_size": size, "variant": variant, "seed": seed,
            "teacher": kd.train.get("teacher"), "temperature": kd.train.get("temperature"), "kd": kd.name,
            "control": ctl.name, "split": c["split"],
            "n": c["n"], "auc_kd": c["auc_a"], "auc_control": c["auc_b"], "delta_auc": c["delta_auc"],
            "delta_auc_ci": c["delta_auc_ci"], "p_delong": c["p_delong"],
            "sens_at_spec80_kd": kd.test_metrics["sens_at_spec80"],
            "sens_at_spec80_control": ctl.test_metrics["sens_at_spec80"],
            "ece_kd": kd.test_metrics["ece"], "ece_control": ctl.test_metrics["ece"],
            "train_s_kd": kd.train.get("train_time_s"), "train_s_control": ctl.train.get("train_time_s"),
            "threads": kd.train.get("threads"), "val_auc_kd": kd.metrics.get("auc"),
            "val_auc_control": ctl.metrics.get("auc")}


def _ms(m_sd: tuple[float, float]) -> str:
    return f"{m_sd[0]:.4f} ± {m_sd[1]:.4f}"


def _two(pair) -> str:
    return "—" if pair is None else f"{_ms(pair[0])} / {_ms(pair[1])}"


def summary(rows: list[dict]) -> list[str]:
    out = ["| network | variant | seeds | test AUC, variant | test AUC, control | ΔAUC per seed [95% paired CI] | "
           "seeds above / below 0 | sens@spec80 variant / control | ECE variant / control | "
           "val AUC variant / control | training s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summarise_pairs(rows):
        deltas = "; ".join(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in s["deltas"])
        val = "—" if None in s["val_auc"] else f"{s['val_auc'][0]:.4f} / {s['val_auc'][1]:.4f}"
        size = f" {s['image_size']} px" if s["image_size"] else ""
        secs = "—" if s["train_s"] is None else f"{s['train_s']:.0f}"
        out.append(f"| {s['network']}{size} | {s['variant']} | {s['seeds']} | {_ms(s['auc'])} | "
                   f"{_ms(s['auc_control'])} | {deltas} | {s['seeds_better']} / {s['seeds_worse']} | "
                   f"{_two(s['sens_at_spec80'])} | {_two(s['ece'])} | {val} | {secs} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--teacher", required=True, help="a teacher made under the locked test split")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default="kd", help="comma-separated: kd, attention, relational, "
                                                     "function-matching, init, init-kd")
    ap.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated: " + ", ".join(NETWORKS))
    ap.add_argument("-T", "--temperature", type=float, default=20.0)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at a time (on a GPU)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--train-only", action="store_true", help="train the missing runs, compare nothing")
    mode.add_argument("--compare-only", action="store_true", help="compare the runs already trained")
    ap.add_argument("--scratch", default=str(ROOT / "runs" / "kd-vs-control"))
    ap.add_argument("--out-json", default=str(ROOT / "docs" / "results" / "kd_vs_control.json"))
    ap.add_argument("--merge-into", help="also put the rows into this study (e.g. kd_objectives_lite012.json), "
                                         "replacing its rows of the same network, size, variant and seed")
    ap.add_argument("extra", nargs="*", help="after --: more distill options for every run (they win)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    args.networks = args.networks.split(",")
    for v in variants:
        variant_args(v, args)  # every name checked before hours of training
    for spec in args.networks:
        if not any(applies(spec, v) for v in variants):
            raise SystemExit(f"network {spec!r} takes none of the variants {', '.join(variants)}: only its controls "
                             f"would train (name them with --variants)")
    reg = Registry(args.scratch)
    if args.teacher not in reg.names():
        reg.root.mkdir(parents=True, exist_ok=True)
        for ext in ("json", "safetensors"):
            shutil.copy(DEFAULT_WEIGHTS_DIR / f"{args.teacher}.{ext}", reg.root)
    if not args.compare_only:
        train_missing(args, reg, seeds, variants)
    if args.train_only:
        return 0
    rows = compare(args, reg, seeds, variants)
    Path(args.out_json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.merge_into:
        study = Path(args.merge_into)
        study.write_text(json.dumps(merge_rows(json.loads(study.read_text()), rows), indent=2) + "\n")
    print("\n".join(summary(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
