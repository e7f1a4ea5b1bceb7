"""What the scripts that walk a registry's cards share (``remeasure_cards.py``, ``full_roc.py``): their arguments
--data, --weights and --only, and the registry and cards those name."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from skinapp.registry import ModelCard, Registry  # noqa: E402


def cards_from_arguments(doc: str) -> tuple[argparse.Namespace, Registry, list[ModelCard]]:
    """Parse the command line of a script whose docstring is ``doc``: (arguments, registry, the cards named)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", help="registry folder (default: SKINAPP_WEIGHTS or weights/)")
    ap.add_argument("--only", help="comma-separated card names (default: every card)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    reg = Registry(args.weights) if args.weights else Registry()
    cards = reg.cards()
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        cards = [c for c in cards if c.name in wanted]
    return args, reg, cards
