"""One training run from start to registration: read and split the data, set up the teacher, loop, finish."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..data import DecodedData, LesionDataset, Split, decode_dataset, decode_paths, scan_dataset
from ..models import ArchSpec, FusedNet, create_model, get_arch
from ..protocol import check_parts
from ..registry import ModelCard, Registry, check_name
from .cache import SHIPPED_LOGITS, build_teacher_cache
from .config import TrainConfig, TrainingError
from .finish import finish
from .features import pair_stages, stage_names, stage_shapes
from .loop import FeatureKD, Loop, dist_info, evaluate, resolve_device, train_one_epoch
from .objectives import needs_features
from .progress import ProgressLog, Stage, Stopped, StopRequest
from .teacher import Setup, check_teacher_split, fold_split, init_from_teacher, resolve_heads

log = logging.getLogger(__name__)


def check_new_run(cfg: TrainConfig, registry: Registry) -> None:
    """What a run would otherwise find out late, refused before any data is read: its settings, the name's form,
    and a name already taken (by a usable card, or a broken one registering would fail on after every epoch).
    ``train`` calls it, and so does the Train page before it starts a job."""
    cfg.validate()
    check_name(cfg.name)
    taken = None if cfg.overwrite else registry.name_taken(cfg.name)
    if taken:
        raise TrainingError(taken)


def train(cfg: TrainConfig, registry: Registry | None = None) -> ModelCard | None:
    """Train (with KD when a teacher is given); returns the registered card, or None when stopped."""
    registry = registry or Registry(cfg.weights_dir)
    check_new_run(cfg, registry)
    rank, world = dist_info()
    progress = ProgressLog(cfg.progress, enabled=rank == 0)
    stop = StopRequest(cfg.stop_file)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    try:
        return _run(cfg, registry, rank, world, progress, stop)
    except Stopped:
        progress.emit("stopped", message="stopped on request; no model registered")
        return None
    except Exception as exc:
        progress.emit("error", message=str(exc), kind=type(exc).__name__)
        raise
    finally:
        stop.restore()
        if dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class Prepared:
    """A run's data, split and teacher, ready for the loop: what ``train`` and ``estimate`` both start from."""
    spec: ArchSpec
    size: int  # the student's input size
    tsize: int  # the teacher's (0: none)
    ds: LesionDataset
    st: Setup
    decoded: DecodedData
    split: Split
    train_idx: list[int]
    folds: torch.Tensor | None
    dev: torch.device
    train_small: torch.Tensor | None = None  # the training photos at the student's size, when the teacher's is larger


def prepare(cfg: TrainConfig, registry: Registry, progress: ProgressLog, stop: StopRequest) -> Prepared:
    """Read and split the data, set up the teacher, choose the device."""
    spec = get_arch(cfg.arch)
    size = cfg.image_size or spec.input_size
    ds = scan_dataset(cfg.data, cfg.task, cfg.label_map, cfg.metadata)
    st = resolve_heads(cfg, ds, registry)
    tsize = st.teacher_card.input_size if st.teacher_card else 0
    decoded = decode_dataset(ds, max(size, tsize), check=stop.check,
                             report=Stage(progress, "decoding the photos", len(ds.samples)).update)
    split = cfg.split_spec.split(decoded)
    check_parts(ds, decoded, split, cfg.test_frac > 0)
    check_teacher_split(st, decoded, split)
    train_idx, folds = fold_split(cfg, st, decoded, split.train, split.val)
    # the student's views come from its own decode, as its validation photos do (augment_pair)
    small = decode_paths([decoded.paths[i] for i in train_idx], size) if size < tsize else None
    return Prepared(spec, size, tsize, ds, st, decoded, split, train_idx, folds, _prepare_device(cfg, st), small)


def make_loop(cfg: TrainConfig, p: Prepared, registry: Registry, progress: ProgressLog, stop: StopRequest,
              rank: int = 0, world: int = 1) -> Loop:
    lp = _loop(cfg, p.st, p.decoded, p.train_idx, p.folds, p.size, p.tsize, p.dev, rank, world, progress, stop,
               registry)
    if p.train_small is not None:
        lp.train_small = p.train_small.to(p.dev)
    return lp


