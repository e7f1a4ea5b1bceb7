"""Seed studies: a distillation variant against its no-KD control, summarised over seeds.

One row per (network, input size, variant) from the per-seed paired comparisons that
``scripts/kd_vs_control.py`` writes (``docs/results/kd_objectives*.json``). The script's markdown table and the
Models page read the same summary, so the two can never disagree.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

#: each KD objective against its control, 3 seeds, from the shipped teacher (docs/experiments.md)
OBJECTIVES_STUDY = Path(__file__).resolve().parents[1] / "docs" / "results" / "kd_objectives_lite012.json"
#: the logit objective at each temperature against its control: dsnet, 3 seeds, from the shipped teacher. Each file
#: is one batch of temperatures with the controls trained alongside it (the first on a GPU, the later ones on a CPU)
SWEEP_STUDIES = tuple(OBJECTIVES_STUDY.with_name(f"temperature_sweep_lite012{part}.json")
                      for part in ("", "_T3-50", "_T70-90"))
#: a study's variant name for each ``--kd`` objective (the study calls the logit objective "kd")
STUDY_VARIANT = {"logit": "kd", "attention": "attention", "relational": "relational",
                 "function-matching": "function-matching"}

PAIR_KEYS = ("arch", "seed", "auc_kd", "auc_control", "delta_auc", "delta_auc_ci")


class StudyError(ValueError):
    """A study file whose rows lack what a summary needs."""


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    if not values:
        raise StudyError("no values to summarise")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _check(rows: Sequence[Mapping[str, Any]]) -> None:
    for i, r in enumerate(rows):
        missing = [k for k in PAIR_KEYS if k not in r]
        if missing:
            raise StudyError(f"row {i} ({r.get('kd', '?')}) lacks {', '.join(missing)}; each row needs "
                             f"{', '.join(PAIR_KEYS)}")


def _optional_mean(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.mean(values) if len(values) == len(rows) else None


def summarise_pairs(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± sd over seeds for each (network, input size, variant), in the order the rows first name them.

    ``seeds_better`` counts the seeds whose paired 95% interval lies above zero and ``seeds_worse`` those below:
    a mean alone hides a gain that appears in one seed of three."""
    _check(rows)
    out = []
    groups = dict.fromkeys(_group(r) for r in rows)
    for arch, size, variant in groups:
        g = [r for r in rows if _group(r) == (arch, size, variant)]
        out.append({
            "network": arch, "image_size": size, "variant": variant, "seeds": len(g),
            "teacher": g[0].get("teacher"), "temperature": g[0].get("temperature"),
            "auc": mean_sd([r["auc_kd"] for r in g]), "auc_control": mean_sd([r["auc_control"] for r in g]),
            "delta_auc": mean_sd([r["delta_auc"] for r in g]),
            "deltas": [(r["delta_auc"], *r["delta_auc_ci"]) for r in g],
            "seeds_better": sum(r["delta_auc_ci"][0] > 0 for r in g),
            "seeds_worse": sum(r["delta_auc_ci"][1] < 0 for r in g),
            "sens_at_spec80": _pair_stat(g, "sens_at_spec80"), "ece": _pair_stat(g, "ece"),
            "val_auc": (_optional_mean(g, "val_auc_kd"), _optional_mean(g, "val_auc_control")),
            "train_s": _optional_mean(g, "train_s_kd"),
        })
    return out


def _group(row: Mapping[str, Any]) -> tuple[str, int | None, str]:
    """A row without a variant is the logit objective (the first studies recorded none)."""
    return row["arch"], row.get("image_size"), row.get("variant", "kd")


def _pair_stat(rows: Sequence[Mapping[str, Any]], name: str
               ) -> tuple[tuple[float, float], tuple[float, float]] | None:
    keys = (f"{name}_kd", f"{name}_control")
    if not all(isinstance(r.get(k), (int, float)) for r in rows for k in keys):
        return None
    return mean_sd([r[keys[0]] for r in rows]), mean_sd([r[keys[1]] for r in rows])


def load_study(path: Path | None = None) -> list[dict[str, Any]]:
    """The summary of a study file (default: ``OBJECTIVES_STUDY``), or nothing when the file is absent."""
    return summarise_pairs(load_rows([path or OBJECTIVES_STUDY]))


def measured(summary: Sequence[Mapping[str, Any]], objective: str) -> list[str]:
    """One line per network at its default input size: what ``objective`` did against its control."""
    variant = STUDY_VARIANT.get(objective)
    return [f"{s['network']}: ΔAUC {s['delta_auc'][0]:+.3f} over {s['seeds']} seed{'s' * (s['seeds'] != 1)} "
            f"({s['seeds_better']} better, {s['seeds_worse']} worse)"
            for s in summary if s["variant"] == variant and s["image_size"] is None]


def load_rows(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The rows of several study files that exist, each marked with its file: a study run in batches keeps each
    batch's file (and its own controls) as its command wrote it. The same run in two files is refused, since its
    seeds would silently count twice."""
    rows, seen = [], {}
    for path in paths:
        if not path.exists():
            continue
        for row in json.loads(path.read_text()):
            key = (*_group(row), row.get("seed"))
            if key in seen:
                raise StudyError(f"{key[2]} seed {key[3]} is in both {seen[key]} and {path.name}; keep it in one")
            seen[key] = path.name
            rows.append({**row, "study": path.name})
    return rows


def sweep(rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """A temperature sweep's rows by temperature, and the one a choice on validation makes (the highest mean
    validation AUC; None when a row lacks it): the only T a report may quote as "the chosen T"."""
    summary = summarise_pairs(rows)
    missing = [s["variant"] for s in summary if not isinstance(s["temperature"], (int, float))]
    if missing:
        raise StudyError(f"sweep rows of {', '.join(missing)} lack their temperature")
    summary.sort(key=lambda s: s["temperature"])
    chosen = (None if any(s["val_auc"][0] is None for s in summary) or not summary
              else max(summary, key=lambda s: s["val_auc"][0]))
    return summary, chosen
