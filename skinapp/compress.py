"""Copies of a registered model made for size or speed, each judged against its source on the source's split.

``compress_model``: a half-precision copy (Karim et al. 2024 quantise their student to 16 bits); weights stored
as float16 and computed in float32 on the CPU (fp16 arithmetic is slow there), so it halves the download and the
disk footprint. ONNX copies (``skinapp.export``) are measured by the same ``copy_metrics``.
"""
from __future__ import annotations

import dataclasses

from .data import DecodedData, LesionDataset, decode_dataset, scan_dataset
from .inference import Predictor, evaluate_dataset, own_validation
from .registry import ModelCard, Registry, RegistryError, check_name

COMPARED = ("auc", "accuracy", "balanced_accuracy", "sens_at_spec80", "ece")
KEPT = ("best_epoch",)  # the source's training fact; every measured number is the copy's own


def compress_model(registry: Registry, name: str, new_name: str, data: str, dtype: str = "float16",
                   label_map: str | None = None, overwrite: bool = False) -> ModelCard:
    if check_name(new_name) == name:  # with --overwrite the source's own weights would be replaced by the copy
        raise RegistryError(f"the copy needs a name of its own; {name!r} is its source's")
    model, card = registry.load(name)
    if card.runtime != "torch":
        raise RegistryError(f"model {name!r} is an ONNX Runtime copy; compress its source {card.source!r} instead")
    ds = scan_dataset(data, card.task, label_map)
    decoded = decode_dataset(ds, card.input_size)  # the copy has the same input size: decode the folder once
    source = Predictor(model, card)
    own_validation(source, ds, decoded, "compress")  # before anything is registered
    copy = dataclasses.replace(card, name=new_name, default=False, created="", source=name,
                               description=f"{dtype} copy of {name}. {card.description}".strip())
    new = registry.register(model, copy, overwrite=overwrite, dtype=dtype)
    updates = copy_metrics(source, Predictor.from_registry(new_name, registry), ds, decoded)
    updates["metrics"]["compression"] = {"source": name, "dtype": dtype, "source_bytes": card.file_bytes,
                                         "bytes": new.file_bytes, "ratio": round(card.file_bytes / new.file_bytes, 3),
                                         "change": updates["metrics"].pop("change")}
    return registry.update(new_name, **updates)


def copy_metrics(source: Predictor, copy: Predictor, ds: LesionDataset, decoded: DecodedData) -> dict:
    """The copy's card metrics on the source's validation split (and locked test split, where it has one), each
    with its change against the source on the same images; its reliability is measured on the copy (an int8
    copy's probabilities move by up to 0.1), not carried over from the source."""
    src_card = source.card
    before = evaluate_dataset(source, ds, split="val", n_boot=100, decoded=decoded)
    after = evaluate_dataset(copy, ds, split="val", n_boot=100, decoded=decoded, reliability=True)
    metrics = {k: v for k, v in after.items() if k not in ("model", "data", "note", "split", "subgroups")}
    metrics["change"] = {k: round(after[k] - before[k], 6) for k in COMPARED}
    for key in KEPT:
        if key in src_card.metrics:
            metrics.setdefault(key, src_card.metrics[key])
    updates: dict = {"metrics": metrics}
    if src_card.test_metrics:  # the copy is judged on the locked test split too, and its change there recorded
        test = evaluate_dataset(copy, ds, split="test", decoded=decoded, reliability=True)
        src = evaluate_dataset(source, ds, split="test", n_boot=100, decoded=decoded)
        updates["test_metrics"] = {k: v for k, v in test.items() if k not in ("model", "data")} | {
            "change": {k: round(test[k] - src[k], 6) for k in COMPARED}}
    return updates