def _run(cfg: TrainConfig, registry: Registry, rank: int, world: int, progress: ProgressLog,
         stop: StopRequest) -> ModelCard | None:
    t_start = time.time()
    p = prepare(cfg, registry, progress, stop)
    spec, size, ds, st, decoded, split, train_idx = p.spec, p.size, p.ds, p.st, p.decoded, p.split, p.train_idx
    folds = p.folds
    lp = make_loop(cfg, p, registry, progress, stop, rank, world)
    progress.emit("start", name=cfg.name, arch=cfg.arch, teacher=cfg.teacher, head=st.head, n_train=len(train_idx),
                  n_val=len(split.val), n_test=len(split.test), skipped=len(decoded.skipped), epochs=cfg.epochs,
                  steps_per_epoch=len(lp.batches(0)), world_size=world)
    if st.teacher is not None and cfg.teacher_views > 0:
        lp.cached = build_teacher_cache(cfg, st, lp.train_x.cpu(), [decoded.hashes[i] for i in train_idx],
                                        size, progress, rank, folds, registry.root / SHIPPED_LOGITS, lp.features,
                                        stop.check, None if lp.train_small is None else lp.train_small.cpu())
    # validation images decoded at the student's own size, exactly as `evaluate` and the app preprocess them
    val_x, val_y = decode_paths([decoded.paths[i] for i in split.val], size), decoded.targets[split.val].numpy()
    try:
        history, best = _epochs(cfg, lp, val_x, val_y, size, spec, st, ds, progress)
    finally:
        if lp.features:
            lp.features.close()
    if best is None:
        return None
    model = lp.model
    model.load_state_dict(best["state"])
    model.cpu().eval()
    if rank != 0:
        return None
    stop.check_here()  # a cancel after the last step registers nothing either (rank 0 alone registers: no collective)
    card = finish(cfg, registry, model, st, decoded, split, val_x, len(train_idx), size, spec, history,
                  best["epoch"], t_start, lp, check=stop.check_here)
    progress.emit("done", name=card.name, val_auc=card.metrics["auc"], temperature=card.temperature,
                  train_time_s=card.train["train_time_s"])
    return card


def _epochs(cfg, lp: Loop, val_x, val_y, size, spec, st, ds, progress) -> tuple[list[dict], dict | None]:
    """Train, validate after each epoch, keep the best epoch's weights (None when stopped)."""
    best: dict[str, Any] = {"auc": -1.0}
    history = []
    for epoch in range(cfg.epochs):
        loss = train_one_epoch(lp, epoch)
        if loss is None:
            return history, None
        m = evaluate(lp.model, val_x, val_y, size, spec.mean, spec.std, st.positive, ds.labels)
        history.append({"epoch": epoch + 1, "val_auc": m["auc"], "val_accuracy": m["accuracy"],
                        "val_sens_at_spec80": m["sens_at_spec80"], "train_loss": loss})
        progress.emit("epoch", **history[-1], eta_s=lp.eta_s())
        if m["auc"] > best["auc"]:  # the epoch is chosen on validation, never on test
            best = {"auc": m["auc"], "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in lp.model.state_dict().items()}}
    return history, best


def _prepare_device(cfg: TrainConfig, st) -> torch.device:
    dev = resolve_device(cfg.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if st.teacher is not None:
        st.teacher.to(dev)
    return dev


def _feature_kd(cfg: TrainConfig, st, model: nn.Module, size: int, world: int) -> FeatureKD | None:
    """Hooks and stage pairing for the attention and relational objectives (None for the others)."""
    if not needs_features(cfg.objectives):
        return None
    if world > 1 or isinstance(model, FusedNet):
        raise TrainingError(f"objective {cfg.kd!r} trains one network in one process; use the logit objective "
                            f"for a fused student or under torchrun")
    tc = st.teacher_card
    pairs = pair_stages(model, size, st.teacher, tc.input_size)
    s_last, t_last = stage_names(model)[-1], stage_names(st.teacher)[-1]
    shapes = stage_shapes(model, size)
    log.info("feature distillation pairs (student, teacher): %s", pairs)
    return FeatureKD(cfg, model, st.teacher, pairs, s_last, t_last, shapes[s_last][0],
                     {n: shape[1:] for n, shape in shapes.items()})


def _loop(cfg: TrainConfig, st, decoded, train_idx, folds, size, tsize, dev, rank, world, progress, stop,
          registry: Registry) -> Loop:
    """The student, its optimiser and one-cycle schedule, and the training images, on the device."""
    spec = get_arch(cfg.arch)
    # channels-last: about 30% less time per training step on the CPU (measured for dsnet and lite0_tiny)
    model = create_model(cfg.arch, len(st.label_names), "none" if cfg.init_from_teacher else cfg.pretrained,
                         cfg.drop_rate)
    init = init_from_teacher(model, cfg.arch, registry, cfg.init_from_teacher) if cfg.init_from_teacher else None
    model = model.to(dev, memory_format=torch.channels_last)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    features = _feature_kd(cfg, st, model, size, world) if st.teacher is not None else None
    params = list(model.parameters()) + (list(features.rotation.to(dev).parameters())
                                         if features and features.rotation else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    targets = decoded.targets if st.head == "binary" else decoded.diagnosis_idx
    # on a GPU, augmentation runs there too
    lp = Loop(cfg, st, net, model, opt, None, decoded.images[train_idx].to(dev), targets[train_idx].to(dev), size,
              max(size, tsize), spec.mean, spec.std, progress, stop, folds=folds, rank=rank, world=world,
              features=features)
    lp.init = init
    lp.sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=lp.total, pct_start=0.15)
    return lp
