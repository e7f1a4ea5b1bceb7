#!/usr/bin/env python3
"""Store the whole ROC in every card of a registry, from the same probabilities its metrics came from.

    .venv/bin/python scripts/full_roc.py --data ../shared/data/isic9 [--weights DIR] [--only a,b]

Cards written before 3 December (sixth session) kept a ROC thinned to 101 points after sklearn's
``drop_intermediate``, so the sensitivity/specificity the pages read off it at a threshold could be several points
off (the default student at 0.5: 66% against its true 72%). This recomputes each card's validation and locked
test probabilities at its own temperature and replaces only ``roc`` in ``metrics`` and ``test_metrics``; weights,
temperature and every other number stay. It refuses a card whose recomputed AUC differs from the stored one by
more than 1e-6, or whose stored points are not all on the new curve (different probabilities, not a finer curve).
One line of JSON per card.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from skinapp.data import decode_dataset, scan_dataset  # noqa: E402
from skinapp.evaluation import full_roc  # noqa: E402
from skinapp.inference import Predictor, split_logits  # noqa: E402
from skinapp.registry import ModelCard, Registry  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from card_args import cards_from_arguments  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402


def _on_curve(old: dict, new: dict) -> bool:
    """Every stored (fpr, tpr) point (rounded to 5 decimals when stored) is a point of the new curve."""
    fpr, tpr = np.asarray(new["fpr"]), np.asarray(new["tpr"])
    return all(np.any((abs(fpr - f) <= 6e-6) & (abs(tpr - t) <= 6e-6)) for f, t in zip(old["fpr"], old["tpr"]))


def whole_roc(pred: Predictor, ds, decoded, split: str, stored: dict) -> dict | None:
    """The split's whole ROC at the card's temperature, checked against what the card already says of it."""
    if not stored.get("roc"):
        return None
    sd = split_logits(pred, ds, split, decoded)
    if sd.selection.split != split:
        raise SystemExit(f"{pred.card.name}: {ds.root} has no {split} split for it ({sd.selection.note})")
    p = pred.probabilities(sd.logits).numpy()
    auc = float(roc_auc_score(sd.y, p))
    roc = full_roc(sd.y, p)
    if abs(auc - stored["auc"]) > 1e-6 or not _on_curve(stored["roc"], roc):
        raise SystemExit(f"{pred.card.name} {split}: AUC {auc:.6f} against the card's {stored['auc']:.6f}, or its "
                         f"stored ROC points are not on the recomputed curve: not the same probabilities")
    return roc


def update(reg: Registry, card: ModelCard, data: str, decoded_by_size: dict) -> dict:
    ds = scan_dataset(data, card.task, None, None)
    if card.input_size not in decoded_by_size:  # decoded once per input size, for every card of that size
        decoded_by_size[card.input_size] = decode_dataset(ds, card.input_size)
    decoded = decoded_by_size[card.input_size]
    pred = Predictor.from_registry(card.name, reg)
    val = whole_roc(pred, ds, decoded, "val", card.metrics)
    test = whole_roc(pred, ds, decoded, "test", card.test_metrics)
    changes = {}
    if val is not None:
        changes["metrics"] = card.metrics | {"roc": val}
    if test is not None:
        changes["test_metrics"] = card.test_metrics | {"roc": test}
    if changes:
        reg.update(card.name, **changes)
    return {"model": card.name, "val_points": (len(card.metrics.get("roc", {}).get("fpr", [])), len(val["fpr"]))
            if val else None, "test_points": (len(card.test_metrics["roc"]["fpr"]), len(test["fpr"])) if test else None}


def main() -> int:
    args, reg, cards = cards_from_arguments(__doc__)
    decoded: dict = {}
    for card in cards:
        print(json.dumps(update(reg, card, args.data, decoded)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
