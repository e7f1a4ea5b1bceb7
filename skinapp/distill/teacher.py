"""The frozen teacher of a run: which heads it and the student have, what it may see, and its logits."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import DecodedData, LesionDataset, Split, fold_ids, model_input, split_digest
from ..models import flip_invariant, fold_batchnorm, get_arch
from ..protocol import SplitSpec
from ..registry import ModelCard, Registry
from .config import TrainConfig, TrainingError
from .objectives import needs_features

log = logging.getLogger(__name__)


@dataclass
class Setup:
    ds: LesionDataset
    label_names: tuple[str, ...]
    groups: tuple[str, ...]
    head: str
    teacher: nn.Module | None
    teacher_card: ModelCard | None
    teacher_positive: list[int] | None = None  # set when a diagnosis teacher teaches a binary student
    teacher_flips: bool = False  # the teacher's output is the same for all four flips of an image
    crossfit: dict[str, Any] | None = None  # a cross-fitted teacher: which member never saw which fold
    teacher_columns: list[int] | None = None  # the teacher's outputs for a folder with fewer diagnoses

    @property
    def positive(self) -> list[int]:
        """The student's outputs that make up the positive (malignant) class."""
        return [i for i, g in enumerate(self.groups) if g == self.ds.labels[1]]


def load_teacher(registry: Registry, name: str) -> tuple[nn.Module, ModelCard]:
    teacher, tcard = registry.load(name)
    # frozen, so folding its BatchNorms is exact; with channels-last, oneDNN's fast kernels: the fused
    # teacher's pass over a batch of 64 went from 18.6 s to 5.4 s on 2 CPU threads (docs/experiments.md)
    teacher = fold_batchnorm(teacher, tcard.input_size).to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, tcard


@dataclass(frozen=True)
class HeadPlan:
    """The student's outputs, and how the teacher's map onto them."""
    head: str
    label_names: tuple[str, ...]
    groups: tuple[str, ...]
    teacher_positive: list[int] | None = None  # a diagnosis teacher's outputs summed into the positive class
    teacher_columns: list[int] | None = None  # the teacher's outputs for this folder's diagnoses, in its order


def plan_heads(head: str, task: str, ds: LesionDataset, tcard: ModelCard | None) -> HeadPlan:
    """Match a teacher to a dataset folder, from its card alone (the Train page asks before launching).

    A diagnosis teacher teaches a folder whose diagnoses are a subset of its own (its outputs for those, softmax
    renormalised over them) or, through its benign/malignant groups, a binary student of any folder, the
    two-folder layout included. Anything else is refused with the reason."""
    binary_layout = set(ds.diagnoses) <= set(ds.labels)
    t_names = tuple(tcard.label_names) if tcard else ()
    if head == "auto":
        head = "binary" if tcard is None or t_names == ds.labels or binary_layout else "diagnosis"
    if head == "binary":
        return HeadPlan("binary", ds.labels, ds.labels, _positive(task, ds, tcard) if tcard else None)
    names, groups = ds.diagnoses, tuple(ds.groups[d] for d in ds.diagnoses)
    if tcard is None or t_names == names:
        return HeadPlan("diagnosis", names, groups)
    unknown = [d for d in names if d not in t_names]
    if unknown:
        raise TrainingError(f"teacher {tcard.name!r} knows the diagnoses {', '.join(t_names)}; this folder also has "
                            f"{', '.join(unknown)}, which it cannot teach: use the binary head (benign/malignant), "
                            f"or a teacher trained on these diagnoses")
    return HeadPlan("diagnosis", names, groups, teacher_columns=[t_names.index(d) for d in names])


