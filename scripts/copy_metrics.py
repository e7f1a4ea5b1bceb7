#!/usr/bin/env python3
"""Re-measure the cards of a registry's copies (fp16, ONNX fp32, ONNX int8) on their sources' splits, leaving
the copies' files as they are: what ``compress`` and ``export`` write into a new copy's card, for copies made
before it changed (3 December, seventh session: a copy's reliability bins and ECE before/after are now its own,
on validation and on the locked test split, instead of its source's validation ones).

    .venv/bin/python scripts/copy_metrics.py --data ../shared/data/isic9 [--weights DIR] [--only a,b]

One line of JSON per copy: its validation and test AUC before and after (equal unless the copy computes
differently than when it was made), and the card fields that changed.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from skinapp.compress import copy_metrics  # noqa: E402
from skinapp.data import decode_dataset, scan_dataset  # noqa: E402
from skinapp.inference import Predictor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from card_args import cards_from_arguments  # noqa: E402


def changed(old: dict, new: dict) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def main() -> int:
    args, reg, cards = cards_from_arguments(__doc__)
    named = {n.strip() for n in args.only.split(",")} if args.only else set()
    for name in sorted(named - {c.name for c in cards if c.source}):
        print(f"skipped {name}: " + ("not a copy" if name in {c.name for c in cards} else "not registered"),
              file=sys.stderr)
    decoded = {}
    for card in (c for c in cards if c.source):
        t0 = time.time()
        source, copy = Predictor.from_registry(card.source, reg), Predictor.from_registry(card.name, reg)
        ds = scan_dataset(args.data, card.task)
        key = (card.task, card.input_size)
        if key not in decoded:
            decoded[key] = decode_dataset(ds, card.input_size)
        updates = copy_metrics(source, copy, ds, decoded[key])
        if "compression" in card.metrics:  # compress keeps its change beside the sizes (compress_model)
            updates["metrics"]["compression"] = card.metrics["compression"] | {
                "change": updates["metrics"].pop("change")}
        new = reg.update(card.name, **updates)
        print(json.dumps({"model": card.name, "val_auc": [card.metrics["auc"], new.metrics["auc"]],
                          "test_auc": [card.test_metrics.get("auc"), new.test_metrics.get("auc")],
                          "metrics_changed": changed(card.metrics, new.metrics),
                          "test_metrics_changed": changed(card.test_metrics, new.test_metrics),
                          "seconds": round(time.time() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
