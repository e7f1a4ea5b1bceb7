"""Distillation objectives by name (``distill --kd NAME[+NAME]``): what the student learns from its teacher.

- ``logit`` (Hinton et al. 2015): the teacher's outputs softened at temperature T.
- ``attention`` (Zagoruyko & Komodakis 2017): where each stage looks. Each student stage is paired with the
  teacher stage of the same stride; the pairing is stored in the card.
- ``relational`` (SSD-KD, Wang et al. 2022; distance and angle as in RKD, Park et al. 2019): the geometry of the
  batch (inter-instance: distances and angles between images' embeddings), of each image (intra-instance: how
  its positions relate to one another), a self-supervised rotation task, and soft outputs weighted per image
  by how sure the teacher is of the true class.
- ``function-matching`` (Beyer et al. 2022): the logit objective on views both networks see after strong
  mixing (mixup or cutmix on every batch), with the teacher run live, for a long ("patient") schedule.

The hard-label cross-entropy is always there (weight alpha); the logit soft term (weight 1 - alpha) is used by
``logit``, ``function-matching`` and (weighted) ``relational``; the feature terms are added with their weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import torch
import torch.nn.functional as F

from .config import TrainingError


@dataclass(frozen=True)
class Objective:
    name: str
    summary: str  # one line, shown on the Train page
    reference: str
    features: bool  # needs the teacher's and the student's stage features, so the teacher runs live
    knobs: tuple[str, ...] = ()  # its TrainConfig fields (defaults, bounds, help there), recorded in the card


KD_OBJECTIVES: Mapping[str, Objective] = MappingProxyType({o.name: o for o in (
    Objective("logit", "match the teacher's softened outputs (temperature T, weight 1 - alpha)",
              "Hinton et al. 2015", False),
    Objective("attention", "match where each stage of the network looks (attention maps of paired stages)",
              "Zagoruyko & Komodakis 2017", True, ("kd_beta",)),
    Objective("relational", "match distances and angles between images and between positions in each image, "
                            "plus rotation prediction and confidence-weighted soft outputs",
              "Wang et al. 2022 (SSD-KD); Park et al. 2019 (RKD)", True, ("kd_relation", "kd_rotation")),
    Objective("function-matching", "teacher and student see the same strongly mixed views (mixup or cutmix), "
                                   "teacher run live, long schedule",
              "Beyer et al. 2022", False, ("kd_mix",)),
)})


def parse_kd(spec: str) -> tuple[str, ...]:
    """``logit+attention`` -> ('logit', 'attention'); each name must be registered and appear once."""
    names = tuple(n.strip() for n in str(spec).split("+"))
    bad = [n for n in names if n not in KD_OBJECTIVES]
    if bad or not names or len(set(names)) != len(names):
        raise TrainingError(f"distillation objective {spec!r} is not one or more of: {', '.join(KD_OBJECTIVES)} "
                            f"joined by '+' (each once)")
    if "function-matching" in names and "logit" in names:
        raise TrainingError("function-matching already is the logit objective (on mixed views); drop 'logit'")
    return names


#: what the Train page offers: each objective, and the one combination the seed papers suggest
CHOICES = (*KD_OBJECTIVES, "logit+attention")


def needs_features(names: tuple[str, ...]) -> bool:
    return any(KD_OBJECTIVES[n].features for n in names)


# ---------------------------------------------------------------- attention transfer

def attention_map(f: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Spatial attention of a feature map (N, C, H, W): mean over channels of f^2, optionally pooled to
    ``size``, flattened and L2-normalised, as in Zagoruyko & Komodakis's code."""
    a = f.pow(2).mean(1, keepdim=True)
    if size is not None and tuple(a.shape[-2:]) != tuple(size):
        a = F.adaptive_avg_pool2d(a, size)
    return F.normalize(a.flatten(1), dim=1)


def attention_loss(student: list[torch.Tensor], targets: list[torch.Tensor], beta: float = 1000.0) -> torch.Tensor:
    """beta / 2 * sum over stage pairs of mean((a_s - a_t)^2); ``targets``: the teacher's attention vectors,
    ``attention_map(t, size of the student's map)``, computed live or read from the cache."""
    terms = [(attention_map(s) - t).pow(2).mean() for s, t in zip(student, targets)]
    return beta / 2 * torch.stack(terms).sum()


# ---------------------------------------------------------------- relational knowledge

