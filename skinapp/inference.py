"""Prediction for one image, many images or a dataset folder, with the model card's own preprocessing."""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import checks
from .data import DatasetError, DecodedData, LesionDataset, decode_dataset, model_input, to_tensor
from .evaluation import (binary_metrics, bootstrap_ci, ece_null, ece_score, grouped_probs, paired_comparison,
                         reliability_bins, subgroup_metrics)
from .protocol import Selection, SplitSpec, fit_and_report, select, subgroup_attributes
from .models import fold_batchnorm, model_lock
from .imageio import ImageSource, InvalidImageError, is_image_file, load_image, one_line
from .registry import ModelCard, Registry, RegistryError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    source: str
    model: str
    probabilities: dict[str, float]  # task labels -> probability, e.g. benign / malignant
    p_positive: float
    label: str
    temperature: float
    latency_ms: float  # preprocess + forward

    def as_dict(self) -> dict:
        return {"image": self.source, "model": self.model, "label": self.label,
                "probabilities": self.probabilities, "p_positive": round(self.p_positive, 6),
                "temperature": self.temperature, "latency_ms": round(self.latency_ms, 3)}



class InferenceError(ValueError):
    """A model gave no usable output (NaN) for a photo: a broken model, never a verdict."""

class Predictor:
    """A loaded model and its card. Read-only after construction, so one instance can serve many users."""

    def __init__(self, model: nn.Module, card: ModelCard, registry: Registry | None = None):
        self.card = card
        self.positive = card.positive_indices
        self.onnx = card.runtime == "onnx"
        # channels-last lets oneDNN pick its fast convolution kernels on the CPU (measured: dsnet forward
        # 3.4 ms -> 1.8 ms on 2 threads), and folded BatchNorms save a layer each; done once here, before the
        # model is shared. An ONNX Runtime session has made its own such choices.
        self.model = model if self.onnx else fold_batchnorm(model, card.input_size).to(
            memory_format=torch.channels_last)
        self.registry = registry
        self._cam: nn.Module | None = None
        self._cam_lock = threading.Lock()

    @classmethod
    def from_registry(cls, name: str, registry: Registry | None = None, threads: int | None = None) -> "Predictor":
        registry = registry or Registry()
        return cls(*registry.load(name, threads), registry=registry)

    def cam_model(self) -> nn.Module:
        """The PyTorch network Grad-CAM runs on: this model, or for an ONNX copy the model it was made from
        (loaded on first use and kept), since gradients need PyTorch."""
        if not self.onnx:
            return self.model
        with self._cam_lock:
            if self._cam is None:
                source = self.cam_source()
                try:
                    self._cam = Predictor.from_registry(source, self.registry).model
                except RegistryError as exc:
                    raise self._source_error(exc) from None
            return self._cam

    def cam_source(self) -> str:
        """The registered model an ONNX copy's activation maps run on, checked without loading it (cheap: a page
        refuses a copy without it at once, by name, and loads the source itself in the background)."""
        if self.registry is None or not self.card.source:
            raise RegistryError(f"model {self.card.name!r} is an ONNX copy whose source model is not known here, so "
                                f"it has no Grad-CAM")
        try:
            self.registry.get(self.card.source)
        except RegistryError as exc:
            raise self._source_error(exc) from None
        return self.card.source

    def _source_error(self, exc: RegistryError) -> RegistryError:
        return RegistryError(f"model {self.card.name!r} is an ONNX copy of {self.card.source!r}, the PyTorch model "
                             f"its activation maps run on, which cannot be loaded: {exc}")

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return to_tensor(img, self.card.input_size, self.card.mean, self.card.std)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.onnx:  # ONNX Runtime sessions are safe under concurrent calls: no lock
            return self.model(x)
        with model_lock(self.model), torch.inference_mode():
            return self.model(x.contiguous(memory_format=torch.channels_last))

    def probabilities(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        t = self.card.temperature if temperature is None else checks.temperature(temperature)
        return grouped_probs(logits, self.positive, t)

    def predict_image(self, img: Image.Image, temperature: float | None = None, threshold: float = 0.5,
                      source: str = "image") -> Prediction:
        t0 = time.perf_counter()
        logits = self.logits(self.preprocess(img))
        latency = (time.perf_counter() - t0) * 1000
        return self.to_prediction(logits[0], temperature, threshold, source, latency)

    def to_prediction(self, logits: torch.Tensor, temperature: float | None, threshold: float, source: str,
                      latency_ms: float) -> Prediction:
        t = self.card.temperature if temperature is None else checks.temperature(temperature)
        threshold = checks.threshold(threshold)
        p = float(self.probabilities(logits.unsqueeze(0), t)[0])
        if not math.isfinite(p):  # NaN would fall to the negative label: a verdict nobody computed
            raise InferenceError(f"model {self.card.name!r} gave no probability for {one_line(source)} (NaN); its "
                                 f"weights or card are broken")
        neg, pos = self.card.task_labels
        return Prediction(source, self.card.name, {neg: 1 - p, pos: p}, p, pos if p >= threshold else neg,
                          t, latency_ms)

    def predict(self, source: ImageSource, temperature: float | None = None, threshold: float = 0.5,
                name: str | None = None) -> Prediction:
        """Load (raises InvalidImageError) and predict one image."""
        label = name or (str(source) if isinstance(source, (str, Path)) else "upload")
        return self.predict_image(load_image(source, name=name), temperature, threshold, label)

    def batch_logits(self, images01: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Logits for a float [0,1] batch already square, resized here to the card's size."""
        out = []
        for i in range(0, len(images01), batch_size):
            x = model_input(images01[i:i + batch_size], self.card.input_size, self.card.mean, self.card.std)
            out.append(self.logits(x))
        return torch.cat(out) if out else torch.empty(0, len(self.card.label_names))


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders expanded to their images, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if is_image_file(q)))
        else:
            out.append(p)
    return out


