"""The model registry: a JSON model card plus safetensors weights per model, under one folder.

A card is the single source of truth for how to preprocess, label, explain and calibrate a model; pages and the
CLI read it and never hard-code any of that.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes, save_file
from torch import nn

from .explain import CAM_METHODS
from .models import build_fused, count_mflops, count_params, create_model, get_arch

log = logging.getLogger(__name__)

ROLES = ("teacher", "student")
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


class RegistryError(ValueError):
    pass


class UnknownModelError(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


class DuplicateModelError(RegistryError):
    pass


class ModelFileError(RegistryError):
    """A weights or card file is missing, altered or does not match its architecture."""


@dataclass(frozen=True)
class ModelCard:
    name: str
    role: str
    arch: str
    label_names: tuple[str, ...]  # the network's output classes (diagnoses or the two task labels)
    groups: tuple[str, ...]  # the task label each output class belongs to
    task: str = "malignant"
    task_labels: tuple[str, str] = ("benign", "malignant")
    input_size: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    cam_layer: str = ""  # one or more module names, comma-separated (their maps are averaged)
    cam_method: str = "gradcam"  # skinapp.explain.CAM_METHODS; cards written before it existed used Grad-CAM
    temperature: float = 1.0  # fitted on the validation split by NLL
    teacher: str | None = None
    kd: dict[str, Any] | None = None
    params: int = 0
    mflops: float = 0.0
    file_bytes: int = 0
    sha256: str = ""
    weights: str = ""
    dtype: str = "float32"
    split_seed: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # validation split: where every choice was made
    test_metrics: dict[str, Any] = field(default_factory=dict)  # locked test split: only reported (may be empty)
    train: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    default: bool = False
    description: str = ""
    fusion: dict[str, Any] | None = None  # a model fused from registered ones: members, sizes, views
    runtime: str = "torch"  # "onnx": the weights file is an ONNX graph run by ONNX Runtime
    source: str | None = None  # the registered model this copy was made from (Grad-CAM runs on it)
    export: dict[str, Any] | None = None  # how an ONNX copy was made: opset, runtime, quantisation, parity

    @property
    def precision(self) -> str:
        if self.export and self.export.get("precision"):
            return self.export["precision"]
        return "fp16" if self.dtype == "float16" else "fp32"

    @property
    def reported(self) -> tuple[str, dict[str, Any]]:
        """The split a reader should trust and its metrics: the locked test split when the card has one."""
        return ("test", self.test_metrics) if self.test_metrics else ("validation", self.metrics)

    @property
    def positive_indices(self) -> list[int]:
        return [i for i, g in enumerate(self.groups) if g == self.task_labels[1]]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            log.warning("model card %s: ignoring unknown fields %s", d.get("name"), unknown)
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("label_names", "groups", "task_labels", "mean", "std"):
            if k in kw:
                kw[k] = tuple(kw[k])
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in kw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ModelFileError(f"model card {d.get('name')!r} lacks required fields: {', '.join(missing)}")
        return cls(**kw)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Write via a temp file in the same folder, fsync, then rename: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the registry is read by other users (a server account)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_name(name: str) -> str:
    """A model name is also a file name: letters, digits, '-', '_' or '.', not starting with '.'."""
    if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "-_." for ch in name) \
            or name.startswith(".") or len(name) > 100:
        raise RegistryError(f"model name {name!r} must be 1-100 letters, digits, '-', '_' or '.', not starting "
                            f"with '.'")
    return name


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _written_here(weights: Path) -> bool:
    """A weights file ``register`` wrote: its metadata names the model after the file."""
    if weights.suffix == ".onnx":
        from .runtime import graph_name

        return graph_name(weights) == weights.stem
    try:
        with safe_open(str(weights), "pt") as f:
            return (f.metadata() or {}).get("name") == weights.stem
    except (SafetensorError, OSError):
        return False


def build_network(card: ModelCard) -> nn.Module:
    if card.fusion:
        return build_fused(card.fusion, len(card.label_names))
    return create_model(card.arch, num_classes=len(card.label_names), pretrained="none")


def model_summary(card: ModelCard) -> dict:
    """The fields every listing shows (CLI ``models --json`` and the app)."""
    return {"name": card.name, "role": card.role, "default": card.default, "arch": card.arch,
            "teacher": card.teacher, "params": card.params, "mflops": card.mflops, "file_bytes": card.file_bytes,
            "weights": card.weights, "input_size": card.input_size, "temperature": card.temperature,
            "dtype": card.dtype, "val_auc": card.metrics.get("auc"), "test_auc": card.test_metrics.get("auc"),
            "test_auc_ci": card.test_metrics.get("auc_ci"), "test_n": card.test_metrics.get("n"),
            "protocol": card.data.get("protocol", "legacy: no locked test split"), "task": card.task,
            "runtime": card.runtime, "precision": card.precision, "source": card.source}


@dataclass(frozen=True)
class BrokenEntry:
    """A card file that cannot be used, and why; every other model keeps working."""
    file: str
    name: str | None
    reason: str


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _texts(v: Any) -> bool:
    return isinstance(v, tuple) and all(isinstance(x, str) and x for x in v)


def _maybe(kind) -> Any:
    return lambda v: v is None or kind(v)


#: what each card field must hold, in the words of the refusal: a card that breaks one is listed as broken with
#: its reason (a hand-edited ``"temperature": 0`` or ``"metrics": null`` once broke every page that listed it)
FIELD_RULES: dict[str, tuple[Any, str]] = {
    "role": (lambda v: v in ROLES, f"one of {', '.join(ROLES)}"),
    "arch": (lambda v: isinstance(v, str) and bool(v), "an architecture name"),
    "label_names": (lambda v: _texts(v) and len(v) >= 2, "a list of two or more class names"),
    "groups": (_texts, "a list of task labels, one per class"),
    "task": (lambda v: isinstance(v, str), "text"),
    "task_labels": (lambda v: _texts(v) and len(v) == 2 and v[0] != v[1], "two different labels"),
    "input_size": (lambda v: _count(v) and 16 <= v <= 2048, "a whole number of pixels from 16 to 2048"),
    "mean": (lambda v: len(v) == 3 and all(map(_number, v)), "three numbers"),
    "std": (lambda v: len(v) == 3 and all(_number(x) and x > 0 for x in v), "three positive numbers"),
    "cam_layer": (lambda v: isinstance(v, str), "text"),
    "temperature": (lambda v: _number(v) and 0 < v <= 1000, "a number above 0 and at most 1000"),
    "teacher": (_maybe(lambda v: isinstance(v, str) and bool(v)), "a model name or null"),
    "source": (_maybe(lambda v: isinstance(v, str) and bool(v)), "a model name or null"),
    "kd": (_maybe(lambda v: isinstance(v, dict)), "an object or null"),
    "fusion": (_maybe(lambda v: isinstance(v, dict)), "an object or null"),
    "export": (_maybe(lambda v: isinstance(v, dict)), "an object or null"),
    "params": (_count, "a whole number, 0 or more"),
    "file_bytes": (_count, "a whole number, 0 or more"),
    "mflops": (lambda v: _number(v) and v >= 0, "a number, 0 or more"),
    "split_seed": (_maybe(lambda v: isinstance(v, int) and not isinstance(v, bool)), "a whole number or null"),
    "dtype": (lambda v: v in ("float32", "float16"), "float32 or float16"),
    "runtime": (lambda v: v in ("torch", "onnx"), "torch or onnx"),
    "default": (lambda v: isinstance(v, bool), "true or false"),
    **{k: (lambda v: isinstance(v, str), "text") for k in ("name", "sha256", "weights", "created", "description")},
    **{k: (lambda v: isinstance(v, dict), "an object") for k in ("data", "metrics", "test_metrics", "train")},
}
#: what the pages read from a card's metrics: numbers (or null) and [low, high] intervals
METRIC_NUMBERS = ("n", "n_positive", "threshold", "auc", "accuracy", "balanced_accuracy", "sensitivity",
                  "specificity", "sens_at_spec80", "threshold_at_spec80", "ece", "ece_before", "ece_after",
                  "temperature")
METRIC_INTERVALS = ("auc_ci", "sens_at_spec80_ci")


def _metrics_problem(m: dict) -> str | None:
    for k in METRIC_NUMBERS:
        if k in m and m[k] is not None and not _number(m[k]):
            return f"{k} must be a number or null, not {m[k]!r:.40}"
    for k in METRIC_INTERVALS:
        v = m.get(k)
        if v is not None and not (isinstance(v, list) and len(v) == 2 and all(map(_number, v))):
            return f"{k} must be [low, high] or null, not {v!r:.40}"
    roc = m.get("roc")
    if roc is not None:
        curves = [roc.get(k) for k in ("fpr", "tpr", "thresholds")] if isinstance(roc, dict) else [None]
        if not all(isinstance(c, list) and c and len(c) == len(curves[0]) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in c) for c in curves):
            return "roc must hold fpr, tpr and thresholds: lists of numbers of one length"
    for k in ("subgroups", "per_class", "change"):
        if m.get(k) is not None and not isinstance(m[k], dict):
            return f"{k} must be an object"
    null = m.get("ece_null")
    if null is not None and not (isinstance(null, dict) and _number(null.get("mean")) and _number(null.get("p95"))):
        return "ece_null must hold numbers mean and p95"
    for k in ("reliability", "reliability_before"):
        if m.get(k) is not None and not (isinstance(m[k], list) and all(
                isinstance(b, dict) and _number(b.get("confidence")) and _number(b.get("accuracy"))
                and _count(b.get("n")) for b in m[k])):
            return f"{k} must be a list of bins, each with confidence, accuracy and n"
    return None


def card_problem(card: ModelCard) -> str | None:
    """The first field of ``card`` that does not hold what the pages and the engine expect, in words; None if
    every one does."""
    for name, (ok, what) in FIELD_RULES.items():
        value = getattr(card, name)
        if not ok(value):
            return f"{name} must be {what}, not {value!r:.60}"
    if len(card.groups) != len(card.label_names) or not set(card.groups) <= set(card.task_labels):
        return f"groups must give one of {', '.join(card.task_labels)} for each of the {len(card.label_names)} classes"
    for split in ("metrics", "test_metrics"):
        problem = _metrics_problem(getattr(card, split))
        if problem:
            return f"{split}: {problem}"
    return None


def read_card(path: Path, root: Path) -> ModelCard:
    """One card file, checked: valid JSON object, every required field, named after its file, weights inside the
    registry folder (an absolute path or ``..`` could make the app read any file on the server)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path.name} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ModelFileError(f"{path.name} holds a JSON {type(raw).__name__}, not a model card")
    try:
        card = ModelCard.from_dict(raw)
    except TypeError as exc:
        raise ModelFileError(f"{path.name} has fields of the wrong kind ({exc})") from None
    problem = card_problem(card)
    if problem:
        raise ModelFileError(f"{path.name}: {problem}")
    if card.name != path.stem:
        raise ModelFileError(f"{path.name} names model {card.name!r}; a card must be saved as NAME.json "
                             f"(a copy or a duplicate name?)")
    if card.cam_method not in CAM_METHODS:  # found when the card is read, not photo by photo
        raise ModelFileError(f"{path.name}: activation-map method {card.cam_method!r} is not one of: "
                             f"{', '.join(CAM_METHODS)}")
    w = card.weights
    if not isinstance(w, str) or not w or Path(w).name != w or w in (".", "..") or "\\" in w:
        raise ModelFileError(f"{path.name}: weights {w!r} must be a file name inside the registry folder {root}")
    return card


