#!/usr/bin/env python3
"""Re-measure every card of a registry on its own data, as its make command would: after a change to what the
models see (the resize, 3 December), the numbers in the cards must come from the pixels the app now feeds them.

    .venv/bin/python scripts/remeasure_cards.py --data ../shared/data/isic9 [--weights DIR] [--only a,b]

Originals first (``calibrate``: the temperature refitted on validation, validation and locked-test metrics
rewritten, the weights untouched), then their copies from the re-measured sources: fp16 copies by ``compress``
(the same half-precision weights), ONNX copies by ``export`` (fp32: the graph exported again, its weights equal
to within float rounding, parity measured again; int8: quantised again on the validation images as they are now
decoded, with the usual sensitivity search). The default of each role is restored at the end. One line of JSON
per card, with its validation and test AUC before and after.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from skinapp.cli import main as cli  # noqa: E402
from skinapp.registry import ModelCard  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from card_args import cards_from_arguments  # noqa: E402


def command(card: ModelCard, data: str) -> list[str]:
    """The CLI command that re-measures ``card`` (see the module docstring)."""
    if not card.source:
        return ["calibrate", "--model", card.name, "--data", data]
    if card.runtime == "onnx":
        return ["export", "--model", card.source, "--name", card.name, "--data", data, "--overwrite"] + (
            ["--int8"] if card.precision == "int8" else [])
    return ["compress", "--model", card.source, "--name", card.name, "--data", data, "--overwrite",
            "--dtype", card.metrics["compression"]["dtype"]]


def main() -> int:
    args, reg, cards = cards_from_arguments(__doc__)
    defaults = {c.role: c.name for c in reg.cards() if c.default}
    where = ["--weights", str(reg.root)]
    for card in sorted(cards, key=lambda c: bool(c.source)):  # sources before the copies made from them
        t0 = time.time()
        before = card.test_metrics.get("auc")
        with contextlib.redirect_stdout(io.StringIO()):  # the command's own report; the line below sums it up
            status = cli(where + command(card, args.data) + ["--json"])
        if status != 0:
            raise SystemExit(f"re-measuring {card.name} failed: {' '.join(command(card, args.data))}")
        after = reg.get(card.name)
        print(json.dumps({"model": card.name, "test_auc_before": before, "test_auc_after": after.test_metrics.get("auc"),
                          "val_auc_before": card.metrics["auc"], "val_auc_after": after.metrics["auc"],
                          "temperature": [card.temperature, after.temperature], "sha256_same": card.sha256 == after.sha256,
                          "seconds": round(time.time() - t0, 1)}), flush=True)
    for role, name in defaults.items():
        if not reg.get(name).default:
            with contextlib.redirect_stdout(io.StringIO()):
                cli(where + ["models", "--set-default", name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
