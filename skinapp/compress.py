"""A half-precision copy of a registered model (Karim et al. 2024 quantise their student to 16 bits).

Weights are stored as float16 and computed in float32 on the CPU (fp16 arithmetic is slow there), so the copy
halves the download and the disk footprint; the accuracy change is measured on the source's validation split.
"""
from __future__ import annotations

import dataclasses

from .data import decode_dataset, scan_dataset
from .inference import Predictor, evaluate_dataset
from .registry import ModelCard, Registry

COMPARED = ("auc", "accuracy", "balanced_accuracy", "sens_at_spec80", "ece")


def compress_model(registry: Registry, name: str, new_name: str, data: str, dtype: str = "float16",
                   label_map: str | None = None, overwrite: bool = False) -> ModelCard:
    model, card = registry.load(name)
    ds = scan_dataset(data, card.task, label_map)
    decoded = decode_dataset(ds, card.input_size)  # the copy has the same input size: decode the folder once
    before = evaluate_dataset(Predictor(model, card), ds, split="val", n_boot=100, decoded=decoded)
    copy = dataclasses.replace(card, name=new_name, default=False, created="",
                               description=f"{dtype} copy of {name}. {card.description}".strip())
    new = registry.register(model, copy, overwrite=overwrite, dtype=dtype)
    after = evaluate_dataset(Predictor(*registry.load(new_name)), ds, split="val", n_boot=100, decoded=decoded)
    change = {k: round(after[k] - before[k], 6) for k in COMPARED}
    metrics = {k: v for k, v in after.items() if k not in ("model", "data", "note", "split", "subgroups")}
    metrics |= {"compression": {"source": name, "dtype": dtype, "source_bytes": card.file_bytes,
                                "bytes": new.file_bytes, "ratio": round(card.file_bytes / new.file_bytes, 3),
                                "change": change}}
    for key in ("reliability", "reliability_before", "ece_before", "ece_after", "best_epoch"):
        if key in card.metrics:
            metrics.setdefault(key, card.metrics[key])
    updates: dict = {"metrics": metrics}
    if card.test_metrics:  # the copy is judged on the locked test split too, and its change there recorded
        test = evaluate_dataset(Predictor(*registry.load(new_name)), ds, split="test", decoded=decoded)
        src = evaluate_dataset(Predictor(model, card), ds, split="test", n_boot=100, decoded=decoded)
        updates["test_metrics"] = {k: v for k, v in test.items() if k not in ("model", "data")} | {
            "change": {k: round(test[k] - src[k], 6) for k in COMPARED}}
    return registry.update(new_name, **updates)
