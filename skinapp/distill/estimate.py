"""How long a run will take on this machine, said before it starts: measured here, not guessed.

The run's own preparation is done for real (read, decode and split the photos, load the teacher), so the
estimate knows the exact training set and whether the teacher's outputs for these settings are already cached
or shipped. Then the teacher on one batch, a few real training steps of the student with its objective, and one
validation batch are timed, and scaled by the run's size. Nothing is trained or registered.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ..data import augment_pair
from ..registry import Registry
from .cache import SHIPPED_LOGITS, cache_dir, cache_key, cached_augmentations, stored_view
from .config import TrainConfig
from .loop import Loop, predict_logits, train_step
from .progress import ProgressLog, StopRequest
from .run import Prepared, make_loop, prepare
from .teacher import teacher_logits


@dataclass(frozen=True)
class Estimate:
    prepare_s: float  # reading and decoding the photos, loading the teacher: measured whole
    teacher_s: float  # the teacher's pass over the cached views (a check of 8 photos when its logits ship)
    teacher_pass: str  # "cached", "shipped logits", "to compute", "live at every step" or "none"
    views_s: float  # augmenting the cached views (also when the teacher's logits are known)
    train_s: float
    validate_s: float  # one validation pass per epoch, and the final calibration and test report
    n_train: int
    steps: int
    step_s: float
    teacher_image_s: float | None
    threads: int

    @property
    def total_s(self) -> float:
        return self.prepare_s + self.teacher_s + self.views_s + self.train_s + self.validate_s

    def as_dict(self) -> dict:
        out = {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}
        return out | {"total_s": round(self.total_s, 1), "summary": self.summary()}

    def summary(self) -> str:
        parts = [f"{_clock(self.prepare_s)} preparing", f"{_clock(self.train_s)} training ({self.steps} steps of "
                 f"{self.step_s:.2f} s on {self.n_train} photos)"]
        if self.teacher_pass in ("to compute", "shipped logits"):
            parts.insert(1, f"{_clock(self.teacher_s + self.views_s)} for the teacher's pass"
                            + (" (its logits ship with the app: only the views are made)"
                               if self.teacher_pass == "shipped logits" else ""))
        elif self.teacher_pass == "cached":
            parts.insert(1, "the teacher's outputs are already cached")
        elif self.teacher_pass == "live at every step":
            parts[-1] += ", the teacher running at every step"
        return f"about {_clock(self.total_s)} on this machine ({self.threads} threads): " + ", ".join(parts)


def _clock(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


def estimate(cfg: TrainConfig, registry: Registry | None = None, steps: int = 3) -> Estimate:
    """Time the parts of the run ``cfg`` describes; the machine's load now is in the numbers."""
    cfg.validate()
    registry = registry or Registry(cfg.weights_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    stop, progress, lp = StopRequest(None), ProgressLog(None), None
    try:
        t0 = time.perf_counter()
        p = prepare(cfg, registry, progress, stop)
        lp = make_loop(cfg, p, registry, progress, stop)
        return _measure(cfg, p, lp, registry, time.perf_counter() - t0, steps)
    finally:
        stop.restore()
        if lp is not None and lp.features:
            lp.features.close()


def _measure(cfg: TrainConfig, p: Prepared, lp: Loop, registry: Registry, prepare_s: float, steps: int
             ) -> Estimate:
    n_train, batch = len(p.train_idx), min(cfg.batch_size, len(p.train_idx))
    bi = torch.arange(batch)
    t0 = time.perf_counter()
    xt01, x01 = _augment(lp, batch)  # the views' augmentation, as the cache makes them
    views_per_image = (time.perf_counter() - t0) / batch
    teacher_image_s, teacher_s, views_s, how = None, 0.0, 0.0, "none"
    if p.st.teacher is not None:
        teacher_image_s, lp_cache = _time_teacher(lp, xt01, x01)
        how = "live at every step" if cfg.teacher_views == 0 else _cache_state(cfg, p, lp, registry)
        if cfg.teacher_views > 0:
            n_aug = cached_augmentations(cfg.teacher_views, p.st.teacher_flips)
            views_s = 0.0 if how == "cached" else n_aug * n_train * views_per_image
            teacher_s = {"cached": 0.0, "shipped logits": 8 * teacher_image_s}.get(how, n_aug * n_train
                                                                                   * teacher_image_s)
            lp.cached = lp_cache
    step_s = _time_steps(lp, bi, steps)
    n_steps = len(lp.batches(0)) * cfg.epochs
    per_image = _time_forward(lp, p.size)
    n_eval = len(p.split.val) * (cfg.epochs + 1) + len(p.split.test)
    return Estimate(prepare_s, teacher_s, how, views_s, n_steps * step_s, n_eval * per_image, n_train, n_steps,
                    step_s, teacher_image_s, torch.get_num_threads())


def _augment(lp: Loop, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    small = None if lp.train_small is None else lp.train_small[:batch]
    return augment_pair(lp.train_x[:batch], small, lp.big, lp.size, lp.gen, lp.cfg.augment)


STEP_BUDGET_S = 5.0  # the student's steps are timed for about this long (at least ``steps`` of them)
MAX_STEPS = 20
TEACHER_PHOTOS = 8  # photos the teacher is timed on: its pass is long, the estimate should not be


def _time_teacher(lp: Loop, x01: torch.Tensor, views: torch.Tensor) -> tuple[float, tuple]:
    """Seconds per photo of the teacher's forward (after a warm-up), and a one-view cache of this batch holding
    the teacher's logits and feature targets (those of the timed photos, repeated: values do not change the
    cost), so the student's steps run exactly as they will on the real cache."""
    st, features, n = lp.st, lp.features, min(TEACHER_PHOTOS, len(x01))
    if features:
        features.teacher.n = 2
    teacher_logits(st, x01[:2])
    if features:
        features.teacher.n = n
    t0 = time.perf_counter()
    logits = teacher_logits(st, x01[:n]).cpu()
    per_image = (time.perf_counter() - t0) / n
    feats = features.targets() if features else {}
    reps = -(-len(x01) // n)

    def fill(t: torch.Tensor) -> torch.Tensor:
        return t.cpu().repeat(reps, *[1] * (t.dim() - 1))[:len(x01)][None]

    return per_image, (stored_view(views)[None], fill(logits), {k: fill(v) for k, v in feats.items()})


def _cache_state(cfg: TrainConfig, p: Prepared, lp: Loop, registry: Registry) -> str:
    """Whether the teacher's pass is already done for exactly these settings (the run's own cache key)."""
    key = cache_key(cfg, p.st, [p.decoded.hashes[i] for i in p.train_idx], p.size, lp.train_x.shape[-1],
                    lp.features.describe() if lp.features else None, lp.train_small is not None)
    if (cache_dir() / f"teacher-views-{key}.safetensors").exists():
        return "cached"
    shipped = [registry.root / SHIPPED_LOGITS, cache_dir()]
    if not lp.features and any((f / f"teacher-logits-{key}.safetensors").exists() for f in shipped):
        return "shipped logits"
    return "to compute"


def _time_steps(lp: Loop, bi: torch.Tensor, steps: int, budget_s: float = STEP_BUDGET_S) -> float:
    """The median of at least ``steps`` real training steps (more, up to ``MAX_STEPS``, while they fit in
    ``budget_s``: a few quick steps on an idle machine read low), after one warm-up step. A short run's one-cycle
    schedule may have fewer steps than that: a constant one stands in, at the same cost."""
    lp.sched = torch.optim.lr_scheduler.ConstantLR(lp.opt, factor=1.0, total_iters=0)
    lp.net.train()
    train_step(lp, bi)
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < max(1, steps) or (len(times) < MAX_STEPS and time.perf_counter() < t_end):
        t0 = time.perf_counter()
        train_step(lp, bi)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _time_forward(lp: Loop, size: int) -> float:
    """Seconds per photo of the student's evaluation forward (validation, calibration, the test report)."""
    imgs = lp.train_x[:64].cpu()
    predict_logits(lp.model, imgs[:2], size, lp.mean, lp.std)
    t0 = time.perf_counter()
    predict_logits(lp.model, imgs, size, lp.mean, lp.std)
    return (time.perf_counter() - t0) / len(imgs)
