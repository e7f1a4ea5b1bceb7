"""Grad-CAM through pytorch_grad_cam, safe on one model shared by many users.

Hooks are registered on the shared model only while a per-model lock is held and are released by the
``with GradCAM(...)`` block; gradients are needed, so this never runs under ``inference_mode``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .data import resize_square
from .models import model_lock

class ExplainError(RuntimeError):
    pass


class GroupTarget:
    """Explain a label that may span several output classes (e.g. every malignant diagnosis): log-sum-exp of
    their logits, which is what the grouped probability grows with."""

    def __init__(self, indices: Sequence[int]):
        self.indices = list(indices)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.dim() == 1:
            return torch.logsumexp(output[self.indices], dim=0)
        return torch.logsumexp(output[:, self.indices], dim=1)


@dataclass(frozen=True)
class CamResult:
    heatmap: np.ndarray  # H x W float32 in [0, 1], at the model's input size
    overlay: np.ndarray  # H x W x 3 uint8
    target: str
    latency_ms: float


def resolve_layers(model: nn.Module, names: str) -> list[nn.Module]:
    """One layer, or several comma-separated (one per member of a fused model; their maps are averaged)."""
    layers = []
    for name in (n.strip() for n in names.split(",")):
        try:
            layers.append(model.get_submodule(name))
        except AttributeError:
            raise ExplainError(f"Grad-CAM layer {name!r} is not in this model") from None
    return layers


def gradcam(model: nn.Module, x: torch.Tensor, layer: str, indices: Sequence[int]) -> np.ndarray:
    """Heatmap for one preprocessed 1x3xHxW input, normalised to [0, 1]."""
    from pytorch_grad_cam import GradCAM  # imported here: it costs seconds at start-up and most commands never need it

    target_layers = resolve_layers(model, layer)
    with model_lock(model), torch.enable_grad():
        with GradCAM(model=model, target_layers=target_layers) as cam:
            maps = cam(input_tensor=x, targets=[GroupTarget(indices)])
        model.zero_grad(set_to_none=True)
    if maps is None or len(maps) == 0:
        raise ExplainError("Grad-CAM produced no map")
    heat = np.nan_to_num(np.asarray(maps[0], dtype=np.float32))
    lo, hi = float(heat.min()), float(heat.max())
    return (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)


def overlay(img: Image.Image, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a jet-coloured heatmap over the photo at the heatmap's size."""
    h, w = heatmap.shape
    base = np.asarray(resize_square(img, h) if h == w else img.resize((w, h)), dtype=np.float32)
    colour = _jet(heatmap)
    out = (1 - alpha) * base + alpha * colour
    return np.clip(out, 0, 255).astype(np.uint8)


def _jet(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0, 1)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.concatenate([r, g, b], axis=-1) * 255.0


def explain(predictor, img: Image.Image, target: str | None = None, alpha: float = 0.45) -> CamResult:
    """Grad-CAM for the predicted task label (or ``target``) of a Predictor on one image."""
    card = predictor.card
    t0 = time.perf_counter()
    x = predictor.preprocess(img)
    if target is None:
        p = float(predictor.probabilities(predictor.logits(x))[0])
        target = card.task_labels[1] if p >= 0.5 else card.task_labels[0]
    if target not in card.task_labels:
        raise ExplainError(f"unknown Grad-CAM target {target!r}; choose one of: {', '.join(card.task_labels)}")
    indices = [i for i, g in enumerate(card.groups) if g == target]
    heat = gradcam(predictor.model, x, card.cam_layer, indices)
    latency = (time.perf_counter() - t0) * 1000
    return CamResult(heat, overlay(img, heat, alpha), target, latency)