def _positive(task: str, ds: LesionDataset, tcard: ModelCard) -> list[int] | None:
    t_names = tuple(tcard.label_names)
    if t_names == ds.labels:
        return None  # a binary teacher: its own two outputs are the soft targets
    if tcard.task != task:
        raise TrainingError(f"teacher {tcard.name!r} was trained for task {tcard.task!r}, not {task!r}")
    if t_names == ds.diagnoses:  # the folder's own label map says which diagnoses are positive
        return [i for i, d in enumerate(t_names) if ds.groups[d] == ds.labels[1]]
    groups = tuple(tcard.groups or ())
    if len(groups) != len(t_names) or not set(groups) <= set(ds.labels):
        raise TrainingError(f"teacher {tcard.name!r} outputs {list(t_names)} with no {'/'.join(ds.labels)} group "
                            f"for each; it cannot teach a binary student")
    return [i for i, g in enumerate(groups) if g == ds.labels[1]]


def resolve_heads(cfg: TrainConfig, ds: LesionDataset, registry: Registry) -> Setup:
    """The student's head, and how the teacher's outputs map onto it; refuses pairs that cannot be matched."""
    tcard = registry.get(cfg.teacher) if cfg.teacher else None
    plan = plan_heads(cfg.head, cfg.task, ds, tcard)  # from the card, before the weights are read
    teacher, tcard = load_teacher(registry, cfg.teacher) if cfg.teacher else (None, None)
    crossfit = (tcard.fusion or {}).get("crossfit") if tcard is not None else None
    if crossfit and cfg.objectives != ("logit",):
        raise TrainingError(f"teacher {tcard.name!r} is cross-fitted (each image scored by the member that never "
                            f"saw it); objective {cfg.kd!r} needs one teacher on every view: use the logit objective")
    if crossfit and cfg.mixup > 0:
        raise TrainingError(f"teacher {tcard.name!r} is cross-fitted: each image is scored by the member that "
                            f"never saw it, which a mixed image does not have; set mixup to 0")
    # the flip trick serves one cached target to four flipped views: true of the outputs of a teacher averaging
    # over flips, not of its stage features, so feature objectives cache every view
    flips = teacher is not None and flip_invariant(teacher) and not needs_features(cfg.objectives)
    return Setup(ds, plan.label_names, plan.groups, plan.head, teacher, tcard, plan.teacher_positive, flips,
                 crossfit, plan.teacher_columns)


def teacher_logits(st: Setup, x01: torch.Tensor, folds: torch.Tensor | None = None) -> torch.Tensor:
    """The frozen teacher on a [0,1] batch; on a GPU in bfloat16, which halves the cost of patient KD there.

    A cross-fitted teacher scores each training image (``folds``: its fold) with the one member trained without
    that fold, so its soft targets show where it errs on photos it has not seen, not its memory of the labels.
    """
    tc = st.teacher_card
    x = model_input(x01, tc.input_size, tc.mean, tc.std).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
        if st.crossfit is None or folds is None:
            return st.teacher(x).float()
        out = torch.empty(len(x), len(tc.label_names), device=x.device)
        folds = folds.to(x.device)
        for f in folds.unique().tolist():
            sel = folds == f
            out[sel] = st.teacher(x[sel], only=[st.crossfit["members"][f]]).float()
        return out


def check_teacher_split(st: Setup, decoded: DecodedData, split: Split) -> None:
    """A teacher that trained on this run's test images would carry their labels into the student."""
    tc = st.teacher_card
    if tc is None:
        return
    tspec = SplitSpec.of(tc.data, tc.split_seed)
    if tspec is None:
        log.warning("teacher %s predates the locked test split: it may have trained on this run's test images, "
                    "so the student's test numbers are optimistic", tc.name)
        return
    mine = tspec.split(decoded)
    if tc.data.get("digests", {}).get("test") == split_digest(decoded.hashes, mine.test):
        leaked = set(mine.train) & set(split.test)
        if leaked:
            raise TrainingError(f"teacher {tc.name!r} trained on {len(leaked)} image(s) of this run's test split; "
                                f"use test seed {tspec.test_seed} and test fraction {tspec.test_frac} (its own)")


