"""The training loop, as torchvision's references have it: ``train_one_epoch`` and ``evaluate``."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..data import augment_pair, model_input
from ..evaluation import binary_metrics, grouped_probs
from ..models import FusedNet
from .config import TrainConfig, TrainingError
from .features import Tap
from .kd import grouped_teacher_logits, kd_loss, mixed_kd_loss
from .objectives import (attention_loss, attention_map, confidence_weights, intra_loss, intra_relations, rkd_angle,
                         rkd_distance, rotate_quarters, strong_mix, weighted_kd_loss)
from .progress import ProgressLog, StopRequest
from .teacher import Setup, teacher_logits


@dataclass
class Loop:
    """What every step of a run needs and nothing in it changes, except the step count."""
    cfg: TrainConfig
    st: Setup
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    train_x: torch.Tensor  # uint8 pixels on the device, at the larger of the student's and the teacher's sizes
    train_y: torch.Tensor
    size: int  # the student's input size
    big: int  # augment at the larger of the student's and the teacher's sizes
    mean: tuple
    std: tuple
    progress: ProgressLog
    stop: StopRequest
    cached: tuple[torch.Tensor, torch.Tensor, dict] | None = None  # teacher views, logits, feature targets
    folds: torch.Tensor | None = None  # under a cross-fitted teacher: each training image's fold
    rank: int = 0
    world: int = 1
    features: "FeatureKD | None" = None  # the taps and pairing of feature-level objectives
    init: dict[str, Any] | None = None  # where the student's weights came from, when from a teacher
    train_small: torch.Tensor | None = None  # the same photos decoded at the student's size, when it is smaller
    done: int = 0
    t0: float = field(default_factory=time.time)

    def batches(self, epoch: int) -> list[np.ndarray]:
        return batch_indices(len(self.train_y), max(2, self.cfg.batch_size // self.world), epoch, self.cfg.seed,
                             self.rank, self.world)

    @property
    def total(self) -> int:
        return len(self.batches(0)) * self.cfg.epochs

    def eta_s(self) -> float:
        return round((time.time() - self.t0) / max(1, self.done) * (self.total - self.done), 1)

    def __post_init__(self) -> None:
        self.gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.rank)
        self.mix_rng = np.random.default_rng(self.cfg.seed * 7919 + self.rank)


def train_one_epoch(lp: Loop, epoch: int) -> float | None:
    """One pass over the training split: the last batch's loss, or None when a stop was requested."""
    lp.net.train()
    batches = lp.batches(epoch)
    loss = torch.zeros(())
    for step, b in enumerate(batches):
        loss = train_step(lp, torch.as_tensor(b))
        lp.done += 1
        if lp.stop.requested():
            lp.progress.emit("stopped", epoch=epoch, step=step, message="stopped on request; no model registered")
            return None
        if step % 5 == 0 or step == len(batches) - 1:
            lp.progress.emit("step", epoch=epoch + 1, epochs=lp.cfg.epochs, step=step + 1, steps=len(batches),
                             loss=round(loss.item(), 5), lr=lp.sched.get_last_lr()[0], eta_s=lp.eta_s(),
                             fraction=round(lp.done / lp.total, 4))
    return round(loss.item(), 5)


