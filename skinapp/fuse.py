"""A teacher fused from registered models (Karim et al. 2024 fuse three networks), with flipped test-time views.

Nothing is trained: the fused network averages its members' probabilities over the members and the views, and
its temperature is fitted on the validation split its members share (the split they chose their best epochs on);
it is reported on their locked test split.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

from .data import scan_dataset
from .inference import Predictor, calibrate_on_split
from .models import build_fused
from .registry import DuplicateModelError, ModelCard, Registry, RegistryError, check_name

log = logging.getLogger(__name__)

VIEW_SETS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "flips": ("identity", "hflip", "vflip", "rot180"),
}
#: Fields every member must share: same outputs, same preprocessing scale, same validation split.
SHARED = ("label_names", "groups", "task", "task_labels", "mean", "std", "split_seed")


class FusionError(RegistryError):
    pass


def check_members(cards: Sequence[ModelCard]) -> None:
    if len(cards) < 2:
        raise FusionError(f"a fused model needs at least two members; got {len(cards)}")
    names = [c.name for c in cards]
    if len(set(names)) != len(names):
        raise FusionError(f"members must be different models; got {', '.join(names)}")
    for c in cards:
        if c.fusion:
            raise FusionError(f"member {c.name!r} is itself fused; fuse its members instead")
        if c.runtime != "torch":
            raise FusionError(f"member {c.name!r} is an ONNX Runtime copy; fuse its source {c.source!r} instead")
    first = cards[0]
    for c in cards[1:]:
        for f in SHARED:
            if getattr(c, f) != getattr(first, f):
                raise FusionError(f"members {first.name!r} and {c.name!r} differ in {f}: "
                                  f"{getattr(first, f)!r} vs {getattr(c, f)!r}")
        a = (first.data.get("split_digest"), first.data.get("digests"))
        b = (c.data.get("split_digest"), c.data.get("digests"))
        if a != b:
            raise FusionError(f"members {first.name!r} and {c.name!r} were validated on different splits "
                              f"(validation digest {str(a[0])[:12]} vs {str(b[0])[:12]}; test digests "
                              f"{'match' if a[1] == b[1] else 'differ'})")


def crossfit_plan(cards: Sequence[ModelCard]) -> dict[str, Any]:
    """Which member scores which fold of the training split: member i must be the one trained without fold i."""
    folds = [int(c.train.get("folds") or 0) for c in cards]
    if folds[0] < 2 or any(f != folds[0] for f in folds) or len(cards) != folds[0]:
        raise FusionError(f"a cross-fitted fusion needs one member per fold, each trained with the same --folds; "
                          f"got {len(cards)} member(s) with folds {folds}")
    by_fold = {int(c.train.get("fold", -1)): c for c in cards}
    if sorted(by_fold) != list(range(folds[0])):
        raise FusionError(f"members leave out folds {sorted(int(c.train.get('fold', -1)) for c in cards)}; "
                          f"each of 0..{folds[0] - 1} must be left out by exactly one member")
    return {"folds": folds[0], "members": [_key(by_fold[f].name) for f in range(folds[0])]}


def _common_cam_method(cards: Sequence[ModelCard]) -> str:
    """One method makes a fused model's map (the members' maps are averaged): theirs when they agree."""
    methods = {c.cam_method for c in cards}
    return methods.pop() if len(methods) == 1 else "gradcam"


def _key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def fuse_models(registry: Registry, members: Sequence[str], name: str, data: str, views: str = "flips",
                dtype: str = "float32", label_map: str | None = None, overwrite: bool = False,
                default: bool = False, description: str = "", crossfit: bool = False) -> ModelCard:
    """Register a teacher fused from ``members``, calibrated and measured on their validation split.

    ``crossfit``: the members are fold teachers (``train-teacher --folds K --fold k``); the fusion of all of them
    serves new photos, and distillation scores each training image with the member that never saw it.
    """
    if views not in VIEW_SETS:
        raise FusionError(f"unknown views {views!r}; choose one of: {', '.join(VIEW_SETS)}")
    taken = None if overwrite else registry.name_taken(check_name(name))
    if taken:  # before minutes of calibration
        raise DuplicateModelError(taken)
    cards = [registry.get(m) for m in members]
    check_members(cards)  # before loading: an ONNX copy has no state dict to fuse
    loaded = [registry.load(m) for m in members]
    fusion = {"members": [{"key": _key(c.name), "name": c.name, "arch": c.arch, "input_size": c.input_size,
                           "sha256": c.sha256} for c in cards],
              "views": list(VIEW_SETS[views])}
    if crossfit:
        fusion["crossfit"] = crossfit_plan(cards)
    model = build_fused(fusion, len(cards[0].label_names))
    for (net, _), spec in zip(loaded, fusion["members"]):
        model.members[spec["key"]].load_state_dict(net.state_dict(), strict=True)
    first = cards[0]
    card = ModelCard(
        name=name, role="teacher", arch="fused", label_names=first.label_names, groups=first.groups,
        task=first.task, task_labels=first.task_labels, input_size=max(c.input_size for c in cards),
        mean=first.mean, std=first.std, split_seed=first.split_seed, data=first.data, fusion=fusion,
        cam_layer=",".join(f"members.{_key(c.name)}.{layer}" for c in cards for layer in c.cam_layer.split(",")),
        cam_method=_common_cam_method(cards),
        train={"fused_from": list(members), "views": views,
               "train_time_s": round(sum(float(c.train.get("train_time_s", 0.0)) for c in cards), 1)},
        description=description or f"Fused from {', '.join(members)}: mean probability over members and "
                                   f"{len(VIEW_SETS[views])} view(s)")
    if dtype == "float16":  # calibrated on the weights as they will be stored
        model.half()
    model.float()
    # calibrated before it is registered: a folder that is not the members' own data leaves no model behind
    temp, metrics, test_metrics = calibrate_on_split(Predictor(model, card), scan_dataset(data, first.task, label_map))
    log.info("fused %s: val AUC %.4f at T = %.3f", name, metrics["auc"], temp)
    card = dataclasses.replace(card, temperature=temp, metrics=metrics, test_metrics=test_metrics)
    registry.register(model, card, overwrite=overwrite, dtype=dtype)
    return registry.set_default(name) if default else registry.get(name)
