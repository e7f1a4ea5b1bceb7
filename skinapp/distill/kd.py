"""The distillation objective (Hinton et al. 2015), and the soft targets a diagnosis teacher gives a binary student."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def mixed_kd_loss(logits: torch.Tensor, y: torch.Tensor, y2: torch.Tensor, lam: float,
                  teacher_logits: torch.Tensor | None, temperature: float, alpha: float) -> torch.Tensor:
    """``kd_loss`` on a mixup batch: the soft term is the same for both labels, so the mix only reweights the hard one."""
    loss = kd_loss(logits, y, teacher_logits, temperature, alpha)
    if lam < 1.0:
        loss = lam * loss + (1 - lam) * kd_loss(logits, y2, teacher_logits, temperature, alpha)
    return loss


def grouped_teacher_logits(teacher_logits: torch.Tensor, positive: list[int], temperature: float) -> torch.Tensor:
    """Two-class logits whose softmax at ``temperature`` equals the teacher's per-group probabilities at it.

    Lets a binary student distil from a diagnosis teacher through the same ``kd_loss``.
    """
    p = torch.softmax(teacher_logits / temperature, dim=1)
    pos = p[:, positive].sum(dim=1)
    return temperature * torch.stack([1 - pos, pos], dim=1).clamp_min(1e-12).log()
