"""Teacher training and knowledge distillation (Hinton et al. 2015), single-process or under torchrun (DDP/gloo).

Progress goes to a JSON-lines file a UI can follow; a stop file or SIGTERM ends a run cleanly, and a model is
registered only when a run completes, so nothing half-written ever appears in the registry.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .data import (LesionDataset, augment_batch, decode_dataset, decode_paths, fold_ids, model_input,
                   resize_batch, scan_dataset, split_digest)
from .evaluation import binary_metrics, grouped_probs
from .protocol import SplitSpec, check_parts, fit_and_report, split_record, subgroup_attributes
from .models import FusedNet, create_model, flip_invariant, fold_batchnorm, get_arch
from .registry import ModelCard, Registry

log = logging.getLogger(__name__)

HEADS = ("auto", "binary", "diagnosis")
AUGMENT = ("none", "standard", "strong")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_TEMPERATURE = 20.0  # best mean AUC in the temperature sweep (docs/experiments.md); the paper's was 10
#: what `distill` and the Train page train unless told otherwise: the default student's architecture, the one
#: small network here that reaches 0.97x the teacher's AUC (docs/experiments.md, "The default student")
DEFAULT_STUDENT_ARCH = "lite0_tiny"


@dataclass(frozen=True)
class Recipe:
    """A student architecture's default schedule: the one its shipped model was trained with."""
    epochs: int
    lr: float
    batch_size: int


RECIPES: dict[str, Recipe] = {
    "dsnet": Recipe(30, 3e-3, 64),  # from scratch: long and fast
    "lite0_tiny": Recipe(20, 2e-3, 32),  # ImageNet-initialised: shorter, gentler
    "efficientnet_lite0": Recipe(15, 1e-3, 32),
    "mobilenetv3_small_100": Recipe(30, 3e-3, 64),
}


def recipe(arch: str) -> Recipe:
    """The default schedule for ``arch`` (dsnet's for an architecture without its own)."""
    return RECIPES.get(arch, RECIPES["dsnet"])


def kd_loss(student_logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor | None = None,
            temperature: float = 4.0, alpha: float = 0.5) -> torch.Tensor:
    """alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T)).

    The T^2 factor keeps the soft term's gradients on the same scale as the hard term whatever T is.
    """
    ce = F.cross_entropy(student_logits, targets)
    if teacher_logits is None:
        return ce
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits.detach() / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * ce + (1.0 - alpha) * soft


class TrainingError(ValueError):
    pass