class Registry:
    """Models by name, read from a folder of ``NAME.json`` cards and ``NAME.safetensors`` weights."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or os.environ.get("SKINAPP_WEIGHTS") or DEFAULT_WEIGHTS_DIR)

    # ------------------------------------------------------------------ reading
    def scan(self) -> tuple[list[ModelCard], list[BrokenEntry]]:
        """Usable cards (teachers first) and the card files that are not, each with its reason."""
        if not self.root.is_dir():
            return [], []
        cards, broken = [], []
        for path in sorted(self.root.glob("*.json")):
            try:
                cards.append(read_card(path, self.root))
            except ModelFileError as exc:
                log.warning("model card %s is unusable: %s", path, exc)
                broken.append(BrokenEntry(path.name, path.stem, str(exc)))
        return sorted(cards, key=lambda c: (ROLES.index(c.role) if c.role in ROLES else 9, c.name)), broken

    def cards(self) -> list[ModelCard]:
        return self.scan()[0]

    def broken(self) -> list[BrokenEntry]:
        return self.scan()[1]

    def names(self) -> list[str]:
        return [c.name for c in self.cards()]

    def name_taken(self, name: str) -> str | None:
        """Why ``name`` cannot be given to a new model, or None: a usable card has it, or a card file that cannot be
        used does (registering would fail on it, at the end of a whole training run)."""
        cards, broken = self.scan()
        if name in {c.name for c in cards}:
            return f"model {name!r} already exists; registered: {', '.join(c.name for c in cards)}"
        if (self.root / f"{name}.json").exists():
            reason = next((b.reason for b in broken if b.file == f"{name}.json"), "it cannot be read")
            return f"model name {name!r} is taken by the card file {name}.json, which cannot be used ({reason})"
        return None

    def get(self, name: str) -> ModelCard:
        valid, broken = self.scan()
        cards = {c.name: c for c in valid}
        bad = next((b for b in broken if b.name == name), None)
        if name not in cards and bad is not None:
            raise ModelFileError(f"model {name!r} cannot be used: {bad.reason}")
        if name not in cards:
            valid = ", ".join(cards) or "(none registered in %s)" % self.root
            raise UnknownModelError(f"unknown model {name!r}; registered models: {valid}")
        return cards[name]

    def default(self, role: str) -> ModelCard:
        if role not in ROLES:
            raise RegistryError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
        cards = [c for c in self.cards() if c.role == role]
        if not cards:
            raise UnknownModelError(f"no {role} registered in {self.root}")
        marked = [c for c in cards if c.default]
        return marked[0] if marked else cards[0]

    def load(self, name: str, threads: int | None = None) -> tuple[nn.Module, ModelCard]:
        """Build the network and load its weights after checking the file's sha256 and every key; an ONNX copy
        comes back as an ONNX Runtime session (``threads`` intra-op threads) behind the same call."""
        card = self.get(name)
        path = self.root / card.weights
        if not path.is_file():
            raise ModelFileError(f"weights file {path} for model {name!r} is missing")
        data = path.read_bytes()  # hashed and then used from memory: the file cannot change in between
        digest = hashlib.sha256(data).hexdigest()
        if digest != card.sha256:
            raise ModelFileError(f"weights file {path} does not match its model card (sha256 {digest[:12]}... "
                                 f"expected {card.sha256[:12]}...): it was altered or replaced")
        if card.runtime == "onnx":
            from .runtime import OnnxModel, OnnxRuntimeError

            try:
                return OnnxModel(data, threads), card
            except OnnxRuntimeError as exc:
                raise ModelFileError(f"weights file {path} cannot be run: {exc}") from None
        if card.runtime != "torch":
            raise ModelFileError(f"model {name!r} has runtime {card.runtime!r}; choose torch or onnx")
        try:
            state = load_bytes(data)
        except (SafetensorError, OSError) as exc:
            raise ModelFileError(f"weights file {path} cannot be read: {exc}") from None
        model = build_network(card)
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelFileError(f"weights file {path} does not fit architecture {card.arch!r}: "
                                 f"{str(exc).splitlines()[0]}") from None
        model.eval()
        return model, card

    # ------------------------------------------------------------------ writing
    def register(self, model: nn.Module, card: ModelCard, overwrite: bool = False,
                 dtype: str = "float32") -> ModelCard:
        """Save weights then card atomically; the card is written last, so a crash never leaves a broken entry."""
        if not card.fusion:
            get_arch(card.arch)
        if dtype not in ("float32", "float16"):
            raise RegistryError(f"dtype {dtype!r} must be float32 or float16")
        cast = torch.float16 if dtype == "float16" else torch.float32
        state = {k: (v.detach().to(cast) if v.is_floating_point() else v.detach()).contiguous().cpu()
                 for k, v in model.state_dict().items()}
        return self._write_entry(
            card, "safetensors", lambda tmp: save_file(state, tmp, metadata={"name": card.name, "arch": card.arch}),
            overwrite, params=count_params(model), mflops=round(count_mflops(model, card.input_size), 2), dtype=dtype,
            created=card.created or _now())

    def register_onnx(self, graph: bytes, card: ModelCard, overwrite: bool = False) -> ModelCard:
        """An ONNX copy: the graph as NAME.onnx, then its card (runtime onnx)."""
        return self._write_entry(card, "onnx", lambda tmp: Path(tmp).write_bytes(graph), overwrite,
                                 runtime="onnx", created=_now(), default=False)

    def _write_entry(self, card: ModelCard, suffix: str, write, overwrite: bool, **fields: Any) -> ModelCard:
        """One entry under the registry's lock: the weights file (``write`` fills a temp path), then the card with
        the file's name, sha256 and size and ``fields``; without its card, the weights file is removed again."""
        if card.role not in ROLES:
            raise RegistryError(f"unknown role {card.role!r}; choose one of: {', '.join(ROLES)}")
        check_name(card.name)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self._recover()
            if not overwrite and (card.name in self.names() or (self.root / f"{card.name}.json").exists()):
                raise DuplicateModelError(f"model {card.name!r} is already registered; registered models: "
                                          f"{', '.join(self.names())}")
            path = self.root / f"{card.name}.{suffix}"
            _atomic_write(path, write)
            final = dataclasses.replace(card, weights=path.name, sha256=sha256_file(path),
                                        file_bytes=path.stat().st_size, **fields)
            try:
                self.write_card(final)
            except BaseException:
                if not (self.root / f"{card.name}.json").exists():
                    path.unlink(missing_ok=True)  # no card, no entry: leave no orphan weights either
                raise
        log.info("registered %s (%s %s, %d bytes)", final.name, final.arch, final.precision, final.file_bytes)
        return final

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One writer at a time, so recovery never mistakes another writer's temp file for debris."""
        fd = os.open(self.root, os.O_RDONLY)  # the folder itself is the lock: no lock file to leave behind
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def recover(self) -> list[str]:
        """Remove what a writer killed mid-registration left: temp files, and weights this registry wrote whose
        card never followed (no card, no entry). Returns the files removed."""
        if not self.root.is_dir():
            return []
        with self._lock():
            return self._recover()

    def _recover(self) -> list[str]:
        removed = [p for p in self.root.glob(".*.tmp") if p.is_file()]
        for w in [*self.root.glob("*.safetensors"), *self.root.glob("*.onnx")]:
            if not (self.root / f"{w.stem}.json").exists() and _written_here(w):
                removed.append(w)
        for p in removed:
            log.warning("removing %s, left by a registration that did not finish", p)
            p.unlink(missing_ok=True)
        return [p.name for p in removed]

    def remove(self, name: str) -> None:
        """Unregister a model: its card first (no card, no entry), then its weights file."""
        card = self.get(name)
        with self._lock():
            (self.root / f"{name}.json").unlink(missing_ok=True)
            (self.root / card.weights).unlink(missing_ok=True)
        log.info("removed %s", name)

    def write_card(self, card: ModelCard) -> None:
        path = self.root / f"{card.name}.json"
        _atomic_write(path, lambda tmp: Path(tmp).write_text(card.to_json()))

    def update(self, name: str, **changes: Any) -> ModelCard:
        """Change card fields (calibration temperature, metrics, ...); weights are untouched."""
        card = dataclasses.replace(self.get(name), **changes)
        self.write_card(card)
        return card

    def set_default(self, name: str) -> ModelCard:
        target = self.get(name)
        for c in self.cards():
            if c.role == target.role and c.default and c.name != name:
                self.write_card(dataclasses.replace(c, default=False))
        return self.update(name, default=True)
