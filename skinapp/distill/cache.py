"""The teacher-logit cache: the teacher's pass over K augmented views of every training image, done once."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch

from ..data import augment_pair
from . import teacher as _teacher
from .config import TrainConfig
from .progress import ProgressLog, Stage
from .teacher import Setup

log = logging.getLogger(__name__)

SHIPPED_LOGITS = "teacher-logits"  # a registry's subfolder of teacher logits shipped without their views


def cache_dir() -> Path:
    return Path(os.environ.get("SKINAPP_CACHE") or Path(__file__).resolve().parents[2] / "runs" / "cache")


def cached_augmentations(teacher_views: int, teacher_flips: bool) -> int:
    """Augmentations the teacher must see for ``teacher_views`` views per image. A flip-invariant teacher (a
    fused model averaging over the four flips) gives the four flips of a view one and the same soft target,
    so one cached augmentation serves four views: the student gets a random flip of it at every step."""
    return -(-teacher_views // 4) if teacher_flips else teacher_views


def stored_view(x01: torch.Tensor) -> torch.Tensor:
    """A [0,1] view as the cache keeps it: uint8 on the CPU."""
    return (x01.cpu() * 255).round().clamp(0, 255).to(torch.uint8)


def cache_key(cfg: TrainConfig, st: Setup, hashes: list[str], size: int, decoded_size: int,
              features: list | None = None, own_size_views: bool = False) -> str:
    """What the cached views and logits depend on. ``own_size_views``: the student's views are made from the
    photos decoded at its own size (``augment_pair``), not resized from the teacher's; the teacher's logits are
    the same either way, only the views differ."""
    tc = st.teacher_card
    n_aug = cached_augmentations(cfg.teacher_views, st.teacher_flips)
    parts = [tc.sha256, hashes, cfg.teacher_views, cfg.augment, cfg.seed, size, tc.input_size, decoded_size]
    parts += (["flips", n_aug] if st.teacher_flips else []) + ([features] if features else [])
    parts += ["student views at their own size"] if own_size_views else []
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:20]


def build_teacher_cache(cfg: TrainConfig, st: Setup, images: torch.Tensor, hashes: list[str], size: int,
                        progress: ProgressLog, rank: int = 0, folds: torch.Tensor | None = None,
                        shipped: Path | None = None, features=None, check=None, small: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """K augmented views of every training image at the student's size, with the teacher's logits on each.

    The teacher then costs K forward passes per image once, instead of one per image per epoch, and the same
    cache serves every run with this teacher, data, split and augmentation (a temperature sweep, seeds, ...).
    Teacher and student still see exactly the same pixels ("function matching"). ``shipped``: a folder that may
    hold the logits alone (``teacher-logits-KEY.safetensors``, no pixels), shipped beside the registry so a fresh
    install regenerates the seeded views and skips the teacher's pass (checked on a sample first).
    ``features`` (a ``FeatureKD``): the teacher's feature targets are cached with each view as well.
    ``check``: called between chunks of the teacher's pass; raises to stop (a cancel within seconds).
    ``small``: the same photos decoded at the student's size, from which its views are made (``augment_pair``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    key = cache_key(cfg, st, hashes, size, images.shape[-1], features.describe() if features else None,
                    small is not None)
    path = cache_dir() / f"teacher-views-{key}.safetensors"
    n_aug = cached_augmentations(cfg.teacher_views, st.teacher_flips)
    if path.exists():
        d = load_file(str(path))
        progress.emit("cache", message=f"teacher logits loaded from {path.name}", views=n_aug)
        return d["views"], d["logits"], {k[5:]: v for k, v in d.items() if k.startswith("feat.")}
    views = torch.empty(n_aug, len(images), 3, size, size, dtype=torch.uint8)
    logits = torch.empty(n_aug, len(images), len(st.teacher_card.label_names))
    feats: dict[str, torch.Tensor] = {}
    known, known_logits = ((None, None) if features else
                           _shipped_logits(key, (shipped, cache_dir()), logits.shape))
    gen = torch.Generator().manual_seed(cfg.seed * 104729 + 17)
    big = max(size, st.teacher_card.input_size)
    t0 = time.time()
    dev = next(st.teacher.parameters()).device
    stage = Stage(progress, "the teacher's pass over the training photos", n_aug * len(images))
    for k in range(n_aug):
        for i in range(0, len(images), 64):
            x01, view = augment_pair(images[i:i + 64].to(dev), None if small is None else small[i:i + 64].to(dev),
                                     big, size, gen, cfg.augment)
            batch_folds = None if folds is None else folds[i:i + 64]
            if known_logits is not None and k == 0 and i == 0 and not _matches(st, x01[:8], batch_folds,
                                                                                 known_logits[0, :8]):
                log.warning("shipped teacher logits %s do not match this machine's views; recomputing", key)
                known_logits = None
            if known_logits is not None:
                logits[k, i:i + 64] = known_logits[k, i:i + 64]
            else:
                _teacher_pass(st, x01, batch_folds, features, check, logits[k, i:i + 64], feats, (k, i, n_aug,
                                                                                                  len(images)))
            views[k, i:i + 64] = stored_view(view)
            stage.update(k * len(images) + i + len(x01))
        progress.emit("cache", message="computing teacher logits" if known_logits is None else
                      f"views regenerated; teacher logits from {known.name}/", view=k + 1, views=n_aug,
                      elapsed_s=round(time.time() - t0, 1))
    if rank == 0:
        try:
            _save(path, views, logits, feats)
        except (OSError, SafetensorError) as exc:  # minutes of teacher passes are not lost for want of a cache
            log.warning("could not keep the teacher cache in %s (%s); this run goes on without it (set "
                        "SKINAPP_CACHE to a writable folder to reuse it)", path.parent, exc)
    return views, logits, feats


