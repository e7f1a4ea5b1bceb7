#!/usr/bin/env python3
"""How far each model's fit on its training photos is from its fit on photos it never saw, and how peaked the
targets a teacher hands its students are: the diagnosis for a distilled student that falls below its control.

    .venv/bin/python scripts/generalisation_gap.py --data ../shared/data/isic9 --weights runs/kdvc-lite012 \\
        --models lite0-tiny-180px-init-kd-s0,lite0-tiny-180px-nokd-s0 --teacher teacher-lite012 -T 20

Per model, on its own split (plain evaluation preprocessing, no augmentation): AUC on the training, validation
and locked test photos, and the mean confidence (probability of the predicted class, T = 1) on training and
validation photos. For ``--teacher``: the same, and on the training photos the share of its softened (T)
benign/malignant targets that are near one-hot (> 0.95), i.e. targets that carry no more than the label.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sklearn.metrics import roc_auc_score  # noqa: E402

from skinapp.data import decode_dataset, scan_dataset  # noqa: E402
from skinapp.inference import Predictor, split_logits  # noqa: E402
from skinapp.registry import Registry  # noqa: E402


def fit(p: Predictor, sd, temperature: float = 1.0) -> dict:
    prob = p.probabilities(sd.logits, temperature).numpy()
    conf = np.maximum(prob, 1 - prob)
    return {"auc": float(roc_auc_score(sd.y, prob)), "confidence": float(conf.mean()),
            "one_hot_share": float((conf > 0.95).mean()), "n": int(len(sd.y))}


def gap(p: Predictor, ds, decoded_by_size: dict, temperature: float | None) -> dict:
    size = p.card.input_size
    if size not in decoded_by_size:
        decoded_by_size[size] = decode_dataset(ds, size)
    parts = {s: split_logits(p, ds, s, decoded_by_size[size]) for s in ("train", "val", "test")}
    row = {"model": p.card.name, "input_size": size} | {s: fit(p, sd) for s, sd in parts.items()}
    if temperature is not None:
        row["train_softened"] = fit(p, parts["train"], temperature)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", help="registry folder (default: weights/)")
    ap.add_argument("--models", required=True, help="comma-separated students")
    ap.add_argument("--teacher")
    ap.add_argument("-T", "--temperature", type=float, default=20.0, help="the distillation temperature")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    reg = Registry(args.weights)
    ds, decoded, rows = None, {}, []
    names = args.models.split(",") + ([args.teacher] if args.teacher else [])  # the slow teacher last
    for name in names:
        p = Predictor.from_registry(name, reg)
        ds = ds or scan_dataset(args.data, p.card.task)
        rows.append(gap(p, ds, decoded, args.temperature if name == args.teacher else None))
        r = rows[-1]
        extra = (f"; softened at T={args.temperature:g}: {r['train_softened']['one_hot_share']:.2f} of training "
                 f"targets near one-hot" if "train_softened" in r else "")
        print(f"{name:34s} {r['input_size']:>3} px  AUC train {r['train']['auc']:.3f} val {r['val']['auc']:.3f} "
              f"test {r['test']['auc']:.3f}  confidence train {r['train']['confidence']:.3f} "
              f"val {r['val']['confidence']:.3f}{extra}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