@dataclass
class TrainConfig:
    data: str
    name: str
    arch: str = DEFAULT_STUDENT_ARCH
    role: str = "student"
    teacher: str | None = None  # registry name; None trains on hard labels only
    task: str = "malignant"
    label_map: str | None = None
    head: str = "auto"  # binary, diagnosis (one output per diagnosis folder), auto = the teacher's, else binary
    temperature: float = DEFAULT_TEMPERATURE
    alpha: float = 0.5
    epochs: int | None = None  # None (also lr, batch_size): the architecture's own schedule, ``recipe(arch)``
    lr: float | None = None
    weight_decay: float = 1e-4
    batch_size: int | None = None
    image_size: int | None = None  # default: the architecture's
    augment: str = "standard"
    seed: int = 0
    split_seed: int = 0  # moves the validation split; the test split stays where test_seed puts it
    val_frac: float = 0.2
    test_frac: float = 0.2  # the locked test split: reported in the card, never used for a choice
    test_seed: int = 0
    metadata: str | None = None  # CSV of image -> lesion_id; default: found beside or inside the data folder
    folds: int = 0  # >= 2: train on the training split less fold ``fold`` (a cross-fitted teacher's member)
    fold: int = 0
    threads: int | None = None
    teacher_views: int = 4  # >0: teacher logits precomputed on this many augmented views per image (cached)
    mixup: float = 0.0  # >0: Beta(mixup, mixup) mixup of each batch; with a teacher it needs teacher_views=0
    device: str = "auto"  # auto = cuda when available
    pretrained: str = "auto"
    drop_rate: float | None = None
    weights_dir: str | None = None
    progress: str | None = None
    stop_file: str | None = None
    overwrite: bool = False
    default: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        plan = recipe(self.arch)
        for key in ("epochs", "lr", "batch_size"):
            if getattr(self, key) is None:
                setattr(self, key, getattr(plan, key))

    @property
    def split_spec(self) -> SplitSpec:
        return SplitSpec(self.val_frac, self.test_frac, self.split_seed, self.test_seed)

    def validate(self) -> None:
        get_arch(self.arch)
        checks = [
            (self.role in ("teacher", "student"), f"role {self.role!r} must be teacher or student"),
            (self.head in HEADS, f"head {self.head!r} must be one of: {', '.join(HEADS)}"),
            (self.augment in AUGMENT, f"augment {self.augment!r} must be one of: {', '.join(AUGMENT)}"),
            (self.temperature > 0, f"temperature {self.temperature} must be > 0"),
            (0.0 <= self.alpha <= 1.0, f"alpha {self.alpha} must be between 0 and 1"),
            (self.epochs >= 1, f"epochs {self.epochs} must be at least 1"),
            (self.lr > 0, f"learning rate {self.lr} must be > 0"),
            (self.batch_size >= 2, f"batch size {self.batch_size} must be at least 2"),
            (self.image_size is None or 32 <= self.image_size <= 1024,
             f"image size {self.image_size} must be between 32 and 1024"),
            (0.0 < self.val_frac < 1.0, f"validation fraction {self.val_frac} must be between 0 and 1"),
            (0.0 <= self.test_frac < 1.0 and self.val_frac + self.test_frac < 1.0,
             f"test fraction {self.test_frac} must be in [0, 1) and leave training images beside validation "
             f"fraction {self.val_frac}"),
            (self.folds == 0 or 2 <= self.folds <= 20, f"folds {self.folds} must be 0 (off) or between 2 and 20"),
            (self.folds == 0 or 0 <= self.fold < self.folds, f"fold {self.fold} must be between 0 and {self.folds - 1}"),
            (0 <= self.teacher_views <= 64, f"teacher views {self.teacher_views} must be between 0 and 64"),
            (self.mixup >= 0, f"mixup {self.mixup} must be >= 0"),
            (not (self.mixup > 0 and self.teacher and self.teacher_views > 0),
             f"mixup {self.mixup} needs the teacher on every mixed batch: set teacher views to 0"),
            (self.device in DEVICES, f"device {self.device!r} must be one of: {', '.join(DEVICES)}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise TrainingError(msg)


class ProgressLog:
    """Append-only JSON lines; each line is complete when flushed, so a reader never sees half an event."""

    def __init__(self, path: str | None, enabled: bool = True):
        self.path = Path(path) if (path and enabled) else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> None:
        rec = {"event": event, "time": round(time.time(), 3), **fields}
        log.info("%s %s", event, {k: v for k, v in fields.items() if k != "history"})
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()


class StopRequest:
    """Set by SIGTERM or by the stop file appearing; agreed across ranks so every process stops together."""

    def __init__(self, stop_file: str | None):
        self.stop_file = Path(stop_file) if stop_file else None
        self.flag = False
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._on_term)
        else:
            self._old = None

    def _on_term(self, *_: Any) -> None:
        self.flag = True

    def requested(self) -> bool:
        local = self.flag or bool(self.stop_file and self.stop_file.exists())
        if dist.is_available() and dist.is_initialized():
            t = torch.tensor([1.0 if local else 0.0])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            local = bool(t.item() > 0)
        return local

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


@dataclass
class _Setup:
    ds: LesionDataset
    label_names: tuple[str, ...]
    groups: tuple[str, ...]
    head: str
    teacher: nn.Module | None
    teacher_card: ModelCard | None
    teacher_positive: list[int] | None = None  # set when a diagnosis teacher teaches a binary student
    teacher_flips: bool = False  # the teacher's output is the same for all four flips of an image
    crossfit: dict[str, Any] | None = None  # a cross-fitted teacher: which member never saw which fold


def _resolve_heads(cfg: TrainConfig, ds: LesionDataset, registry: Registry) -> _Setup:
    teacher = tcard = None
    if cfg.teacher:
        teacher, tcard = registry.load(cfg.teacher)
        # frozen, so folding its BatchNorms is exact; with channels-last, oneDNN's fast kernels: the fused
        # teacher's pass over a batch of 64 went from 18.6 s to 5.4 s on 2 CPU threads (docs/experiments.md)
        teacher = fold_batchnorm(teacher, tcard.input_size).to(memory_format=torch.channels_last)
        for p in teacher.parameters():
            p.requires_grad_(False)
    head = cfg.head
    if head == "auto":
        head = "binary" if tcard is None or tuple(tcard.label_names) == ds.labels else "diagnosis"
    if head == "binary":
        names, groups = ds.labels, ds.labels
    else:
        names = ds.diagnoses
        groups = tuple(ds.groups[d] for d in names)
    teacher_positive = None
    if tcard is not None and head == "binary" and tuple(tcard.label_names) == ds.diagnoses:
        # binary KD from a diagnosis teacher: its probabilities summed per group are the soft targets
        teacher_positive = [i for i, d in enumerate(ds.diagnoses) if ds.groups[d] == ds.labels[1]]
    elif tcard is not None:
        if tuple(tcard.label_names) != tuple(names):
            raise TrainingError(
                f"teacher {tcard.name!r} outputs {list(tcard.label_names)} but this run's {head} head needs "
                f"{list(names)}; pick a teacher trained with the same head on the same diagnoses")
        if tcard.task != cfg.task and head == "binary":
            raise TrainingError(f"teacher {tcard.name!r} was trained for task {tcard.task!r}, not {cfg.task!r}")
    crossfit = (tcard.fusion or {}).get("crossfit") if tcard is not None else None
    if crossfit and cfg.mixup > 0:
        raise TrainingError(f"teacher {tcard.name!r} is cross-fitted: each image is scored by the member that "
                            f"never saw it, which a mixed image does not have; set mixup to 0")
    return _Setup(ds, tuple(names), tuple(groups), head, teacher, tcard, teacher_positive,
                  teacher is not None and flip_invariant(teacher), crossfit)


def grouped_teacher_logits(teacher_logits: torch.Tensor, positive: list[int], temperature: float) -> torch.Tensor:
    """Two-class logits whose softmax at ``temperature`` equals the teacher's per-group probabilities at it.

    Lets a binary student distil from a diagnosis teacher through the same ``kd_loss``.
    """
    p = torch.softmax(teacher_logits / temperature, dim=1)
    pos = p[:, positive].sum(dim=1)
    return temperature * torch.stack([1 - pos, pos], dim=1).clamp_min(1e-12).log()


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _batches(n_train: int, batch: int, epoch: int, seed: int, rank: int, world: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed * 1000 + epoch).permutation(n_train)
    per_rank = max(1, n_train // world)
    mine = perm[rank::world][:per_rank]
    out = [mine[i:i + batch] for i in range(0, len(mine), batch)]
    return [b for b in out if len(b) > 1] or [mine]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was asked for but no CUDA GPU is available; use cpu or auto")
    return torch.device(name)


def _evaluate(model: nn.Module, images: torch.Tensor, size: int, mean, std, batch: int = 128) -> torch.Tensor:
    model.eval()
    dev = next(model.parameters()).device
    outs = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            outs.append(model(model_input(images[i:i + batch].to(dev).float() / 255.0, size, mean, std)).cpu())
    return torch.cat(outs)


def _mixup(x01: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator):
    """One mixing weight per batch (Zhang et al. 2018); the teacher, when there is one, sees the mixed pixels."""
    lam = float(rng.beta(alpha, alpha))
    perm = torch.as_tensor(rng.permutation(len(x01)), device=x01.device)
    return lam * x01 + (1 - lam) * x01[perm], y[perm], lam


SHIPPED_LOGITS = "teacher-logits"  # a registry's subfolder of teacher logits shipped without their views


def cache_dir() -> Path:
    return Path(os.environ.get("SKINAPP_CACHE") or Path(__file__).resolve().parent.parent / "runs" / "cache")


def cached_augmentations(teacher_views: int, teacher_flips: bool) -> int:
    """Augmentations the teacher must see for ``teacher_views`` views per image. A flip-invariant teacher (a
    fused model averaging over the four flips) gives the four flips of a view one and the same soft target,
    so one cached augmentation serves four views: the student gets a random flip of it at every step."""
    return -(-teacher_views // 4) if teacher_flips else teacher_views


def build_teacher_cache(cfg: TrainConfig, st: "_Setup", images: torch.Tensor, hashes: list[str], size: int,
                        progress: ProgressLog, rank: int = 0, folds: torch.Tensor | None = None,
                        shipped: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """K augmented views of every training image at the student's size, with the teacher's logits on each.

    The teacher then costs K forward passes per image once, instead of one per image per epoch, and the same
    cache serves every run with this teacher, data, split and augmentation (a temperature sweep, seeds, ...).
    Teacher and student still see exactly the same pixels ("function matching"). ``shipped``: a folder that may
    hold the logits alone (``teacher-logits-KEY.safetensors``, no pixels), shipped beside the registry so a fresh
    install regenerates the seeded views and skips the teacher's pass (checked on a sample first).
    """
    from safetensors.torch import load_file, save_file

    tc = st.teacher_card
    n_aug = cached_augmentations(cfg.teacher_views, st.teacher_flips)
    parts = [tc.sha256, hashes, cfg.teacher_views, cfg.augment, cfg.seed, size, tc.input_size, images.shape[-1]]
    key = hashlib.sha1(json.dumps(parts + (["flips", n_aug] if st.teacher_flips else [])).encode()).hexdigest()[:20]
    path = cache_dir() / f"teacher-views-{key}.safetensors"
    if path.exists():
        d = load_file(str(path))
        progress.emit("cache", message=f"teacher logits loaded from {path.name}", views=n_aug)
        return d["views"], d["logits"]
    views = torch.empty(n_aug, len(images), 3, size, size, dtype=torch.uint8)
    logits = torch.empty(n_aug, len(images), len(tc.label_names))
    known, known_logits = _shipped_logits(key, (shipped, cache_dir()), logits.shape)
    gen = torch.Generator().manual_seed(cfg.seed * 104729 + 17)
    big = max(size, tc.input_size)
    t0 = time.time()
    dev = next(st.teacher.parameters()).device
    for k in range(n_aug):
        for i in range(0, len(images), 64):
            x01 = augment_batch(images[i:i + 64].to(dev), big, gen, cfg.augment)
            batch_folds = None if folds is None else folds[i:i + 64]
            if known_logits is not None and k == 0 and i == 0 and not _matches(st, x01[:8], batch_folds,
                                                                                 known_logits[0, :8]):
                log.warning("shipped teacher logits %s do not match this machine's views; recomputing", key)
                known_logits = None
            logits[k, i:i + 64] = (known_logits[k, i:i + 64] if known_logits is not None
                                   else teacher_logits(st, x01, batch_folds).cpu())
            views[k, i:i + 64] = (resize_batch(x01.cpu(), size) * 255).round().clamp(0, 255).to(torch.uint8)
        progress.emit("cache", message="computing teacher logits" if known_logits is None else
                      f"views regenerated; teacher logits from {known.name}/", view=k + 1, views=n_aug,
                      elapsed_s=round(time.time() - t0, 1))
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        for name, tensors in ((path, {"views": views, "logits": logits}),
                              (path.with_name(f"teacher-logits-{key}.safetensors"), {"logits": logits})):
            tmp = name.with_suffix(f".{os.getpid()}.tmp")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
            os.replace(tmp, name)
    return views, logits


def _shipped_logits(key: str, folders, shape) -> tuple[Path | None, torch.Tensor | None]:
    """Logits saved without their views for this cache key, if a folder holds a readable file of the right shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for folder in folders:
        path = folder / f"teacher-logits-{key}.safetensors" if folder else None
        if path is None or not path.exists():
            continue
        try:
            logits = load_file(str(path))["logits"]
        except (SafetensorError, OSError, KeyError) as exc:
            log.warning("ignoring unreadable teacher logits %s: %s", path, exc)
            continue
        if tuple(logits.shape) == tuple(shape):
            return folder, logits
        log.warning("ignoring teacher logits %s: shape %s, expected %s", path, tuple(logits.shape), tuple(shape))
    return None, None


def _matches(st: "_Setup", x01: torch.Tensor, folds: torch.Tensor | None, known: torch.Tensor) -> bool:
    """Shipped logits are used only if the teacher, run here on the first regenerated views, agrees with them."""
    fresh = teacher_logits(st, x01, None if folds is None else folds[:len(x01)]).cpu()
    return bool(torch.allclose(fresh, known, atol=2e-3 * max(1.0, float(known.abs().max())), rtol=0))


def train(cfg: TrainConfig, registry: Registry | None = None) -> ModelCard | None:
    """Train (with KD when a teacher is given); returns the registered card, or None when stopped."""
    cfg.validate()
    registry = registry or Registry(cfg.weights_dir)
    if not cfg.overwrite and cfg.name in registry.names():
        raise TrainingError(f"model {cfg.name!r} already exists; registered: {', '.join(registry.names())}")
    rank, world = _dist_info()
    progress = ProgressLog(cfg.progress, enabled=rank == 0)
    stop = StopRequest(cfg.stop_file)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    try:
        return _run(cfg, registry, rank, world, progress, stop)
    except Exception as exc:
        progress.emit("error", message=str(exc), kind=type(exc).__name__)
        raise
    finally:
        stop.restore()
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(cfg: TrainConfig, registry: Registry, rank: int, world: int, progress: ProgressLog,
         stop: StopRequest) -> ModelCard | None:
    t_start = time.time()
    spec = get_arch(cfg.arch)
    size = cfg.image_size or spec.input_size
    ds = scan_dataset(cfg.data, cfg.task, cfg.label_map, cfg.metadata)
    st = _resolve_heads(cfg, ds, registry)
    tsize = st.teacher_card.input_size if st.teacher_card else 0
    decoded = decode_dataset(ds, max(size, tsize))
    targets = decoded.targets if st.head == "binary" else decoded.diagnosis_idx
    split = cfg.split_spec.split(decoded)
    check_parts(ds, decoded, split, cfg.test_frac > 0)
    _check_teacher_split(cfg, st, decoded, split)
    val_idx = split.val
    train_idx, train_folds = _fold_split(cfg, st, decoded, split.train, val_idx)
    dev = resolve_device(cfg.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if st.teacher is not None:
        st.teacher.to(dev)
    # channels-last: about 30% less time per training step on the CPU (measured for dsnet and lite0_tiny)
    model = create_model(cfg.arch, len(st.label_names), cfg.pretrained, cfg.drop_rate).to(
        dev, memory_format=torch.channels_last)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(_batches(len(train_idx), max(2, cfg.batch_size // world), 0, cfg.seed, rank, world))
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.15)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + rank)
    mix_rng = np.random.default_rng(cfg.seed * 7919 + rank)
    train_x, train_y = decoded.images[train_idx], targets[train_idx]
    progress.emit("start", name=cfg.name, arch=cfg.arch, teacher=cfg.teacher, head=st.head, n_train=len(train_idx),
                  n_val=len(val_idx), n_test=len(split.test), skipped=len(decoded.skipped), epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                  world_size=world)
    cached = None
    if st.teacher is not None and cfg.teacher_views > 0:
        cached = build_teacher_cache(cfg, st, train_x, [decoded.hashes[i] for i in train_idx], size, progress, rank,
                                     train_folds, registry.root / SHIPPED_LOGITS)
    train_x, train_y = train_x.to(dev), train_y.to(dev)  # on a GPU, augmentation runs there too
    # validation images decoded at the student's own size, exactly as `evaluate` and the app preprocess them
    val_x, val_y = decode_paths([decoded.paths[i] for i in val_idx], size), decoded.targets[val_idx].numpy()
    positive = [i for i, g in enumerate(st.groups) if g == ds.labels[1]]
    best: dict[str, Any] = {"auc": -1.0}
    history, done, t_loop = [], 0, time.time()
    for epoch in range(cfg.epochs):
        net.train()
        for step, b in enumerate(_batches(len(train_idx), max(2, cfg.batch_size // world), epoch, cfg.seed, rank, world)):
            bi = torch.as_tensor(b)
            x01, y, t_logits = _batch_inputs(cfg, st, cached, train_x, train_y, bi, max(size, tsize), gen, dev)
            y2, lam = y, 1.0
            if cfg.mixup > 0:
                x01, y2, lam = _mixup(x01, y, cfg.mixup, mix_rng)
            if st.teacher is not None and cached is None:
                t_logits = teacher_logits(st, x01, None if train_folds is None else train_folds[bi])
            if t_logits is not None and st.teacher_positive is not None:
                t_logits = grouped_teacher_logits(t_logits, st.teacher_positive, cfg.temperature)
            xin = model_input(x01, size, spec.mean, spec.std).contiguous(memory_format=torch.channels_last)
            # a fused model trains each member on its own loss; any other model is a fusion of one
            outs = net(xin, members=True) if isinstance(model, FusedNet) else net(xin)[None]
            loss = sum(_mixed_loss(o, y, y2, lam, t_logits, cfg) for o in outs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if stop.requested():
                progress.emit("stopped", epoch=epoch, step=step, message="stopped on request; no model registered")
                return None
            if step % 5 == 0 or step == steps_per_epoch - 1:
                el = time.time() - t_loop
                progress.emit("step", epoch=epoch + 1, epochs=cfg.epochs, step=step + 1, steps=steps_per_epoch,
                              loss=round(loss.item(), 5), lr=sched.get_last_lr()[0],
                              eta_s=round(el / done * (total - done), 1), fraction=round(done / total, 4))
        logits = _evaluate(model, val_x, size, spec.mean, spec.std)
        p = grouped_probs(logits, positive).numpy()
        m = binary_metrics(val_y, p, labels=ds.labels)
        history.append({"epoch": epoch + 1, "val_auc": m["auc"], "val_accuracy": m["accuracy"],
                        "val_sens_at_spec80": m["sens_at_spec80"], "train_loss": round(loss.item(), 5)})
        progress.emit("epoch", **history[-1], eta_s=round((time.time() - t_loop) / done * (total - done), 1))
        if m["auc"] > best["auc"]:
            best = {"auc": m["auc"], "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    model.load_state_dict(best["state"])
    model.cpu().eval()
    if rank != 0:
        return None
    card = _finish(cfg, registry, model, st, decoded, split, val_x, train_idx, size, spec, history, best, t_start)
    progress.emit("done", name=card.name, val_auc=card.metrics["auc"], temperature=card.temperature,
                  train_time_s=card.train["train_time_s"])
    return card


def _check_teacher_split(cfg: TrainConfig, st: _Setup, decoded, split) -> None:
    """A teacher that trained on this run's test images would carry their labels into the student."""
    tc = st.teacher_card
    if tc is None:
        return
    tspec = SplitSpec.of(tc.data, tc.split_seed)
    if tspec is None:
        log.warning("teacher %s predates the locked test split: it may have trained on this run's test images, "
                    "so the student's test numbers are optimistic", tc.name)
        return
    mine = tspec.split(decoded)
    if tc.data.get("digests", {}).get("test") == split_digest(decoded.hashes, mine.test):
        leaked = set(mine.train) & set(split.test)
        if leaked:
            raise TrainingError(f"teacher {tc.name!r} trained on {len(leaked)} image(s) of this run's test split; "
                                f"use test seed {tspec.test_seed} and test fraction {tspec.test_frac} (its own)")


def _fold_split(cfg: TrainConfig, st: _Setup, decoded, train_idx: list[int],
                val_idx: list[int]) -> tuple[list[int], torch.Tensor | None]:
    """The training images this run uses, and, under a cross-fitted teacher, each one's fold.

    A fold teacher (``folds`` >= 2) leaves its fold out; a student of a cross-fitted teacher must train on
    exactly the split its members were cut from, or some member would score images it was trained on.
    """
    if cfg.folds and st.crossfit:
        raise TrainingError(f"teacher {st.teacher_card.name!r} is cross-fitted; a fold run (--folds) cannot use it")
    need = cfg.folds if cfg.folds else (st.crossfit or {}).get("folds", 0)
    if not need:
        return train_idx, None
    ids = fold_ids([int(decoded.diagnosis_idx[i]) for i in train_idx], [decoded.groups[i] for i in train_idx],
                   need, cfg.split_seed)
    if cfg.folds:
        return [i for i, f in zip(train_idx, ids) if f != cfg.fold], None
    want = st.teacher_card.data.get("split_digest")
    if want != split_digest(decoded.hashes, val_idx) or st.teacher_card.split_seed != cfg.split_seed:
        raise TrainingError(
            f"teacher {st.teacher_card.name!r} is cross-fitted on another split (seed "
            f"{st.teacher_card.split_seed}, data {st.teacher_card.data.get('root')}); distil on the same data with "
            f"split seed {st.teacher_card.split_seed} and validation fraction {st.teacher_card.data.get('val_frac')}")
    return train_idx, torch.tensor(ids)


def teacher_logits(st: _Setup, x01: torch.Tensor, folds: torch.Tensor | None = None) -> torch.Tensor:
    """The frozen teacher on a [0,1] batch; on a GPU in bfloat16, which halves the cost of patient KD there.

    A cross-fitted teacher scores each training image (``folds``: its fold) with the one member trained without
    that fold, so its soft targets show where it errs on photos it has not seen, not its memory of the labels.
    """
    tc = st.teacher_card
    x = model_input(x01, tc.input_size, tc.mean, tc.std).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
        if st.crossfit is None or folds is None:
            return st.teacher(x).float()
        out = torch.empty(len(x), len(tc.label_names), device=x.device)
        folds = folds.to(x.device)
        for f in folds.unique().tolist():
            sel = folds == f
            out[sel] = st.teacher(x[sel], only=[st.crossfit["members"][f]]).float()
        return out


def _mixed_loss(logits: torch.Tensor, y: torch.Tensor, y2: torch.Tensor, lam: float, t_logits, cfg: TrainConfig):
    loss = kd_loss(logits, y, t_logits, cfg.temperature, cfg.alpha)
    if lam < 1.0:  # the soft term is the same for both labels, so the mix only reweights the hard one
        loss = lam * loss + (1 - lam) * kd_loss(logits, y2, t_logits, cfg.temperature, cfg.alpha)
    return loss


def _batch_inputs(cfg: TrainConfig, st: _Setup, cached, train_x: torch.Tensor, train_y: torch.Tensor,
                  bi: torch.Tensor, big: int, gen: torch.Generator, dev: torch.device):
    """A batch's [0,1] pixels, hard labels and (from the cache, if any) teacher logits, on the device."""
    if cached is not None:
        v = torch.randint(0, cached[0].shape[0], (len(bi),), generator=gen)
        x01 = cached[0][v, bi].to(dev).float() / 255.0
        t_logits = cached[1][v, bi].to(dev)
        if st.teacher_flips:
            x01 = random_flips(x01, gen)
    else:
        x01, t_logits = augment_batch(train_x[bi.to(train_x.device)], big, gen, cfg.augment), None
    return x01, train_y[bi.to(train_y.device)], t_logits


def random_flips(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image of a batch flipped horizontally and/or vertically, each with probability 1/2."""
    h, v = (torch.rand(2, len(x), generator=gen) < 0.5).to(x.device).view(2, -1, 1, 1, 1)
    x = torch.where(h, x.flip(3), x)
    return torch.where(v, x.flip(2), x)


def _kd_record(cfg: TrainConfig, st: _Setup) -> dict[str, Any] | None:
    if not cfg.teacher:
        return None
    kd = {"temperature": cfg.temperature, "alpha": cfg.alpha, "head": st.head}
    if st.teacher_flips and cfg.teacher_views:  # views = random flips of fewer cached augmentations
        kd |= {"cached_augmentations": cached_augmentations(cfg.teacher_views, True), "flipped_views": True}
    return kd


def _finish(cfg, registry, model, st: _Setup, decoded, split, val_x, train_idx, size, spec, history, best,
            t_start) -> ModelCard:
    """Calibrate on the validation split, report on the locked test split, and register atomically."""
    ds = st.ds
    positive = [i for i, g in enumerate(st.groups) if g == ds.labels[1]]
    logits = _evaluate(model, val_x, size, spec.mean, spec.std)
    test_paths = [decoded.paths[i] for i in split.test]
    test_logits = _evaluate(model, decode_paths(test_paths, size), size, spec.mean, spec.std) if split.test else None
    test_y = decoded.targets[split.test].numpy()
    temp, metrics, test_metrics = fit_and_report(logits, decoded.targets[split.val].numpy(), test_logits, test_y,
                                                 positive, ds.labels, subgroup_attributes(ds, test_paths))
    metrics["best_epoch"] = best["epoch"]
    card = ModelCard(
        name=cfg.name, role=cfg.role, arch=cfg.arch, label_names=st.label_names, groups=st.groups, task=cfg.task,
        task_labels=ds.labels, input_size=size, mean=spec.mean, std=spec.std, cam_layer=spec.cam_layer,
        temperature=temp, teacher=cfg.teacher,
        kd=_kd_record(cfg, st),
        split_seed=cfg.split_seed,
        data={"root": str(ds.root), "task": cfg.task, "counts": ds.counts(), "class_counts": ds.class_counts(),
              "skipped": len(decoded.skipped), "label_map": cfg.label_map or "default"}
        | split_record(ds, decoded, cfg.split_spec, split)
        | {"n_train": len(train_idx)},
        metrics=metrics, test_metrics=test_metrics,
        train={k: v for k, v in dataclasses.asdict(cfg).items()
               if k not in ("data", "name", "weights_dir", "progress", "stop_file", "overwrite", "default",
                            "description")}
        | {"train_time_s": round(time.time() - t_start, 1), "history": history,
           "device_used": resolve_device(cfg.device).type,
           "torch_threads": torch.get_num_threads(), "world_size": dist.get_world_size() if dist.is_initialized() else 1},
        default=cfg.default, description=cfg.description)
    card = registry.register(model, card, overwrite=cfg.overwrite)
    if cfg.default:
        card = registry.set_default(card.name)
    return card
