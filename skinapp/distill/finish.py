"""The finishing step: calibrate on validation, report on the locked test split, write the card, register."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import torch.distributed as dist
import torch
from torch import nn

from ..data import DecodedData, Split, decode_paths
from ..models import ArchSpec
from ..protocol import fit_and_report, split_record, subgroup_attributes
from ..registry import ModelCard, Registry
from .cache import cached_augmentations
from .config import TrainConfig
from .loop import Loop, predict_logits, resolve_device
from .objectives import KD_OBJECTIVES
from .teacher import Setup

#: config fields that say where a run's files went, not how the model was made
_NOT_RECORDED = ("data", "name", "weights_dir", "progress", "stop_file", "overwrite", "default", "description")


def kd_record(cfg: TrainConfig, st: Setup, lp: Loop | None = None) -> dict[str, Any] | None:
    if not cfg.teacher:
        return None
    kds = cfg.objectives
    kd = {"objectives": list(kds), "temperature": cfg.temperature,
          "alpha": 0.0 if "function-matching" in kds else cfg.alpha, "head": st.head,
          "teacher_views": cfg.teacher_views} | {k: getattr(cfg, k) for n in kds for k in KD_OBJECTIVES[n].knobs}
    if st.teacher_flips and cfg.teacher_views:  # views = random flips of fewer cached augmentations
        kd |= {"cached_augmentations": cached_augmentations(cfg.teacher_views, True), "flipped_views": True}
    if lp is not None and lp.features is not None:
        kd |= lp.features.record()
    return kd


def finish(cfg: TrainConfig, registry: Registry, model: nn.Module, st: Setup, decoded: DecodedData, split: Split,
           val_x: torch.Tensor, n_train: int, size: int, spec: ArchSpec, history: list[dict], best_epoch: int,
           t_start: float, lp: Loop | None = None, check: Callable[[], None] | None = None) -> ModelCard:
    """Calibrate on the validation split, report on the locked test split, and register atomically; ``check``
    (raises to stop) is asked last, so a cancel while the test split is measured registers nothing."""
    ds = st.ds
    logits = predict_logits(model, val_x, size, spec.mean, spec.std)
    test_paths = [decoded.paths[i] for i in split.test]
    test_logits = (predict_logits(model, decode_paths(test_paths, size), size, spec.mean, spec.std)
                   if split.test else None)
    temp, metrics, test_metrics = fit_and_report(
        logits, decoded.targets[split.val].numpy(), test_logits, decoded.targets[split.test].numpy(), st.positive,
        ds.labels, subgroup_attributes(ds, test_paths))
    metrics["best_epoch"] = best_epoch
    card = ModelCard(
        name=cfg.name, role=cfg.role, arch=cfg.arch, label_names=st.label_names, groups=st.groups, task=cfg.task,
        task_labels=ds.labels, input_size=size, mean=spec.mean, std=spec.std, cam_layer=spec.cam_layer,
        cam_method=spec.cam_method,
        temperature=temp, teacher=cfg.teacher, kd=kd_record(cfg, st, lp), split_seed=cfg.split_seed,
        data={"root": str(ds.root), "task": cfg.task, "counts": ds.counts(), "class_counts": ds.class_counts(),
              "skipped": len(decoded.skipped), "label_map": cfg.label_map or "default"}
        | split_record(ds, decoded, cfg.split_spec, split) | {"n_train": n_train},
        metrics=metrics, test_metrics=test_metrics,
        train=train_record(cfg, history, t_start) | ({"init": lp.init} if lp is not None and lp.init else {}),
        default=cfg.default, description=cfg.description)
    if check is not None:
        check()
    card = registry.register(model, card, overwrite=cfg.overwrite)
    return registry.set_default(card.name) if cfg.default else card


def train_record(cfg: TrainConfig, history: list[dict], t_start: float) -> dict[str, Any]:
    """How the model was made: every setting, the per-epoch history, and what it ran on."""
    return ({k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_RECORDED}
            | {"train_time_s": round(time.time() - t_start, 1), "history": history,
               "device_used": resolve_device(cfg.device).type, "torch_threads": torch.get_num_threads(),
               "world_size": dist.get_world_size() if dist.is_initialized() else 1})