def predict_paths(predictor: Predictor, paths: Iterable[str | Path], temperature: float | None = None,
                  threshold: float = 0.5) -> list[Prediction | InvalidImageError]:
    """One result per image; a bad file yields its error in place, the rest are still predicted."""
    results: list[Prediction | InvalidImageError] = []
    for p in expand_inputs(paths):
        try:
            results.append(predictor.predict(p, temperature, threshold, name=str(p)))
        except InvalidImageError as exc:
            results.append(exc)
    return results


@dataclass(frozen=True)
class SplitData:
    logits: torch.Tensor
    y: np.ndarray
    skipped: int
    selection: Selection
    paths: list[Path]


def dataset_logits(predictor: Predictor, decoded: DecodedData, index: np.ndarray) -> torch.Tensor:
    return predictor.batch_logits(decoded.images[torch.as_tensor(index, dtype=torch.long)].float() / 255.0)


def split_logits(predictor: Predictor, ds: LesionDataset, split: str = "auto",
                 decoded: DecodedData | None = None) -> SplitData:
    """Logits and task targets on a part of the card's own split of a dataset folder (see ``protocol.select``)."""
    card = predictor.card
    decoded = decoded or decode_dataset(ds, card.input_size)
    sel = select(card.data, card.split_seed, card.name, decoded, split)
    y = decoded.targets[torch.as_tensor(sel.index, dtype=torch.long)].numpy()
    paths = [decoded.paths[i] for i in sel.index]
    return SplitData(dataset_logits(predictor, decoded, sel.index), y, len(decoded.skipped), sel, paths)


def evaluate_dataset(predictor: Predictor, ds: LesionDataset, split: str = "auto", threshold: float = 0.5,
                     temperature: float | None = None, n_boot: int = 1000,
                     decoded: DecodedData | None = None, reliability: bool = False) -> dict:
    """Metrics with 95% bootstrap intervals on a dataset folder: by default the model's locked test split when
    the folder is its own data, else all of it; ``note`` says which and why. ``decoded``: the folder already
    decoded at the card's input size, to evaluate several models without decoding it again. ``reliability``:
    also ECE and reliability bins at T = 1 and at the temperature used, as a card shows them."""
    card = predictor.card
    sd = split_logits(predictor, ds, split, decoded)
    if sd.selection.split != "test":
        log.warning("%s", sd.selection.note)
    p = predictor.probabilities(sd.logits, temperature).numpy()
    metrics = binary_metrics(sd.y, p, checks.threshold(threshold), ds.labels)
    metrics.update(model=card.name, split=sd.selection.split, note=sd.selection.note, skipped=sd.skipped,
                   data=str(ds.root), ece_null=ece_null(p),
                   temperature=card.temperature if temperature is None else temperature,
                   auc_ci=bootstrap_ci(sd.y, p, "auc", n_boot),
                   sens_at_spec80_ci=bootstrap_ci(sd.y, p, "sens_at_spec80", n_boot))
    if reliability:
        before = predictor.probabilities(sd.logits, 1.0).numpy()
        metrics.update(ece_before=ece_score(sd.y, before), ece_after=metrics["ece"],
                       reliability_before=reliability_bins(sd.y, before), reliability=reliability_bins(sd.y, p))
    attrs = subgroup_attributes(ds, sd.paths)
    if attrs:
        metrics["subgroups"] = subgroup_metrics(sd.y, p, attrs, n_boot=n_boot)
    return metrics


def own_validation(predictor: Predictor, ds: LesionDataset, decoded: DecodedData, doing: str):
    """The model's validation split of ``ds``: a copy or calibration judged on a folder the model was not trained
    on would write that folder's numbers into the card as its own, so such a folder is refused."""
    val = split_logits(predictor, ds, "val", decoded)
    if val.selection.split != "val":
        raise DatasetError(f"{ds.root} is not {predictor.card.name}'s own data ({val.selection.note}); {doing} with "
                           f"the folder it was trained on")
    return val


def calibrate_on_split(predictor: Predictor, ds: LesionDataset) -> tuple[float, dict, dict]:
    """Fit the temperature on the model's validation split, report on its locked test split (none for a card
    made before it: then {}); the folder must be the model's own data."""
    decoded = decode_dataset(ds, predictor.card.input_size)
    val = own_validation(predictor, ds, decoded, "calibrate")
    test = split_logits(predictor, ds, "test", decoded) if SplitSpec.of(predictor.card.data,
                                                                        predictor.card.split_seed) else None
    return fit_and_report(val.logits, val.y, test.logits if test else None, test.y if test else None,
                          predictor.positive, ds.labels, subgroup_attributes(ds, test.paths) if test else None)


def compare_on_dataset(a: Predictor, b: Predictor, ds: LesionDataset, split: str = "auto",
                       n_boot: int = 1000) -> dict:
    """Two models on the same images (A's selection): ΔAUC with its paired bootstrap interval and DeLong's p."""
    sa = split_logits(a, ds, split)
    decoded = decode_dataset(ds, b.card.input_size)
    if [decoded.paths[i] for i in sa.selection.index] != sa.paths:
        raise DatasetError(f"models {a.card.name!r} and {b.card.name!r} read different images of {ds.root}")
    pa = a.probabilities(sa.logits).numpy()
    pb = b.probabilities(dataset_logits(b, decoded, sa.selection.index)).numpy()
    out = paired_comparison(sa.y, pa, pb, n_boot=n_boot)
    return {"model_a": a.card.name, "model_b": b.card.name, "data": str(ds.root), "split": sa.selection.split,
            "note": sa.selection.note} | out
