"""What a training run is: one ``TrainConfig``, whose fields carry their own help, choices and bounds.

This is the one source of training defaults: the CLI's ``train-teacher`` / ``distill`` arguments are generated
from it (``add_arguments``), the Train page reads its defaults and limits from it (``option``, ``default``), and
``TrainConfig.validate`` enforces the same bounds, so no front end can disagree with the engine.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..data import TASKS
from ..models import ARCHITECTURES, PRETRAINED_CHOICES, get_arch, read_checkpoint
from ..protocol import SplitSpec

HEADS = ("auto", "binary", "diagnosis")
AUGMENT = ("none", "standard", "strong")
DEVICES = ("auto", "cpu", "cuda")
ROLES = ("teacher", "student")
DEFAULT_TEMPERATURE = 20.0  # best mean AUC in the temperature sweep (docs/experiments.md); the paper's was 10
#: what `distill` and the Train page train unless told otherwise: the default student's architecture, the one
#: small network here that reaches 0.97x the teacher's AUC (docs/experiments.md, "The default student")
DEFAULT_STUDENT_ARCH = "lite0_tiny"
DEFAULT_ARCH = {"teacher": "efficientnet_lite0", "student": DEFAULT_STUDENT_ARCH}


class TrainingError(ValueError):
    pass


@dataclass(frozen=True)
class Recipe:
    """An architecture's default schedule: the one its shipped model was trained with."""
    epochs: int
    lr: float
    batch_size: int


RECIPES: dict[str, Recipe] = {
    "dsnet": Recipe(30, 3e-3, 64),  # from scratch: long and fast
    "lite0_tiny": Recipe(20, 2e-3, 32),  # ImageNet-initialised: shorter, gentler
    "efficientnet_lite0": Recipe(15, 1e-3, 32),  # the teachers' members (scripts/train_shipped_models.sh)
    "efficientnet_lite1": Recipe(15, 1e-3, 32),
    "efficientnet_lite2": Recipe(15, 1e-3, 32),
    "mobilenetv3_small_100": Recipe(30, 3e-3, 64),
}


def recipe(arch: str) -> Recipe:
    """The default schedule for ``arch`` (dsnet's for an architecture without its own)."""
    return RECIPES.get(arch, RECIPES["dsnet"])


@dataclass(frozen=True)
class Option:
    """How a config field is offered to people: its help, choices, and the closed range it must lie in."""
    help: str = ""
    type: Callable[[str], Any] | None = None  # None: not a command-line argument
    choices: tuple[str, ...] | None = None
    lo: float | None = None
    hi: float | None = None
    roles: tuple[str, ...] = ROLES  # which commands offer it
    flags: tuple[str, ...] = ()  # extra spellings, e.g. -T
    label: str = ""  # how messages name it (default: the field's name in words)


def _opt(default: Any, help: str = "", type: Callable | None = str, **kw: Any) -> Any:
    return field(default=default, metadata={"option": Option(help, type, **kw)})


def _flag(help: str, **kw: Any) -> Any:
    return field(default=False, metadata={"option": Option(help, bool, **kw)})


_OWN = " (default: the architecture's own schedule)"


