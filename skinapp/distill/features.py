"""Intermediate features for feature-level distillation: which stages, their pairing, and hooks that read them."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..models import DSNet, FusedNet
from .config import TrainingError


def stage_names(model: nn.Module) -> list[str]:
    """A network's stages in order: timm EfficientNet/MobileNet ``blocks.i``, DSNet's three blocks, and for a
    fused teacher the stages of its first member (its identity view: the photo as it is)."""
    if isinstance(model, FusedNet):
        key = next(iter(model.members))
        return [f"members.{key}.{n}" for n in stage_names(model.members[key])]
    if isinstance(model, DSNet):
        return ["block1", "block2", "block3"]
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential):
        return [f"blocks.{i}" for i in range(len(blocks))]
    raise TrainingError(f"feature distillation does not know the stages of a {type(model).__name__}; it knows "
                        f"DSNet, timm EfficientNet/MobileNet networks and fused teachers of them")


class Tap:
    """Forward hooks that keep the outputs of named modules of the last forward pass (the first ``n`` rows:
    a fused teacher runs its views concatenated, identity first)."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        mods = dict(model.named_modules())
        missing = [n for n in names if n not in mods]
        if missing:
            raise TrainingError(f"no module(s) {missing} in {type(model).__name__}")
        self.names = list(names)
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [mods[n].register_forward_hook(self._keep(n)) for n in names]
        self.n: int | None = None

    def _keep(self, name: str):
        def hook(_m, _inp, out):
            self.out[name] = out if self.n is None else out[:self.n]
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _probe(model: nn.Module, names: Sequence[str], size: int) -> dict[str, tuple[int, int, int]]:
    """Each named stage's output (channels, height, width) for an input of ``size`` pixels, read on a probe image."""
    tap = Tap(model, names)
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
        return {n: tuple(int(d) for d in tap.out[n].shape[1:]) for n in names}
    finally:
        tap.close()
        model.train(was)


def _strides(model: nn.Module, names: list[str], size: int) -> list[int]:
    shapes = _probe(model, names, size)
    return [max(1, round(size / shapes[n][-1])) for n in names]


def stage_shapes(model: nn.Module, size: int) -> dict[str, tuple[int, int, int]]:
    """Each stage's output (channels, height, width) for an input of ``size`` pixels."""
    return _probe(model, stage_names(model), size)


def _input_size(model: nn.Module, size: int) -> int:
    """What a fused teacher's first member sees: the input resized to that member's own size."""
    if isinstance(model, FusedNet):
        return int(model.sizes.get(next(iter(model.members)), size))
    return size


def pair_stages(student: nn.Module, student_size: int, teacher: nn.Module, teacher_size: int
                ) -> list[tuple[str, str]]:
    """Each student stage of stride >= 4 with the deepest teacher stage of the same stride (the nearest
    stride when none is equal), measured on a probe image: stages of equal stride see the same share of the
    lesion, whatever the two input sizes."""
    s_names, t_names = stage_names(student), stage_names(teacher)
    s_strides = _strides(student, s_names, student_size)
    t_strides = [round(s * _input_size(teacher, teacher_size) / teacher_size)
                 for s in _strides(teacher, t_names, teacher_size)]
    pairs = []
    for name, stride in zip(s_names, s_strides):
        if stride < 4:
            continue
        best = min(range(len(t_names)), key=lambda j: (abs(t_strides[j] - stride), -j))
        pairs.append((name, t_names[best]))
    if not pairs:
        raise TrainingError(f"no stage of the student ({s_names}) can be paired with the teacher's")
    return pairs
