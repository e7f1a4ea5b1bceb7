"""``python -m skinapp export``: a registered model as an ONNX Runtime copy (fp32, or static int8), measured.

The copy is its own registry entry (``NAME.onnx`` + card with ``runtime: onnx``, ``source``, ``export``). It is
judged against its source on the source's own split: probabilities on real validation images (fp32 must agree
within ``PARITY``), AUC and the rest on validation and on the locked test split. int8 calibration reads
validation images only, never test ones.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from typing import Callable

import numpy as np
import torch

from .compress import copy_metrics
from .data import decode_dataset, model_input, scan_dataset
from .inference import Predictor, dataset_logits, own_validation
from .registry import ModelCard, Registry, RegistryError, check_name
from .runtime import DYNAMO_OPSET, INT8_SETTINGS, OPSET, Int8Quantizer, OnnxModel, export_graph, rename_graph

log = logging.getLogger(__name__)

PARITY = 1e-4  # the most an fp32 copy's probability may differ from its source's, on any validation image
CALIBRATION_IMAGES = 256
INT8_TOLERANCE = 0.005  # the most validation AUC an int8 copy may lose before convolutions are kept float
MAX_FLOAT = 8  # default limit of the convolutions the sensitivity search may keep float


class ExportError(RegistryError):
    """The model cannot be exported, or its copy does not agree with it."""


def export_model(registry: Registry, name: str, data: str, new_name: str | None = None, int8: bool = False,
                 label_map: str | None = None, metadata: str | None = None, overwrite: bool = False,
                 max_float: int = MAX_FLOAT) -> ModelCard:
    source = Predictor.from_registry(name, registry)
    card = source.card
    if source.onnx:
        raise ExportError(f"model {name!r} is already an ONNX copy; export its source {card.source!r} instead")
    new_name = check_name(f"{name}-onnx{'-int8' if int8 else ''}" if new_name is None else new_name)
    if new_name == name:  # with --overwrite the source's card would point at its own copy, its weights orphaned
        raise ExportError(f"the copy needs a name of its own; {name!r} is its source's")
    graph, written = _graph(source, name, new_name)  # first: an unexportable network fails before minutes of checks
    ds = scan_dataset(data, card.task, label_map, metadata)
    decoded = decode_dataset(ds, card.input_size)
    val = own_validation(source, ds, decoded, "export")
    info = {**written, "runtime": f"onnxruntime {_ort_version()}", "precision": "fp32"}
    if int8:
        graph, calib = _int8(graph, source, decoded, val, new_name, max_float)
        info |= {"precision": "int8", "quantisation": INT8_SETTINGS | calib}
    copy = dataclasses.replace(card, name=new_name, source=name, export=info, default=False,
                               description=f"ONNX Runtime {info['precision']} copy of {name}. {card.description}")
    registry.register_onnx(graph, copy, overwrite=overwrite)
    made = Predictor.from_registry(new_name, registry)
    parity = _parity(source, made, decoded, val.selection.index, val.logits)
    if not int8 and parity["max_abs_p"] > PARITY:
        registry.remove(new_name)
        raise ExportError(f"the ONNX copy of {name} differs from it by {parity['max_abs_p']:.2g} in probability "
                          f"(allowed {PARITY:g}); no copy was registered")
    updates = copy_metrics(source, made, ds, decoded)
    return registry.update(new_name, export=info | {"parity": parity}, **updates)


def _graph(source: Predictor, name: str, new_name: str) -> tuple[bytes, dict]:
    try:
        return export_graph(_plain(source.model), source.card.input_size, new_name)
    except torch.onnx.errors.OnnxExporterError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"model {name!r} cannot be exported to ONNX (TorchScript exporter at opset {OPSET}, "
                          f"dynamo exporter at opset {DYNAMO_OPSET}): {reason}; it keeps running in PyTorch"
                          ) from exc


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the predictor's network in the default memory format (the exporter traces strides too); the
    predictor keeps its channels-last one, which it goes on using to judge the copy."""
    return copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _int8(graph: bytes, source: Predictor, decoded, val, name: str, max_float: int) -> tuple[bytes, dict]:
    """Quantise on a seeded sample of validation images, recorded by count and digest; when the copy loses more
    than ``INT8_TOLERANCE`` validation AUC, keep float the convolutions that cost it most (``_keep_float``)."""
    pick, batches = calibration_images(source.card, decoded, val.selection.index)
    digest = hashlib.sha256("\n".join(decoded.hashes[i] for i in pick).encode()).hexdigest()[:16]
    info = {"calibration_images": int(len(pick)), "calibration_split": "validation", "calibration_digest": digest}
    with Int8Quantizer(graph) as quantizer:
        keep, search, made = _keep_float(quantizer, source, decoded, val, batches, max_float)
        info |= {"kept_float_convolutions": keep} | ({"sensitivity_search": search} if search else {})
        return rename_graph(made, name) if made else quantizer.quantize(batches, name, keep), info


