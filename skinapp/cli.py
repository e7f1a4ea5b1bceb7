"""``python -m skinapp``: the same functions the app uses, from a shell.

Bad input ends with one readable line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from .data import TASKS, DatasetError, scan_dataset
from .distill import TrainConfig, TrainingError, add_arguments, from_arguments, train
from .decision import verdict
from .evaluation import small_sample_note
from .explain import ExplainError
from .export import MAX_FLOAT
from . import checks
from .imageio import IMAGE_SUFFIXES, InvalidImageError, load_image, one_line
from .protocol import SPLITS
from .models import PretrainedWeightsError, UnknownArchitectureError
from .registry import Registry, RegistryError, model_summary

log = logging.getLogger("skinapp")
USER_ERRORS = (InvalidImageError, DatasetError, RegistryError, TrainingError, UnknownArchitectureError,
               PretrainedWeightsError, ExplainError, OSError, ValueError)  # OSError: an output path it cannot write


def _emit(obj, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2) if as_json else text)


def cmd_models(args, reg: Registry) -> int:
    if args.set_default is not None:  # '' too: it names no model, and must say so
        reg.set_default(args.set_default)
    cards = reg.cards()
    defaults = {r: reg.default(r).name for r in ("teacher", "student") if any(c.role == r for c in cards)}
    rows = [model_summary(c) | {"default": defaults.get(c.role) == c.name, "status": "ok"} for c in cards]
    lines = [f"{'name':28} {'role':8} {'arch':22} {'params':>10} {'val AUC':>7} {'test AUC [95% CI]':>22}  teacher"]
    for r in rows:
        val = f"{r['val_auc']:.3f}" if r["val_auc"] is not None else "-"
        test = (f"{r['test_auc']:.3f} [{r['test_auc_ci'][0]:.3f}, {r['test_auc_ci'][1]:.3f}]"
                if r["test_auc"] is not None and r["test_auc_ci"] else "- (no locked test)")
        lines.append(f"{r['name'] + (' *' if r['default'] else ''):28} {r['role']:8} {r['arch']:22} "
                     f"{r['params']:>10,} {val:>7} {test:>22}  {r['teacher'] or '-'}")
    broken = reg.broken()
    rows += [{"name": b.name, "file": b.file, "status": "broken", "reason": b.reason} for b in broken]
    lines += [f"{b.file}: broken, left out: {b.reason}" for b in broken]
    _emit(rows, args.json, "\n".join(lines) if rows else f"no models registered in {reg.root}")
    return 0


def cmd_predict(args, reg: Registry) -> int:
    from .inference import Predictor, expand_inputs

    paths = expand_inputs(args.images)
    if not paths:
        raise ValueError(f"no images found in {', '.join(map(str, args.images))} (looked for "
                         f"{', '.join(IMAGE_SUFFIXES)})")
    if args.cam_out:
        out_dir = Path(args.cam_out)
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--cam-out {out_dir} exists and is not a folder")
        out_dir.mkdir(parents=True, exist_ok=True)
    _check_report(args)  # a bad --report path is refused before any work
    pred = Predictor.from_registry(reg.default("student").name if args.model is None else args.model, reg,
                                   _threads(args))
    cam_names = cam_file_names(paths) if args.cam_out else {}
    names = report_names(paths)
    rows, cases = [], []
    for path in paths:
        row, case = _predict_one(pred, path, args, cam_names.get(path), names[path])
        rows.append(row)
        cases.append(case)
        if not args.json and "error" not in row:
            probs = "  ".join(f"{k} {v:.3f}" for k, v in row["probabilities"].items())
            print(f"{shown(path)}: {row['verdict']}  ({probs}; T={row['temperature']:g}, {row['latency_ms']:.1f} ms)")
    if args.report:
        from .report import ReportSettings, case_report

        t = pred.card.temperature if args.temperature is None else args.temperature
        settings = ReportSettings(t, args.threshold, args.band)
        Path(args.report).write_bytes(case_report(pred.card, cases, settings))
        log.info("wrote the case report to %s", args.report)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 2 if any("error" in r for r in rows) else 0


def _check_report(args) -> None:
    """The report's path, checked up front so a typo does not surface after minutes of Grad-CAM (temperature,
    threshold and band are checked for every command by ``_check_args``)."""
    if not args.report:
        return

    out = Path(args.report)
    if out.suffix.lower() != ".pdf" or out.is_dir() or not out.parent.is_dir():
        raise ValueError(f"--report {out} must be a .pdf file in an existing folder")


def report_names(paths: Sequence[Path]) -> dict[Path, str]:
    """Each photo as the report names it: its path below the folder all of them share (a/x.jpg and b/x.jpg
    were both "x.jpg" there)."""
    parents = [str(p.parent.resolve()) for p in paths]
    common = Path(os.path.commonpath(parents)) if parents else Path()
    return {p: str(p.resolve().relative_to(common)) for p in paths}


def _predict_one(pred, path: Path, args, cam_name: str | None, name: str):
    """One photo: its JSON row, and what the case report shows of it (errors in place, never a stop)."""
    from .explain import explain
    from .imageio import display_copy
    from .report import CaseResult

    try:
        img = load_image(path)
    except InvalidImageError as exc:
        print(f"skinapp: error: {shown(exc)}", file=sys.stderr)
        return {"image": str(path), "error": str(exc)}, CaseResult(name, error=str(exc))
    p = pred.predict_image(img, args.temperature, args.threshold, str(path))
    # the words the pages and the report use (a bare 'benign' read as all clear; the report said 'Uncertain')
    row = p.as_dict() | {"verdict": verdict(pred.card, p.p_positive, args.threshold, args.band)[0]}
    if not (args.cam_out or args.report):
        return row, None
    cam = explain(pred, img, p.label)  # the label printed at the user's threshold, as on the Analyse page
    if args.cam_out:
        from PIL import Image

        out = Path(args.cam_out) / cam_name
        Image.fromarray(cam.overlay).save(out)
        row.update(cam=str(out), cam_target=cam.target, cam_ms=round(cam.latency_ms, 2))
    return row, CaseResult(name, display_copy(img), cam.overlay, cam.target, p.p_positive)


def _threads(args) -> int | None:
    """--threads for PyTorch (process-wide) and for an ONNX Runtime session (per model)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return args.threads


