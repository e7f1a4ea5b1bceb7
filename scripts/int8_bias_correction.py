#!/usr/bin/env python3
"""What bias correction does to an int8 copy: each source quantised with and without it, from the same
calibration images export uses, judged against the float source on validation (all of it, and the images not used
for calibration) and on the locked test split (reported once, not chosen on).

    .venv/bin/python scripts/int8_bias_correction.py --data ../shared/data/isic9 \
        --models lite0-tiny-128-kd,lite0-tiny-kd,dsnet-kd --out-json docs/results/int8_bias_correction.json

Each copy keeps float the convolutions its shipped int8 card keeps (none, today), so only the correction differs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from skinapp.data import decode_dataset, scan_dataset  # noqa: E402
from skinapp.evaluation import paired_comparison  # noqa: E402
from skinapp.export import _graph, calibration_images  # noqa: E402
from skinapp.inference import Predictor, dataset_logits, split_logits  # noqa: E402
from skinapp.registry import Registry  # noqa: E402
from skinapp.runtime import Int8Quantizer, OnnxModel  # noqa: E402


def agreement(source: Predictor, ref: torch.Tensor, logits: torch.Tensor, y: np.ndarray) -> dict:
    """How far a copy's task probabilities are from the source's on the same images, and the AUC change."""
    p, q = source.probabilities(ref), source.probabilities(logits)
    cmp = paired_comparison(y, q.numpy(), p.numpy())
    return {"n": int(len(y)), "delta_auc": cmp["delta_auc"], "delta_auc_ci": cmp["delta_auc_ci"],
            "max_abs_p": round(float((p - q).abs().max()), 4), "mean_abs_p": round(float((p - q).abs().mean()), 4),
            "label_agreement": round(float(((p >= 0.5) == (q >= 0.5)).float().mean()), 4)}


def one(reg: Registry, name: str, data: str) -> dict:
    source = Predictor.from_registry(name, reg)
    card = source.card
    ds = scan_dataset(data, card.task, None, None)
    decoded = decode_dataset(ds, card.input_size)
    val, test = (split_logits(source, ds, s, decoded) for s in ("val", "test"))
    pick, batches = calibration_images(card, decoded, val.selection.index)
    held = ~np.isin(val.selection.index, pick)
    shipped = reg.get(f"{name}-onnx-int8") if f"{name}-onnx-int8" in reg.names() else None
    keep = shipped.export["quantisation"]["kept_float_convolutions"] if shipped else []
    graph, _ = _graph(source, name, "probe")
    row = {"model": name, "kept_float": keep, "calibration_images": int(len(pick))}
    with Int8Quantizer(graph) as q:
        for corrected in (False, True):
            probe = Predictor(OnnxModel(q.quantize(batches, "probe", keep, bias_correction=corrected), 2),
                              dataclasses.replace(card, runtime="onnx"))
            lv, lt = (dataset_logits(probe, decoded, s.selection.index) for s in (val, test))
            row["corrected" if corrected else "plain"] = {
                "validation": agreement(source, val.logits, lv, val.y),
                "validation_not_calibrated_on": agreement(source, val.logits[held], lv[held], val.y[held]),
                "test": agreement(source, test.logits, lt, test.y)}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", default="lite0-tiny-128-kd,lite0-tiny-kd,dsnet-kd")
    ap.add_argument("--weights", help="registry folder (default: SKINAPP_WEIGHTS or weights/)")
    ap.add_argument("--out-json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    reg = Registry(args.weights) if args.weights else Registry()
    rows = []
    for name in args.models.split(","):
        rows.append(one(reg, name.strip(), args.data))
        print(json.dumps(rows[-1]), flush=True)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
