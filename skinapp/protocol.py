"""The protocol every reported number stands on: a lesion-grouped train / validation / locked test split.

Validation makes every choice (best epoch, temperature, recipe); the test split is only ever reported. A card
records the split's parameters and a digest of each part, so a later run can tell whether a folder is the model's
own data (and evaluate its test split) or other data (evaluated whole), and never reports on images a model
trained on without saying so.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .data import (PHASH_THRESHOLD, PROTOCOL, DatasetError, DecodedData, LesionDataset, Split, legacy_split,
                   split_digest, split_indices)

log = logging.getLogger(__name__)

SPLITS = ("auto", "all", "train", "val", "test")


@dataclass(frozen=True)
class SplitSpec:
    val_frac: float = 0.2
    test_frac: float = 0.2
    seed: int = 0  # moves the validation split only
    test_seed: int = 0  # moves the test split; leave it alone, or every earlier test number is void

    def split(self, decoded: DecodedData) -> Split:
        return split_indices(decoded.diagnosis_idx.tolist(), decoded.groups, self.val_frac, self.seed,
                             self.test_frac, self.test_seed)

    @classmethod
    def of(cls, data: Mapping[str, Any], split_seed: int | None) -> "SplitSpec | None":
        """The spec a card was trained under; None for a card made before the locked test split."""
        if data.get("protocol") != PROTOCOL:
            return None
        return cls(float(data["val_frac"]), float(data["test_frac"]), int(split_seed or 0), int(data["test_seed"]))


def check_parts(ds: LesionDataset, decoded: DecodedData, split: Split, need_test: bool) -> None:
    """Training, validation (and test, when there is one) must each hold both classes: a model trained on one
    class (or on none: a QA probe's 20 photos with a 0.75 test fraction left 0 to train on) learns nothing, and
    nothing can be measured on a split without both."""
    for name in ("train", "val", "test") if need_test else ("train", "val"):
        idx = split.part(name)
        if len(set(decoded.targets[idx].tolist())) < 2:
            fix = ("lower the validation and test fractions" if name == "train" else f"raise the {name} fraction")
            raise DatasetError(f"dataset folder {ds.root}: the {name} split ({len(idx)} images) lacks "
                               f"{'both classes' if len(idx) == 0 else 'one class'}; add images or {fix}")


def split_record(ds: LesionDataset, decoded: DecodedData, spec: SplitSpec, split: Split) -> dict[str, Any]:
    """What a card keeps of its split: enough to recompute it and to recognise it."""
    meta = ds.metadata
    return {"protocol": PROTOCOL, "val_frac": spec.val_frac, "test_frac": spec.test_frac,
            "test_seed": spec.test_seed, "n_train": len(split.train), "n_val": len(split.val),
            "n_test": len(split.test), "split_digest": split_digest(decoded.hashes, split.val),
            "digests": {p: split_digest(decoded.hashes, split.part(p)) for p in ("train", "val", "test")},
            "grouping": {"metadata": str(meta.path) if meta else None, "id_column": meta.id_column if meta else None,
                         "images_with_id": decoded.n_with_id, "groups": len(set(decoded.groups)),
                         "near_duplicates": f"64-bit DCT perceptual hash, Hamming distance <= {PHASH_THRESHOLD}"}}


@dataclass(frozen=True)
class Selection:
    index: np.ndarray
    split: str  # the part actually evaluated: train, val, test or all
    note: str  # what a reader must know about these images ("" when nothing)


def select(card_data: Mapping[str, Any], split_seed: int | None, name: str, decoded: DecodedData,
           requested: str = "auto") -> Selection:
    """The images to evaluate a model on, and what they are.

    ``auto``: the model's locked test split when the folder is its own data, else the whole folder. A folder
    whose split digests differ from the card's is not the model's data as it was: it is evaluated whole.
    """
    if requested not in SPLITS:
        raise ValueError(f"unknown split {requested!r}; choose one of: {', '.join(SPLITS)}")
    everything = np.arange(len(decoded.targets))
    spec = SplitSpec.of(card_data, split_seed)
    if spec is None:
        return _select_legacy(card_data, split_seed, name, decoded, requested, everything)
    split = spec.split(decoded)
    digests = card_data.get("digests", {})
    own = all(digests.get(p) == split_digest(decoded.hashes, split.part(p)) for p in ("val", "test"))
    if not own:
        note = (f"this folder is not {name}'s training data as recorded in its card (split digests differ), so "
                f"all {len(everything)} images were evaluated")
        return Selection(everything, "all", note)
    if requested == "auto":
        return Selection(np.asarray(split.test), "test",
                         f"{name}'s locked test split: lesions it never trained on and nothing was chosen on")
    if requested == "all":
        return Selection(everything, "all", f"includes the {len(split.train)} images {name} trained on and the "
                                            f"{len(split.val)} it was tuned on: optimistic")
    notes = {"train": f"images {name} trained on: optimistic",
             "val": f"the validation split {name}'s epochs and temperature were chosen on: optimistic",
             "test": f"{name}'s locked test split"}
    return Selection(np.asarray(split.part(requested)), requested, notes[requested])


def _select_legacy(card_data, split_seed, name, decoded, requested, everything) -> Selection:
    """Cards made before the locked test split: two parts, grouped by identical bytes only."""
    train, val = legacy_split(decoded.diagnosis_idx.tolist(), decoded.hashes, float(card_data.get("val_frac", 0.2)),
                              int(split_seed or 0))
    own = card_data.get("split_digest") == split_digest(decoded.hashes, val)
    if not own:
        return Selection(everything, "all", f"this folder is not {name}'s training data as recorded in its card, "
                                            f"so all {len(everything)} images were evaluated")
    if requested == "test":
        raise DatasetError(f"model {name!r} was made before the locked test split: it has no test split and trained "
                           f"on images that other models' test splits hold; use --split val (also used to choose "
                           f"its epochs and temperature) or retrain it")
    if requested in ("auto", "val"):
        return Selection(np.asarray(val), "val", f"{name} predates the locked test split: its validation split "
                                                  f"(also used to choose its epochs and temperature; photos of one "
                                                  f"lesion may sit on both sides): optimistic")
    if requested == "train":
        return Selection(np.asarray(train), "train", f"images {name} trained on: optimistic")
    return Selection(everything, "all", f"includes the {len(train)} images {name} trained on: optimistic")


def subgroup_attributes(ds: LesionDataset, paths: Sequence) -> dict[str, list[str | None]]:
    """Sex, age band and body-site group of each image, where the metadata has them (else empty)."""
    from .evaluation import age_band, site_group

    meta = ds.metadata
    if meta is None:
        return {}
    rows = [meta.rows.get(p) or {} for p in paths]
    out = {"sex": [r.get("sex") or None for r in rows],
           "age": [age_band(r.get("age")) for r in rows],
           "site": [site_group(r.get("localization")) for r in rows]}
    return {k: v for k, v in out.items() if any(x is not None for x in v)}


def fit_and_report(val_logits, val_y, test_logits, test_y, positive: Sequence[int], labels: tuple[str, str],
                   attrs: Mapping[str, Sequence] | None = None) -> tuple[float, dict, dict]:
    """The temperature fitted on validation; validation metrics at it, and the test split's (with intervals,
    out-of-sample ECE and, where the metadata allows, subgroups), or {} when there is no test split."""
    from .evaluation import calibrated_metrics, grouped_probs, subgroup_metrics

    has_test = test_logits is not None and len(test_y) > 0
    temp, metrics, test = calibrated_metrics(val_logits, val_y, positive, labels,
                                             test_logits if has_test else None, test_y if has_test else None)
    if has_test and attrs:
        test["subgroups"] = subgroup_metrics(test_y, grouped_probs(test_logits, positive, temp).numpy(), attrs)
    return temp, metrics, test or {}
