"""Grad-CAM through pytorch_grad_cam, safe on one model shared by many users.

Hooks are registered on the shared model only while a per-model lock is held and are released by the
``with GradCAM(...)`` block; gradients are needed, so this never runs under ``inference_mode``.
"""
from __future__ import annotations

import ctypes
import functools
import time
from dataclasses import dataclass, field
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
    target: str
    latency_ms: float
    image: Image.Image = field(repr=False)  # the photo explained, for ``overlay``
    alpha: float = 0.45

    @functools.cached_property
    def overlay(self) -> np.ndarray:
        """H x W x 3 uint8, drawn when asked: the pages draw their own over the square they keep, and on a 12 MP
        photo this one takes 0.3-0.4 s."""
        return overlay(self.image, self.heatmap, self.alpha)


def resolve_layers(model: nn.Module, names: str) -> list[nn.Module]:
    """One layer, or several comma-separated (one per member of a fused model; their maps are averaged)."""
    layers = []
    for name in (n.strip() for n in names.split(",")):
        try:
            layers.append(model.get_submodule(name))
        except AttributeError:
            raise ExplainError(f"Grad-CAM layer {name!r} is not in this model") from None
    return layers


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to trim
        return None


def release_freed_memory() -> None:
    """Hand freed heap back to the OS. A Grad-CAM of the fused teacher allocates and frees about 0.9 GB of
    activations and gradients, which glibc otherwise keeps: measured in one process, 1.0 GB resident after
    loading the teacher, 1.9 GB after a Grad-CAM without this, 1.0 GB with it (issue #14). Called only once the
    Grad-CAM object is gone: while it lives it still holds those tensors and there is nothing to trim."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


#: class-activation methods a card may name: Grad-CAM (Selvaraju et al. 2017) weighs each channel by its mean
#: gradient; HiResCAM (Draelos & Carin 2020) multiplies activations by gradients position by position; LayerCAM
#: (Jiang et al. 2021) keeps only positive gradients position by position, which keeps shallow, high-resolution
#: layers readable and lets several layers be combined
CAM_NAMES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "layercam": "LayerCAM"}
CAM_METHODS = tuple(CAM_NAMES)


def cam_name(method: str) -> str:
    """How a page or report names a card's map."""
    return CAM_NAMES.get(method, method)


def load_cam_library(method: str = "gradcam") -> None:
    """Import the activation-map library now (1.2 s the first time here: it imports OpenCV and more), e.g. in the
    background while a page waits for its first photo. A second importer waits for a first one to finish."""
    _cam_class(method)


def _cam_class(method: str):
    import pytorch_grad_cam as pgc  # imported here: it costs seconds at start-up and most commands never need it

    classes = {"gradcam": pgc.GradCAM, "hirescam": pgc.HiResCAM, "layercam": pgc.LayerCAM}
    if method not in classes:
        raise ExplainError(f"unknown class-activation method {method!r}; choose one of: {', '.join(CAM_METHODS)}")
    return classes[method]


def gradcam(model: nn.Module, x: torch.Tensor, layer: str, indices: Sequence[int], method: str = "gradcam"
            ) -> np.ndarray:
    """Heatmap for one preprocessed 1x3xHxW input, normalised to [0, 1]; several layers (comma-separated) are
    each scaled to the input's size and averaged."""
    cam_class = _cam_class(method)
    target_layers = resolve_layers(model, layer)
    with model_lock(model), torch.enable_grad():
        with cam_class(model=model, target_layers=target_layers) as cam:
            maps = cam(input_tensor=x, targets=[GroupTarget(indices)])
        model.zero_grad(set_to_none=True)
        del cam  # it holds the outputs, activations and gradients: freed here, so the trim below can return them
    release_freed_memory()
    if maps is None or len(maps) == 0:
        raise ExplainError("Grad-CAM produced no map")
    heat = np.nan_to_num(np.asarray(maps[0], dtype=np.float32))
    lo, hi = float(heat.min()), float(heat.max())
    return (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)


#: the longest side an overlay is drawn at: the photo's own resolution up to this (a 49-MP photo is not redrawn
#: whole), never the model's 96-260 px input
OVERLAY_MAX_SIDE = 1024


def overlay(img: Image.Image, heatmap: np.ndarray, alpha: float = 0.45, max_side: int = OVERLAY_MAX_SIDE
            ) -> np.ndarray:
    """The heatmap over the region of the photo the model saw (its centre square), at the photo's resolution
    (up to ``max_side``): the map is upsampled smoothly, coloured with viridis (perceptually uniform, readable
    in grey and by most colour-blind readers), and blended in proportion to its value, so where the model did
    not look the photo shows through, barely tinted."""
    side = max(1, min(min(img.size), max_side))
    base = np.asarray(resize_square(img, side), dtype=np.float32)
    heat = np.asarray(Image.fromarray(np.clip(heatmap, 0, 1).astype(np.float32), mode="F")
                      .resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32).clip(0, 1)
    weight = alpha * (0.1 + 0.9 * heat)[..., None]  # a faint tint everywhere, strong where it looked
    out = (1 - weight) * base + weight * viridis(heat)
    return np.clip(out, 0, 255).astype(np.uint8)


# viridis as a 6th-degree polynomial per channel (Matt Zucker's fit of matplotlib's map: within 1.5% of it)
_VIRIDIS = np.array([
    [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
    [0.1050930431085774, 1.404613529898575, 1.384590162594685],
    [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
    [-4.634230498983486, -5.799100973351585, -19.33244095627987],
    [6.228269936347081, 14.17993336680509, 56.69055279121613],
    [4.776384997670288, -13.74514537774601, -65.35303263337234],
    [-5.435455855934631, 4.645852612178535, 26.3124352495832]])


def viridis(v: np.ndarray) -> np.ndarray:
    """RGB in 0..255 for values in [0, 1]."""
    t = np.clip(np.asarray(v, dtype=np.float64), 0, 1)[..., None]
    rgb = np.zeros(t.shape[:-1] + (3,))
    for c in _VIRIDIS[::-1]:
        rgb = rgb * t + c
    return (np.clip(rgb, 0, 1) * 255.0).astype(np.float32)


def legend(width: int = 256, height: int = 14) -> np.ndarray:
    """A colour bar for the overlay: low contribution on the left, high on the right."""
    return np.repeat(viridis(np.linspace(0, 1, width))[None], height, axis=0).astype(np.uint8)


def explain(predictor, img: Image.Image, target: str | None = None, alpha: float = 0.45) -> CamResult:
    """Grad-CAM for the predicted task label (at 0.5, or ``target``: the page passes the verdict it shows at the
    user's threshold) of a Predictor on one image. ``latency_ms`` is the map's own time: the first map of a process
    also imports the map library (1.2 s) and, for an ONNX copy, loads the PyTorch model it runs on (and timm, about
    4 s), which are not counted."""
    card = predictor.card
    network = predictor.cam_model()
    load_cam_library(card.cam_method)
    t0 = time.perf_counter()
    x = predictor.preprocess(img)
    if target is None:
        p = float(predictor.probabilities(predictor.logits(x))[0])
        target = card.task_labels[1] if p >= 0.5 else card.task_labels[0]
    if target not in card.task_labels:
        raise ExplainError(f"unknown Grad-CAM target {target!r}; choose one of: {', '.join(card.task_labels)}")
    indices = [i for i, g in enumerate(card.groups) if g == target]
    heat = gradcam(network, x, card.cam_layer, indices, card.cam_method)
    latency = (time.perf_counter() - t0) * 1000
    return CamResult(heat, target, latency, img, alpha)
