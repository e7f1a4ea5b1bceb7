#!/usr/bin/env python3
"""README's, docs' and the Models page's model tables, rebuilt from the cards (and, with --data, the paired
comparisons: each distilled student against its no-KD control and against its teacher, on the same test images).

    .venv/bin/python scripts/honest_tables.py --data ../shared/data/isic9 --write

Every number comes from a card or from `evaluate --against` run now; nothing is typed in by hand. --write puts
the tables between the `<!-- models-table -->` / `<!-- paired-table -->` markers of README.md and
docs/experiments.md and writes docs/results/paired.json (read by the Models page).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from skinapp.registry import ModelCard, Registry  # noqa: E402

PAIRED_JSON = ROOT / "docs" / "results" / "paired.json"
DOCS = (ROOT / "README.md", ROOT / "docs" / "experiments.md")


def _num(v) -> str:
    """A number the card may not have (a copy made before copies measured their own ECE at T = 1): a dash."""
    return "—" if v is None else f"{v:.3f}"


def _ci(v) -> str:
    return f"[{v[0]:.3f}, {v[1]:.3f}]" if v else ""


def model_rows(cards: list[ModelCard]) -> list[str]:
    out = ["| model | role | runtime | params | size | val AUC | test AUC [95% CI] | test sens@spec80 [95% CI] | "
           "test ECE (T = 1 → fitted T) | T | split |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in cards:
        t = c.test_metrics
        name = f"`{c.name}`" + (" (default)" if c.default else "")
        if t:
            test = (f"{t['auc']:.3f} {_ci(t.get('auc_ci'))}", f"{t['sens_at_spec80']:.3f} "
                    f"{_ci(t.get('sens_at_spec80_ci'))}", f"{_num(t.get('ece_before'))} → {t['ece']:.3f}",
                    f"locked test, n = {t['n']}")
        else:
            test = ("—", "—", "—", f"none: made before the locked test split (val n = {c.metrics.get('n')})")
        out.append(f"| {name} | {c.role} | {c.runtime} {c.precision} | {c.params:,} | {c.file_bytes / 1e6:.2f} MB | "
                   f"{c.metrics['auc']:.3f} | "
                   f"{test[0]} | {test[1]} | {test[2]} | {c.temperature:.2f} | {test[3]} |")
    return out


def same_split(a: ModelCard, b: ModelCard) -> bool:
    da, db = a.data.get("digests"), b.data.get("digests")
    return bool(da and db and da.get("test") == db.get("test"))


def _copy(c: ModelCard) -> bool:
    """An fp16 or ONNX copy: judged against its source in its own card, not paired again."""
    return bool(c.source) or "compression" in c.metrics


def pairs(cards: list[ModelCard]) -> list[tuple[ModelCard, ModelCard, str]]:
    """(student, reference, relation): each distilled student against its control (same network, input size,
    no teacher) and its teacher, where both were made under the same locked test split."""
    by_name = {c.name: c for c in cards}
    out = []
    for s in cards:
        if s.role != "student" or not s.teacher or _copy(s):
            continue
        controls = [c for c in cards if c.role == "student" and not c.teacher and c.arch == s.arch
                    and c.input_size == s.input_size and not _copy(c)]
        for c in controls:
            if same_split(s, c):
                out.append((s, c, "vs its no-KD control"))
        t = by_name.get(s.teacher)
        if t is not None and same_split(s, t):
            out.append((s, t, "vs its teacher"))
    return out


def compare_all(cards: list[ModelCard], data: str) -> list[dict]:
    from skinapp.data import scan_dataset
    from skinapp.inference import Predictor, compare_on_dataset

    reg, rows = Registry(), []
    for a, b, relation in pairs(cards):
        ds = scan_dataset(data, a.task)
        r = compare_on_dataset(Predictor.from_registry(a.name, reg), Predictor.from_registry(b.name, reg), ds,
                               "auto")
        rows.append({"relation": relation} | {k: r[k] for k in ("model_a", "model_b", "split", "n", "n_positive",
                                                                 "auc_a", "auc_b", "delta_auc", "delta_auc_ci",
                                                                 "p_delong")})
        print(f"{a.name} {relation} ({b.name}): {r['delta_auc']:+.4f} {r['delta_auc_ci']}", file=sys.stderr)
    return rows


def paired_rows(rows: list[dict]) -> list[str]:
    """The paired table; AUCs at the four places the comparison stores (rounded again to three, 0.86746 stored as
    0.8675 read 0.868 beside the models table's 0.867)."""
    out = ["| student | compared with | split (n) | AUC | ΔAUC [95% paired bootstrap] | DeLong p |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| `{r['model_a']}` | `{r['model_b']}` ({r['relation'][3:]}) | {r['split']} ({r['n']}) | "
                   f"{r['auc_a']:.4f} vs {r['auc_b']:.4f} | {r['delta_auc']:+.3f} [{r['delta_auc_ci'][0]:+.3f}, "
                   f"{r['delta_auc_ci'][1]:+.3f}] | {r['p_delong']:.2g} |")
    if len(out) == 2:
        out.append("| — | no distilled student shares a locked test split with its control or teacher yet | | | | |")
    return out


def put(path: Path, marker: str, lines: list[str]) -> None:
    text = path.read_text()
    pat = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.S)
    if not pat.search(text):
        print(f"{path.name}: no {marker} markers; skipped", file=sys.stderr)
        return
    path.write_text(pat.sub(lambda m: m.group(1) + "\n".join(lines) + "\n" + m.group(2), text))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="the models' dataset: also compute the paired comparisons")
    ap.add_argument("--write", action="store_true", help="update README.md, docs/experiments.md, paired.json")
    args = ap.parse_args()
    cards = Registry().cards()
    models = model_rows(cards)
    print("\n".join(models) + "\n")
    paired = compare_all(cards, args.data) if args.data else None
    shown = paired if paired is not None else (json.loads(PAIRED_JSON.read_text()) if PAIRED_JSON.exists() else None)
    if shown is not None:  # without --data, the stored comparisons (the table's format may have changed)
        print("\n".join(paired_rows(shown)))
    if args.write:
        for doc in DOCS:
            put(doc, "models-table", models)
            if shown is not None:
                put(doc, "paired-table", paired_rows(shown))
        if paired is not None:
            PAIRED_JSON.parent.mkdir(parents=True, exist_ok=True)
            PAIRED_JSON.write_text(json.dumps(paired, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