@dataclass
class TrainConfig:
    data: str = _opt("", "dataset folder (benign/ + malignant/ or one folder per diagnosis)")
    name: str = _opt("", "name to register the model under")
    arch: str | None = _opt(None, "network (default: efficientnet_lite0 for a teacher, lite0_tiny for a student)",
                            choices=tuple(sorted(ARCHITECTURES)))
    role: str = _opt("student", "teacher (hard labels only) or student", None, choices=ROLES)
    teacher: str | None = _opt(None, "registered teacher (default: the default teacher)", roles=("student",))
    task: str = _opt("malignant", "what the two classes are", choices=tuple(TASKS))
    label_map: str | None = _opt(None, "JSON file: diagnosis folder -> benign|malignant")
    head: str = _opt("auto", "binary, diagnosis (one output per diagnosis folder), or auto: the teacher's, else "
                             "binary", choices=HEADS)
    temperature: float = _opt(DEFAULT_TEMPERATURE, "distillation temperature T (best of the sweep: 20)", float,
                              lo=0.5, hi=100.0, roles=("student",), flags=("-T",))
    alpha: float = _opt(0.5, "weight of the hard-label loss (1: no distillation)", float, lo=0.0, hi=1.0,
                        roles=("student",))
    epochs: int | None = _opt(None, "epochs" + _OWN, int, lo=1, hi=1000)
    lr: float | None = _opt(None, "peak learning rate (one-cycle)" + _OWN, float, lo=1e-6, hi=1.0,
                            label="learning rate")
    weight_decay: float = _opt(1e-4, "AdamW weight decay", float, lo=0.0, hi=1.0)
    batch_size: int | None = _opt(None, "batch size" + _OWN, int, lo=2, hi=4096)
    image_size: int | None = _opt(None, "input size in pixels (default: the architecture's)", int, lo=32, hi=1024)
    augment: str = _opt("standard", "training augmentation", choices=AUGMENT)
    seed: int = _opt(0, "initialisation, batch order and augmentation", int, lo=0, hi=2**31 - 1)
    split_seed: int = _opt(0, "moves the validation split only", int, lo=0, hi=2**31 - 1)
    val_frac: float = _opt(0.2, "share of lesions for validation (all choices are made on it)", float,
                           lo=0.01, hi=0.9, label="validation fraction")
    test_frac: float = _opt(0.2, "the locked test split: reported in the card, never used for a choice (0: none)",
                            float, lo=0.0, hi=0.9, label="test fraction")
    test_seed: int = _opt(0, "moves the test split; leave it, or every earlier test number is void", int,
                          lo=0, hi=2**31 - 1)
    metadata: str | None = _opt(None, "CSV with image and lesion_id (or patient_id) columns (default: metadata.csv "
                                      "in the data folder or <folder>-metadata.csv beside it)")
    folds: int = _opt(0, "K >= 2: leave fold --fold of the training split out (a member of a cross-fitted teacher)",
                      int, lo=0, hi=20)
    fold: int = _opt(0, "the fold left out", int, lo=0, hi=19)
    threads: int | None = _opt(None, "CPU threads (default: PyTorch's)", int, lo=1, hi=1024)
    teacher_views: int | None = _opt(None, "precompute teacher logits on this many augmented views per image "
                                           "(0: the teacher live at every step; default: 4, and 0 for "
                                           "function-matching, which mixes every batch anew)", int, lo=0,
                                     hi=64, roles=("student",))
    kd: str = _opt("logit", "distillation objective: logit, attention, relational or function-matching; join "
                            "several with + (e.g. logit+attention)", roles=("student",), label="objective")
    kd_beta: float = _opt(1000.0, "attention: weight of the attention-map term (the paper's beta)", float,
                          lo=0.0, hi=1e5, roles=("student",),
                          label="attention weight beta")
    kd_relation: float = _opt(1.0, "relational: scale of the distance, angle and intra-image terms (25, 50, 10)",
                              float, lo=0.0, hi=100.0, roles=("student",),
                          label="relational scale")
    kd_rotation: float = _opt(0.5, "relational: weight of the self-supervised rotation task", float, lo=0.0,
                              hi=10.0, roles=("student",),
                          label="rotation task weight")
    kd_mix: float = _opt(1.0, "function-matching: Beta(a, a) of each batch's mixup or cutmix", float, lo=0.05,
                         hi=10.0, roles=("student",),
                          label="mixing Beta parameter")
    init_from_teacher: str | None = _opt(None, "start the student from the matching layers of this registered "
                                               "teacher (fine-tuned on skin) instead of ImageNet (SkinDistilViT)",
                                         roles=("student",))
    mixup: float = _opt(0.0, "Beta(a, a) mixup of each batch (0: off); with a teacher it needs --teacher-views 0",
                        float, lo=0.0, hi=10.0)
    device: str = _opt("auto", "auto: a CUDA GPU when there is one", choices=DEVICES)
    pretrained: str = _opt("auto", "none, auto, package, hub, or a checkpoint path")
    drop_rate: float | None = _opt(None, "dropout before the classifier (default: the architecture's)", float,
                                   lo=0.0, hi=0.95)
    weights_dir: str | None = None
    progress: str | None = _opt(None, "append JSON-lines progress here")
    stop_file: str | None = _opt(None, "stop cleanly when this file appears")
    overwrite: bool = _flag("replace a registered model of the same name")
    default: bool = _flag("mark as the default model of its role")
    description: str = _opt("", "one line for the model card")

    def __post_init__(self) -> None:
        self.arch = self.arch or DEFAULT_ARCH.get(self.role, DEFAULT_STUDENT_ARCH)
        plan = recipe(self.arch)
        for key in ("epochs", "lr", "batch_size"):
            if getattr(self, key) is None:
                setattr(self, key, getattr(plan, key))
        if self.teacher_views is None:
            self.teacher_views = 0 if self.live_teacher else 4

    @property
    def objectives(self) -> tuple[str, ...]:
        from .objectives import parse_kd

        return parse_kd(self.kd)

    @property
    def live_teacher(self) -> bool:
        """Objectives that need the teacher on the exact pixels of each step: mixed views (function matching).
        Feature objectives run on cached views too: the cache keeps the teacher's feature targets per view."""
        try:
            return "function-matching" in self.objectives
        except TrainingError:
            return False  # validate() says what is wrong

    @property
    def split_spec(self) -> SplitSpec:
        return SplitSpec(self.val_frac, self.test_frac, self.split_seed, self.test_seed)

    def validate(self) -> None:
        """Every bound of every field, then the rules that join fields; raises on the first one broken."""
        get_arch(self.arch)
        for f in dataclasses.fields(self):
            _check_field(f.name, getattr(self, f.name), f.metadata.get("option"))
        checks = [
            (bool(str(self.data).strip()), "no dataset folder given (data is empty)"),
            (self.val_frac + self.test_frac < 1.0,
             f"test fraction {self.test_frac} must leave training images beside validation fraction {self.val_frac}"),
            (self.folds != 1, f"folds {self.folds} must be 0 (off) or between 2 and 20"),
            (self.folds == 0 or self.fold < self.folds, f"fold {self.fold} must be between 0 and {self.folds - 1}"),
            (not (self.mixup > 0 and self.teacher and self.teacher_views > 0),
             f"mixup {self.mixup} needs the teacher on every mixed batch: set teacher views to 0"),
            (bool(self.objectives) and not (self.live_teacher and self.teacher and self.teacher_views > 0),
             f"objective {self.kd!r} needs the teacher live on every step: set teacher views to 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise TrainingError(msg)
        if self.pretrained not in PRETRAINED_CHOICES:  # a checkpoint path: read now, not after the data
            read_checkpoint(Path(self.pretrained))


def _check_field(name: str, value: Any, opt: Option | None) -> None:
    if opt is None or value is None:
        return
    label = opt.label or name.replace("_", " ")
    if opt.choices and value not in opt.choices:
        raise TrainingError(f"{label} {value!r} must be one of: {', '.join(opt.choices)}")
    if opt.lo is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if opt.type is int:
        ok = ok and float(value).is_integer()
    if not ok or not opt.lo <= value <= opt.hi:
        raise TrainingError(f"{label} {value!r} must be {'a whole number' if opt.type is int else 'a number'} "
                            f"between {opt.lo:g} and {opt.hi:g}")


def option(name: str) -> Option:
    """The help, choices and bounds of a config field (for a form)."""
    f = TrainConfig.__dataclass_fields__.get(name)
    if f is None or "option" not in f.metadata:
        raise KeyError(f"no training option {name!r}; options: {', '.join(sorted(_options()))}")
    return f.metadata["option"]


def default(name: str, role: str = "student", arch: str | None = None) -> Any:
    """A field's default for a role and architecture, exactly as ``TrainConfig`` would fill it in."""
    return getattr(TrainConfig(role=role, arch=arch), name)


def _options() -> dict[str, Option]:
    return {f.name: f.metadata["option"] for f in dataclasses.fields(TrainConfig) if "option" in f.metadata}


def add_arguments(p: argparse.ArgumentParser, role: str) -> None:
    """The ``train-teacher`` (role teacher) or ``distill`` (student) arguments, generated from the config."""
    required = ("data", "name")
    for name, opt in _options().items():
        if opt.type is None or role not in opt.roles:
            continue
        flags = ["--" + name.replace("_", "-"), *opt.flags]
        if opt.type is bool:
            p.add_argument(*flags, dest=name, action="store_true", help=opt.help)
            continue
        value = TrainConfig.__dataclass_fields__[name].default
        kw: dict[str, Any] = {"required": True} if name in required else {"default": value}
        shown = "" if value in (None, "") or "default:" in opt.help else f" (default: {value})"
        p.add_argument(*flags, dest=name, type=opt.type, choices=opt.choices, help=opt.help + shown, **kw)


def from_arguments(args: argparse.Namespace, role: str, **extra: Any) -> TrainConfig:
    """The config a parsed command line asks for (fields not on the command line keep their defaults)."""
    given = {k: getattr(args, k) for k in TrainConfig.__dataclass_fields__ if hasattr(args, k)}
    return TrainConfig(**(given | extra | {"role": role}))