def train_step(lp: Loop, bi: torch.Tensor) -> torch.Tensor:
    cfg, st = lp.cfg, lp.st
    x01, xt01, y, t_logits, targets = batch_inputs(lp, bi)
    y2, lam = y, 1.0
    if st.teacher is not None and "function-matching" in cfg.objectives:
        # no label follows the mix: only the teacher is matched
        x01, xt01 = strong_mix(x01, lp.gen, cfg.kd_mix, xt01)
    elif cfg.mixup > 0:
        x01, y2, lam, xt01 = mixup(x01, y, cfg.mixup, lp.mix_rng, xt01)
    if st.teacher is not None and lp.cached is None:
        if lp.features:
            lp.features.teacher.n = len(xt01)
        t_logits = teacher_logits(st, xt01, None if lp.folds is None else lp.folds[bi])
        targets = lp.features.targets() if lp.features else None
    if t_logits is not None and st.teacher_columns is not None:
        t_logits = t_logits[:, st.teacher_columns]  # this folder's diagnoses only, renormalised by the softmax
    weights = None
    if t_logits is not None and "relational" in cfg.objectives:
        weights = confidence_weights(t_logits, y, st.teacher_positive)
    if t_logits is not None and st.teacher_positive is not None:
        t_logits = grouped_teacher_logits(t_logits, st.teacher_positive, cfg.temperature)
    xin = model_input(x01, lp.size, lp.mean, lp.std).contiguous(memory_format=torch.channels_last)
    # a fused model trains each member on its own loss; any other model is a fusion of one
    outs = lp.net(xin, members=True) if isinstance(lp.model, FusedNet) else lp.net(xin)[None]
    loss = sum(_logit_terms(cfg, o, y, y2, lam, t_logits, weights) for o in outs)
    if lp.features and targets is not None:
        loss = loss + lp.features.loss(lp, xin, targets)
    lp.opt.zero_grad(set_to_none=True)
    loss.backward()
    lp.opt.step()
    lp.sched.step()
    return loss.detach()


def _logit_terms(cfg: TrainConfig, out: torch.Tensor, y, y2, lam: float, t_logits, weights) -> torch.Tensor:
    """The hard-label term, and the soft one when the objectives use the teacher's outputs."""
    kds = cfg.objectives
    if t_logits is None or not any(k in kds for k in ("logit", "relational", "function-matching")):
        return mixed_kd_loss(out, y, y2, lam, None, cfg.temperature, cfg.alpha)
    if "function-matching" in kds:  # the views are mixed: the teacher's outputs are the only target
        return kd_loss(out, y, t_logits, cfg.temperature, 0.0)
    if weights is not None:
        return weighted_kd_loss(out, y, t_logits, weights, cfg.temperature, cfg.alpha)
    return mixed_kd_loss(out, y, y2, lam, t_logits, cfg.temperature, cfg.alpha)


class FeatureKD:
    """Attention and relational terms. The student's stage outputs are read by hooks during its forward; the
    teacher's become per-image targets (``targets``) that are small enough to cache with the views, so these
    objectives cost no teacher pass per step once the cache exists."""

    #: the relational terms' weights before ``kd_relation`` scales them: RKD's distance and angle (Park et al.)
    #: and the intra-image relation matrix
    WEIGHTS = {"distance": 25.0, "angle": 50.0, "intra": 10.0}

    def __init__(self, cfg: TrainConfig, model: nn.Module, teacher: nn.Module, pairs: list[tuple[str, str]],
                 student_last: str, teacher_last: str, channels: int, sizes: dict[str, tuple[int, int]]):
        self.cfg, self.pairs, self.sizes = cfg, pairs, sizes  # sizes: each student stage's output, (h, w)
        self.s_last, self.t_last = student_last, teacher_last
        self.student = Tap(model, sorted({s for s, _ in pairs} | {student_last}))
        self.teacher = Tap(teacher, sorted({t for _, t in pairs} | {teacher_last}))
        self.rotation = nn.Linear(channels, 4) if "relational" in cfg.objectives else None

    def describe(self) -> list:
        """What the cached targets depend on, for the cache key."""
        return ["features-v1", self.pairs, sorted(self.sizes.items()), self.t_last]

    def targets(self, n: int | None = None) -> dict[str, torch.Tensor]:
        """The teacher's per-image targets from its last forward: attention vectors of each pair at the student's
        stage size, its embedding, and the intra-image relations of the deepest pair."""
        t = {k: v.float() for k, v in self.teacher.out.items()}
        out = {f"att{i}": attention_map(t[b], self.sizes[a]) for i, (a, b) in enumerate(self.pairs)}
        out["emb"] = t[self.t_last].mean((2, 3))
        a, b = self.pairs[-1]
        out["intra"] = intra_relations(t[b], self.sizes[a])
        return out

    def loss(self, lp: Loop, xin: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg, s = self.cfg, self.student.out
        total = xin.new_zeros(())
        if "attention" in cfg.objectives:
            total = total + attention_loss([s[a] for a, _ in self.pairs],
                                           [targets[f"att{i}"] for i in range(len(self.pairs))], cfg.kd_beta)
        if "relational" in cfg.objectives:
            es, w, a = s[self.s_last].mean((2, 3)), self.WEIGHTS, self.pairs[-1][0]
            rel = (w["distance"] * rkd_distance(es, targets["emb"]) + w["angle"] * rkd_angle(es, targets["emb"])
                   + w["intra"] * intra_loss(s[a], targets["intra"]))
            xr, k = rotate_quarters(xin, lp.gen)
            lp.net(xr.contiguous(memory_format=torch.channels_last))  # the hooks now hold the rotated pass
            rot = F.cross_entropy(self.rotation(self.student.out[self.s_last].mean((2, 3))), k)
            total = total + cfg.kd_relation * rel + cfg.kd_rotation * rot
        return total

    def record(self) -> dict[str, Any]:
        return {"pairs": [list(p) for p in self.pairs], "student_embedding": self.s_last,
                "teacher_embedding": self.t_last}

    def close(self) -> None:
        self.student.close()
        self.teacher.close()


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, size: int, mean, std, batch: int = 128) -> torch.Tensor:
    """The model's logits on uint8 images, preprocessed exactly as ``evaluate`` and the app do."""
    model.eval()
    dev = next(model.parameters()).device
    outs = [model(model_input(images[i:i + batch].to(dev).float() / 255.0, size, mean, std)).cpu()
            for i in range(0, len(images), batch)]
    return torch.cat(outs)