def calibration_images(card: ModelCard, decoded, val_index: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The seeded sample of validation images an int8 copy is calibrated on (dataset indices, sorted) and their
    model inputs in batches of 32."""
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(val_index, size=min(CALIBRATION_IMAGES, len(val_index)), replace=False))
    return pick, [_inputs(card, decoded, pick[i:i + 32]) for i in range(0, len(pick), 32)]


def _inputs(card: ModelCard, decoded, index: np.ndarray) -> np.ndarray:
    return model_input(decoded.images[torch.as_tensor(index)].float() / 255.0, card.input_size, card.mean,
                       card.std).numpy()


def _keep_float(quantizer: Int8Quantizer, source: Predictor, decoded, val, batches: list[np.ndarray],
                max_float: int) -> tuple[list[str], dict | None, bytes | None]:
    """The convolutions to keep float, chosen by ``greedy_float`` on validation AUC (never test), with the graph
    quantised for that choice when the search made it (the best-scoring probe is kept, not quantised again)."""
    if max_float <= 0:
        return [], None, None
    x = [_inputs(source.card, decoded, val.selection.index[i:i + 64]) for i in range(0, len(val.y), 64)]
    best: dict = {"auc": -1.0}

    def score(keep: list[str]) -> float:
        graph = quantizer.quantize(batches, "probe", keep)
        model = OnnxModel(graph, 2)
        auc = _auc(source, val.y, torch.cat([model(torch.as_tensor(b)) for b in x]))
        if auc > best["auc"]:
            best.update(auc=auc, keep=list(keep), graph=graph)
        return auc

    keep, search = greedy_float(score, lambda: quantizer.candidates, _auc(source, val.y, val.logits), max_float)
    return keep, search, best["graph"] if best.get("keep") == keep else None


def greedy_float(raw: Callable[[list[str]], float], candidates: Callable[[], list[str]], target: float,
                 max_float: int, tolerance: float = INT8_TOLERANCE) -> tuple[list[str], dict]:
    """Greedy: each candidate's score when it alone stays float, then the best of them (those that help) added
    one at a time until the score is within ``tolerance`` of ``target`` or ``max_float`` are float. No single
    layer carries the loss in a small network, so one at a time is the cheapest search that finds a set.
    Returns the set that met the tolerance (else the best-scoring one seen) and the search's record."""
    memo: dict[tuple[str, ...], float] = {}  # the first step is the best single set, already scored

    def score(keep: list[str]) -> float:
        if tuple(keep) not in memo:
            memo[tuple(keep)] = raw(keep)
        return memo[tuple(keep)]

    kept, auc = [], score([])
    search = {"source_val_auc": round(target, 4), "tolerance": tolerance, "steps": [[[], round(auc, 4)]]}
    if target - auc <= tolerance:
        return [], search | {"met": True}
    single = {n: score([n]) for n in candidates()}
    for n in [n for n in sorted(single, key=single.get, reverse=True) if single[n] > auc][:max_float]:
        kept.append(n)
        auc = score(kept)
        search["steps"].append([list(kept), round(auc, 4)])
        log.info("int8: %d convolution(s) kept float, validation AUC %.4f (source %.4f)", len(kept), auc, target)
        if target - auc <= tolerance:
            break
    best = max(search["steps"], key=lambda s: s[1])
    return list(best[0]), search | {"met": target - best[1] <= tolerance}


def _auc(source: Predictor, y: np.ndarray, logits: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, source.probabilities(logits).numpy()))


def _parity(source: Predictor, copy: Predictor, decoded, index: np.ndarray, src_logits: torch.Tensor) -> dict:
    """How far the copy's outputs are from the source's on the same validation images."""
    logits = dataset_logits(copy, decoded, index)
    p_src, p_copy = source.probabilities(src_logits), copy.probabilities(logits)
    agree = ((p_src >= 0.5) == (p_copy >= 0.5)).float().mean()
    return {"images": int(len(index)), "split": "validation",
            "max_abs_p": float((p_src - p_copy).abs().max()), "max_abs_logit": float((src_logits - logits).abs().max()),
            "label_agreement": round(float(agree), 6)}