def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e)
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d / d[off].mean().clamp_min(1e-12)


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Huber loss between the batch's pairwise distances, each divided by its mean (RKD-D)."""
    ds, dt = _normalised_distances(student), _normalised_distances(teacher.detach())
    off = ~torch.eye(len(student), dtype=torch.bool, device=student.device)
    return F.smooth_l1_loss(ds[off], dt[off])


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between i and k, for all (i, j, k)."""
    v = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # v[j, i] = unit(e_i - e_j)
    return torch.bmm(v, v.transpose(1, 2)).flatten()


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Huber loss between the angles that every triplet of the batch forms (RKD-A)."""
    return F.smooth_l1_loss(_angles(student), _angles(teacher.detach()))


def intra_relations(f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's position-by-position cosine similarity (N, P, P), its map pooled to ``size`` first."""
    p = F.adaptive_avg_pool2d(f, size).flatten(2).transpose(1, 2)  # N x P x C
    p = F.normalize(p, dim=2)
    return p @ p.transpose(1, 2)


def intra_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the intra-instance relation matrices; ``target``: the teacher's,
    ``intra_relations(t, size of the student's map)``."""
    return F.mse_loss(intra_relations(student, tuple(student.shape[-2:])), target)


def confidence_weights(teacher_logits: torch.Tensor, targets: torch.Tensor, groups: list[int] | None = None
                       ) -> torch.Tensor:
    """Per image, the teacher's probability of the true class, scaled to mean 1: SSD-KD trusts the soft outputs
    of images the teacher gets right more. ``groups``: for a diagnosis teacher of a binary student, its
    positive outputs (the true class's probability is then the group's sum)."""
    p = torch.softmax(teacher_logits.detach().float(), dim=1)
    if groups is not None:
        pos = p[:, groups].sum(1)
        w = torch.where(targets == 1, pos, 1 - pos)
    else:
        w = p.gather(1, targets.view(-1, 1)).squeeze(1)
    return w / w.mean().clamp_min(1e-12)


def weighted_kd_loss(student_logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor,
                     weights: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """alpha * CE + (1 - alpha) * T^2 * mean_i w_i KL_i: ``kd_loss`` with each image's soft term weighted."""
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits.detach() / t, dim=1),
                  reduction="none", log_target=True).sum(1)
    return alpha * F.cross_entropy(student_logits, targets) + (1 - alpha) * t * t * (weights * kl).mean()


def rotate_quarters(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image turned by a random multiple of 90 degrees, and which (the self-supervised task's label)."""
    k = torch.randint(0, 4, (len(x),), generator=gen)
    out = torch.stack([torch.rot90(img, int(q), dims=(1, 2)) for img, q in zip(x, k)])
    return out, k.to(x.device)


# ---------------------------------------------------------------- function matching: strong mixing

def cutmix(x01: torch.Tensor, gen: torch.Generator, alpha: float = 1.0, other: torch.Tensor | None = None):
    """Each image with a box pasted from another image of the batch (Yun et al. 2019); box area ~ Beta(a, a).
    ``other``: the same batch at another resolution (the teacher's), given the same box, scaled; then both
    are returned."""
    n, _, h, w = x01.shape
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = (int(torch.randint(0, s, (1,), generator=gen)) for s in (h, w))
    box = (max(cy - cut_h // 2, 0) / h, min(cy + cut_h // 2, h) / h, max(cx - cut_w // 2, 0) / w,
           min(cx + cut_w // 2, w) / w)
    perm = torch.randperm(n, generator=gen).to(x01.device)
    out = [_paste(x, perm, box) for x in (x01, other) if x is not None]
    return out[0] if other is None else tuple(out)


def _paste(x: torch.Tensor, perm: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    h, w = x.shape[-2:]
    y0, y1, x0, x1 = round(box[0] * h), round(box[1] * h), round(box[2] * w), round(box[3] * w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    return out


def strong_mix(x01: torch.Tensor, gen: torch.Generator, alpha: float = 1.0, other: torch.Tensor | None = None):
    """Mixup or cutmix, one chosen per batch, as function matching mixes every view; no labels follow the mix:
    only the teacher's outputs on the mixed pixels are matched. ``other``: the teacher's pixels of the same
    batch, mixed the same way; then (student's, teacher's) are returned."""
    if bool(torch.rand(1, generator=gen) < 0.5):
        return cutmix(x01, gen, alpha, other)
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x01), generator=gen).to(x01.device)
    out = [lam * x + (1 - lam) * x[perm] for x in (x01, other) if x is not None]
    return out[0] if other is None else tuple(out)