def shown(x: object) -> str:
    """A path or message on one line: control characters in a file name (a newline could forge a result line)
    printed as escapes."""
    return one_line(x)


def cam_file_names(paths: Sequence[Path]) -> dict[Path, str]:
    """One overlay file per photo: x.jpg and x.webp (or two folders' x.jpg) must not overwrite each other."""
    names, used = {}, set()
    for path in paths:
        base = f"{path.stem[:150]}_{path.suffix.lstrip('.').lower()[:10] or 'img'}_cam"  # within 255 bytes
        name, k = f"{base}.png", 2
        while name in used:
            name, k = f"{base}-{k}.png", k + 1
        used.add(name)
        names[path] = name
    return names


def cmd_evaluate(args, reg: Registry) -> int:
    from .inference import Predictor, compare_on_dataset, evaluate_dataset

    pred = Predictor.from_registry(args.model, reg, _threads(args))
    ds = scan_dataset(args.data, args.task or pred.card.task, args.label_map, args.metadata)
    if args.against:
        c = compare_on_dataset(pred, Predictor.from_registry(args.against, reg, _threads(args)), ds, args.split)
        _emit(c, args.json, f"{c['model_a']} vs {c['model_b']} on {c['data']} ({c['split']}, n={c['n']}): AUC "
                            f"{c['auc_a']:.4f} vs {c['auc_b']:.4f}, difference {c['delta_auc']:+.4f} (95% CI "
                            f"{c['delta_auc_ci'][0]:+.4f} to {c['delta_auc_ci'][1]:+.4f}; DeLong p = "
                            f"{c['p_delong']:.3g})" + (f"\nnote: {c['note']}" if c["note"] else ""))
        return 0
    m = evaluate_dataset(pred, ds, args.split, args.threshold, args.temperature)
    m["caution"] = small_sample_note(m["n_positive"], m["n"], pred.card.task_labels)
    text = (f"{m['model']} on {m['data']} ({m['split']}, n={m['n']}): AUC {m['auc']:.4f} [{m['auc_ci'][0]:.4f}, "
            f"{m['auc_ci'][1]:.4f}]  accuracy {m['accuracy']:.4f}  balanced {m['balanced_accuracy']:.4f}  "
            f"sensitivity {m['sensitivity']:.4f}  specificity {m['specificity']:.4f}  sens@spec80 "
            f"{m['sens_at_spec80']:.4f} [{m['sens_at_spec80_ci'][0]:.4f}, {m['sens_at_spec80_ci'][1]:.4f}]  ECE "
            f"{m['ece']:.4f} (a perfectly calibrated model: {m['ece_null']['mean']:.4f}, 95% up to "
            f"{m['ece_null']['p95']:.4f}); intervals: 95% stratified bootstrap"
            + (f"\nnote: {m['note']}" if m["note"] else "") + (f"\ncaution: {m['caution']}" if m["caution"] else ""))
    _emit(m, args.json, text)
    return 0