CHUNK = 16  # images per teacher call in the cache pass: the fused teacher takes about 1.4 s for 16 on 2 threads


def _teacher_pass(st: Setup, x01: torch.Tensor, folds, features, check, out: torch.Tensor,
                  feats: dict[str, torch.Tensor], where: tuple[int, int, int, int]) -> None:
    """The teacher on one augmented batch, in chunks with a stop check between them; logits into ``out``,
    feature targets into ``feats`` (allocated on first use) at view k, images i..."""
    k, i, n_aug, n = where
    for j in range(0, len(x01), CHUNK):
        if check is not None:
            check()
        x = x01[j:j + CHUNK]
        if features:
            features.teacher.n = len(x)
        out[j:j + len(x)] = _teacher.teacher_logits(st, x, None if folds is None else folds[j:j + CHUNK]).cpu()
        for name, t in (features.targets() if features else {}).items():
            if name not in feats:
                feats[name] = torch.empty(n_aug, n, *t.shape[1:])
            feats[name][k, i + j:i + j + len(x)] = t.cpu()


def _save(path: Path, views: torch.Tensor, logits: torch.Tensor, feats: dict[str, torch.Tensor]) -> None:
    """The cache with its pixels, and the logits alone (what a registry can ship); each written atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"views": views, "logits": logits} | {f"feat.{k}": v for k, v in feats.items()}
    for name, tensors in ((path, full),
                          (path.with_name(path.name.replace("teacher-views-", "teacher-logits-")), {"logits": logits})):
        tmp = name.with_suffix(f".{os.getpid()}.tmp")
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
            os.replace(tmp, name)
        finally:  # a half-written file of views (gigabytes) is not left behind on a full disk
            if tmp.exists():
                tmp.unlink()


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


def _matches(st: Setup, x01: torch.Tensor, folds: torch.Tensor | None, known: torch.Tensor) -> bool:
    """Shipped logits are used only if the teacher, run here on the first regenerated views, agrees with them."""
    fresh = _teacher.teacher_logits(st, x01, None if folds is None else folds[:len(x01)]).cpu()
    return bool(torch.allclose(fresh, known, atol=2e-3 * max(1.0, float(known.abs().max())), rtol=0))