def evaluate(model: nn.Module, images: torch.Tensor, y: np.ndarray, size: int, mean, std, positive: list[int],
             labels: tuple[str, str]) -> dict[str, Any]:
    """Binary metrics of the model on a held-out part (validation, during training)."""
    p = grouped_probs(predict_logits(model, images, size, mean, std), positive).numpy()
    return binary_metrics(y, p, labels=labels)


def batch_indices(n_train: int, batch: int, epoch: int, seed: int, rank: int, world: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed * 1000 + epoch).permutation(n_train)
    per_rank = max(1, n_train // world)
    mine = perm[rank::world][:per_rank]
    out = [mine[i:i + batch] for i in range(0, len(mine), batch)]
    return [b for b in out if len(b) > 1] or [mine]


def batch_inputs(lp: Loop, bi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                                     torch.Tensor | None, dict | None]:
    """A batch's [0,1] pixels for the student and (when the teacher runs live) for the teacher, hard labels and
    (from the cache, if any) teacher logits and feature targets, on the device."""
    dev = lp.train_x.device
    if lp.cached is None:
        big = lp.train_x[bi.to(dev)]
        small = None if lp.train_small is None else lp.train_small[bi.to(dev)]
        xt01, x01 = augment_pair(big, small, lp.big, lp.size, lp.gen, lp.cfg.augment)
        return x01, xt01, lp.train_y[bi.to(dev)], None, None
    views, logits, feats = lp.cached
    v = torch.randint(0, views.shape[0], (len(bi),), generator=lp.gen)
    x01 = views[v, bi].to(dev).float() / 255.0
    if lp.st.teacher_flips:
        x01 = random_flips(x01, lp.gen)
    targets = {k: t[v, bi].to(dev) for k, t in feats.items()} if feats else None
    return x01, None, lp.train_y[bi.to(dev)], logits[v, bi].to(dev), targets


def random_flips(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image of a batch flipped horizontally and/or vertically, each with probability 1/2."""
    h, v = (torch.rand(2, len(x), generator=gen) < 0.5).to(x.device).view(2, -1, 1, 1, 1)
    x = torch.where(h, x.flip(3), x)
    return torch.where(v, x.flip(2), x)


def mixup(x01: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator,
          teacher_x01: torch.Tensor | None = None):
    """One mixing weight per batch (Zhang et al. 2018); the teacher, when there is one, sees the same mix of its
    own pixels (``teacher_x01``)."""
    lam = float(rng.beta(alpha, alpha))
    perm = torch.as_tensor(rng.permutation(len(x01)), device=x01.device)
    mixed_t = None if teacher_x01 is None else lam * teacher_x01 + (1 - lam) * teacher_x01[perm]
    return lam * x01 + (1 - lam) * x01[perm], y[perm], lam, mixed_t


def dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was asked for but no CUDA GPU is available; use cpu or auto")
    return torch.device(name)