def cmd_calibrate(args, reg: Registry) -> int:
    from .inference import Predictor, calibrate_on_split

    pred = Predictor.from_registry(args.model, reg)
    card = pred.card
    ds = scan_dataset(args.data, card.task, args.label_map, args.metadata)
    t, metrics, test = calibrate_on_split(pred, ds)
    out = {"model": card.name, "fitted_on": "val", "n": metrics["n"], "temperature": t,
           "ece_before": metrics["ece_before"], "ece_after": metrics["ece"],
           "test_ece_before": test.get("ece_before"), "test_ece_after": test.get("ece"), "test_n": test.get("n")}
    if not args.dry_run:  # keeps best_epoch, compression
        reg.update(card.name, temperature=t, metrics=card.metrics | metrics,
                   test_metrics=(card.test_metrics | test) if test else card.test_metrics)
    where = (f"; on the locked test split (n={test['n']}) ECE {test['ece_before']:.4f} -> {test['ece']:.4f}" if test
             else "; no locked test split in this model's card")
    _emit(out, args.json, f"{card.name}: T = {t:.4f} fitted on validation (n={metrics['n']}), ECE "
                          f"{metrics['ece_before']:.4f} -> {metrics['ece']:.4f}{where}"
                          + ("" if args.dry_run else "; card updated"))
    return 0


def cmd_benchmark(args, reg: Registry) -> int:
    from .benchmark import run_benchmark

    names = None if args.models is None else [n.strip() for n in args.models.split(",") if n.strip()]
    if names == []:  # '' or ',' once meant every model
        raise ValueError(f"--models {args.models!r} names no model; give names separated by commas, or leave it "
                         f"out for every model")
    for n in names or []:
        reg.get(n)
    image = load_image(args.image) if args.image else None
    rows = run_benchmark(names, reg, args.threads, args.runs, image)
    lines = [f"{'model':28} {'runtime':12} {'p50 ms':>8} {'p95 ms':>8} {'img/s':>8} {'CAM ms':>8} {'params':>11} "
             f"{'MFLOPs':>9} {'bytes':>11}"]
    lines += [f"{r['model']:28} {r['runtime'] + ' ' + r['precision']:12} {r['latency_ms_p50']:8.2f} "
              f"{r['latency_ms_p95']:8.2f} {r['throughput_ips']:8.1f} {r['cam_ms_p50']:8.2f} {r['params']:11,} "
              f"{r['mflops']:9.1f} {r['file_bytes']:11,}" for r in rows]
    if rows:
        lines.append(f"(torch threads: {rows[0]['threads']}; single-image latency = preprocess + forward)")
    _emit(rows, args.json, "\n".join(lines))
    return 0


def cmd_compress(args, reg: Registry) -> int:
    from .compress import compress_model

    card = compress_model(reg, args.model, args.name, args.data, args.dtype, args.label_map, args.overwrite)
    c = card.metrics["compression"]
    _emit(model_summary(card) | {"compression": c}, args.json,
          f"registered {card.name}: {c['source_bytes']:,} -> {c['bytes']:,} bytes ({c['ratio']}x); change on the "
          f"validation split: " + ", ".join(f"{k} {v:+.4f}" for k, v in c["change"].items()))
    return 0


def cmd_export(args, reg: Registry) -> int:
    from .export import export_model

    card = export_model(reg, args.model, args.data, args.name, args.int8, args.label_map, args.metadata,
                        args.overwrite, args.max_float)
    par, test = card.export["parity"], card.test_metrics.get("change", {})
    _emit(model_summary(card) | {"export": card.export, "test_change": test}, args.json,
          f"registered {card.name} ({card.precision}, onnx, {card.file_bytes:,} bytes) from {card.source}: "
          f"probabilities within {par['max_abs_p']:.2g} of the source on {par['images']} validation images; "
          f"test AUC change {test.get('auc', float('nan')):+.4f}")
    return 0