def fold_split(cfg: TrainConfig, st: Setup, decoded: DecodedData, train_idx: list[int],
               val_idx: list[int]) -> tuple[list[int], torch.Tensor | None]:
    """The training images this run uses, and, under a cross-fitted teacher, each one's fold.

    A fold teacher (``folds`` >= 2) leaves its fold out; a student of a cross-fitted teacher must train on
    exactly the split its members were cut from, or some member would score images it was trained on.
    """
    if cfg.folds and st.crossfit:
        raise TrainingError(f"teacher {st.teacher_card.name!r} is cross-fitted; a fold run (--folds) cannot use it")
    need = cfg.folds if cfg.folds else (st.crossfit or {}).get("folds", 0)
    if not need:
        return train_idx, None
    ids = fold_ids([int(decoded.diagnosis_idx[i]) for i in train_idx], [decoded.groups[i] for i in train_idx],
                   need, cfg.split_seed)
    if cfg.folds:
        return [i for i, f in zip(train_idx, ids) if f != cfg.fold], None
    want = st.teacher_card.data.get("split_digest")
    if want != split_digest(decoded.hashes, val_idx) or st.teacher_card.split_seed != cfg.split_seed:
        raise TrainingError(
            f"teacher {st.teacher_card.name!r} is cross-fitted on another split (seed "
            f"{st.teacher_card.split_seed}, data {st.teacher_card.data.get('root')}); distil on the same data with "
            f"split seed {st.teacher_card.split_seed} and validation fraction {st.teacher_card.data.get('val_frac')}")
    return train_idx, torch.tensor(ids)


_HEADS = ("classifier.", "fc.", "head.")


def _member_archs(card: ModelCard) -> dict[str, str]:
    """A teacher card's networks by state-dict prefix: itself, or a fused teacher's members."""
    members = (card.fusion or {}).get("members")
    if members:
        return {f"members.{m['key']}.": m["arch"] for m in members}
    spec = get_arch(card.arch)
    if spec.members:  # a fused architecture trained as one model (fused_lite012)
        return {f"members.{a.rsplit('_', 1)[-1]}.": a for a in spec.members}
    return {"": card.arch}


def init_prefix(card: ModelCard, arch: str) -> str | None:
    """Where in this teacher a student of ``arch`` finds its layers (None: nowhere), read from the card alone."""
    wanted = {arch, get_arch(arch).base} - {None}
    return next((p for p, a in _member_archs(card).items() if a in wanted), None)


def init_from_teacher(student: nn.Module, arch: str, registry: Registry, name: str) -> dict[str, Any]:
    """Start the student from the matching layers of a teacher fine-tuned on skin (as SkinDistilViT initialises
    its student from the teacher's own layers): every tensor but the classifier must be found, same name and
    shape, in the teacher or in one of a fused teacher's members."""
    tmodel, tcard = registry.load(name)
    match = init_prefix(tcard, arch)
    if match is None:
        wanted = {arch, get_arch(arch).base} - {None}
        raise TrainingError(f"teacher {name!r} ({', '.join(_member_archs(tcard).values())}) has no layers that "
                            f"{arch} can start from; {arch} starts from: {', '.join(sorted(wanted))}")
    source, own = tmodel.state_dict(), student.state_dict()
    body = [k for k in own if not k.startswith(_HEADS)]
    copied = [k for k in body if match + k in source and source[match + k].shape == own[k].shape]
    if len(copied) != len(body):
        missing = sorted(set(body) - set(copied))[:3]
        raise TrainingError(f"teacher {name!r} lacks {len(body) - len(copied)} of {arch}'s {len(body)} tensors "
                            f"(e.g. {missing}); it cannot initialise this student")
    own.update({k: source[match + k].to(own[k].dtype) for k in copied})
    student.load_state_dict(own, strict=True)
    log.info("student initialised from %d tensors of %s%s", len(copied), name, f" ({match[:-1]})" if match else "")
    return {"teacher": name, "sha256": tcard.sha256, "member": match[:-1] or None, "tensors": len(copied)}