def cmd_fuse(args, reg: Registry) -> int:
    from .fuse import fuse_models

    members = [m.strip() for m in args.members.split(",") if m.strip()]
    card = fuse_models(reg, members, args.name, args.data, args.views, args.dtype, args.label_map, args.overwrite,
                       args.default, args.description, args.crossfit)
    m = card.metrics
    _emit(model_summary(card) | {"fused_from": members, "views": args.views}, args.json,
          f"registered {card.name} (fused from {', '.join(members)}, views: {args.views}): val AUC {m['auc']:.4f}, "
          f"sens@spec80 {m['sens_at_spec80']:.4f}, T={card.temperature:.3f}, ECE {m['ece']:.4f}, "
          f"{card.params:,} params, {card.mflops:,.0f} MFLOPs")
    return 0


def _train_config(args, role: str) -> TrainConfig:
    # a schedule not given on the command line (None) is the architecture's own: TrainConfig fills it in
    return from_arguments(args, role, weights_dir=args.weights)


def cmd_train(args, reg: Registry, role: str) -> int:
    no_kd = getattr(args, "no_kd", False)
    if role == "student" and not no_kd and not args.teacher:
        args.teacher = reg.default("teacher").name
    if role == "teacher" or no_kd:
        args.teacher = None
    if args.estimate:
        from .distill.estimate import estimate

        est = estimate(_train_config(args, role), reg)
        _emit(est.as_dict(), args.json, est.summary())
        return 0
    card = train(_train_config(args, role), reg)
    if card is None:
        if os.environ.get("RANK", "0") != "0":
            return 0  # under torchrun only rank 0 registers and reports; a stop shows in rank 0's exit code
        print("stopped on request; no model was registered", file=sys.stderr)
        return 3
    m = card.metrics
    _emit(model_summary(card) | {"metrics": {k: m[k] for k in ("auc", "accuracy", "sens_at_spec80", "ece")}},
          args.json, f"registered {card.name}: val AUC {m['auc']:.4f}, accuracy {m['accuracy']:.4f}, "
                     f"T={card.temperature:.3f}, {card.params:,} params, {card.train.get('train_time_s')} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m skinapp", description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="registry folder (default: $SKINAPP_WEIGHTS or the project's weights/)")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list registered models")
    p.add_argument("--set-default", dest="set_default", metavar="NAME", help="mark NAME as its role's default")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("predict", help="benign/malignant probabilities for images or folders")
    p.add_argument("--model", help="registered model (default: the default student)")
    p.add_argument("--temperature", type=float, help="softmax temperature (default: the card's calibrated one)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--cam-out", dest="cam_out", help="folder for Grad-CAM overlays")
    p.add_argument("--threads", type=int, help="CPU threads for the model (PyTorch or ONNX Runtime)")
    p.add_argument("--report", metavar="PDF", help="also write a PDF case report (photo, Grad-CAM, verdict)")
    p.add_argument("--band", type=float, default=0.1,
                   help="the 'uncertain' band around the threshold, for the printed verdicts and the report "
                        "(default 0.1, as on the Analyse page)")
    p.add_argument("--json", action="store_true")
    p.add_argument("images", nargs="+")
    for name, helptext in (("evaluate", "metrics with 95%% intervals on a dataset folder"),
                           ("calibrate", "fit a temperature on validation, report ECE on test")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", required=True)
        p.add_argument("--data", required=True)
        p.add_argument("--threads", type=int, help="CPU threads for the model (PyTorch or ONNX Runtime)")
        p.add_argument("--label-map", dest="label_map")
        p.add_argument("--metadata", help="CSV with image and lesion_id columns (default: found beside the data)")
        p.add_argument("--json", action="store_true")
        if name == "evaluate":
            p.add_argument("--task", choices=list(TASKS))
            p.add_argument("--split", default="auto", choices=SPLITS,
                           help="auto: the model's locked test split on its own data, all images on other data")
            p.add_argument("--against", metavar="MODEL",
                           help="compare with another model on the same images: AUC difference, paired "
                                "bootstrap interval, DeLong p")
            p.add_argument("--threshold", type=float, default=0.5)
            p.add_argument("--temperature", type=float)
        else:
            p.add_argument("--dry-run", dest="dry_run", action="store_true", help="report without updating the card")
    for role, command, helptext in (("teacher", "train-teacher", "train a teacher on hard labels"),
                                    ("student", "distill", "train a student, with knowledge distillation")):
        p = sub.add_parser(command, help=helptext)
        add_arguments(p, role)  # generated from TrainConfig: the Train page reads the same defaults and bounds
        p.add_argument("--json", action="store_true")
        p.add_argument("--estimate", action="store_true",
                       help="say how long this run would take here (prepares the data and times a few real steps); "
                            "trains and registers nothing")
    p.add_argument("--no-kd", dest="no_kd", action="store_true", help="train on hard labels only (the control)")
    p = sub.add_parser("compress", help="register a float16 copy of a model and measure what it costs")
    p.add_argument("--model", required=True)
    p.add_argument("--name", required=True, help="name of the copy")
    p.add_argument("--data", required=True, help="the dataset the source was trained on (its validation split)")
    p.add_argument("--dtype", default="float16", choices=("float16",))
    p.add_argument("--label-map", dest="label_map")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("export", help="register an ONNX Runtime copy of a model (fp32, or --int8), measured")
    p.add_argument("--model", required=True)
    p.add_argument("--name", help="name of the copy (default: MODEL-onnx or MODEL-onnx-int8)")
    p.add_argument("--data", required=True, help="the dataset the source was trained on (its validation split "
                                                 "checks the copy and calibrates int8; test is only reported)")
    p.add_argument("--int8", action="store_true", help="static int8 quantisation (QDQ, per-channel weights)")
    p.add_argument("--max-float", dest="max_float", type=int, default=MAX_FLOAT,
                   help="int8: when the copy loses more than 0.005 validation AUC, keep float up to this many "
                        "convolutions, the costliest first (0: none)")
    p.add_argument("--label-map", dest="label_map")
    p.add_argument("--metadata", help="CSV with image and lesion_id columns (default: found beside the data)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("fuse", help="register a teacher fused from registered models (mean probability)")
    p.add_argument("--members", required=True, help="comma-separated registered models, trained on one split")
    p.add_argument("--name", required=True)
    p.add_argument("--data", required=True, help="the members' dataset (its validation split calibrates the fusion)")
    p.add_argument("--views", default="flips", choices=("none", "flips"),
                   help="flips: also average over the horizontally, vertically and doubly flipped image")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                   help="float16 halves the file; computation stays float32")
    p.add_argument("--label-map", dest="label_map")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--default", action="store_true", help="mark as the default teacher")
    p.add_argument("--crossfit", action="store_true",
                   help="members are fold teachers (train-teacher --folds K --fold k): distillation scores each "
                        "training image with the member that never saw it")
    p.add_argument("--description", default="")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("benchmark", help="latency, throughput, Grad-CAM time and size per model")
    p.add_argument("--models", help="comma-separated names (default: all)")
    p.add_argument("--threads", type=int)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--image", help="time on this image instead of a generated 600x450 one")
    p.add_argument("--json", action="store_true")
    return ap


def _check_args(args) -> None:
    """The engine's own bounds, checked before any model or data is touched."""
    if getattr(args, "temperature", None) is not None:
        checks.temperature(args.temperature)
    if getattr(args, "threshold", None) is not None:
        checks.threshold(args.threshold)
    if getattr(args, "band", None) is not None:
        checks.band(args.band)
    for name in ("threads", "runs"):
        if getattr(args, name, None) is not None:
            checks.positive_int(name, getattr(args, name))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    reg = Registry(args.weights)
    handlers = {"models": cmd_models, "predict": cmd_predict, "evaluate": cmd_evaluate,
                "calibrate": cmd_calibrate, "benchmark": cmd_benchmark, "compress": cmd_compress, "export": cmd_export,
                "fuse": cmd_fuse,
                "train-teacher": lambda a, r: cmd_train(a, r, "teacher"),
                "distill": lambda a, r: cmd_train(a, r, "student")}
    try:
        _check_args(args)
        return handlers[args.command](args, reg)
    except USER_ERRORS as exc:
        msg = one_line(str(exc).strip())[:1000] or type(exc).__name__  # a newline in a path must not cut it
        print(f"skinapp: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skinapp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
