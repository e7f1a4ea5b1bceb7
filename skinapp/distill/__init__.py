"""Teacher training and knowledge distillation (Hinton et al. 2015), single-process or under torchrun (DDP/gloo).

Where things are:

- ``config``: ``TrainConfig``, the one source of training defaults, bounds and help (the CLI's arguments and the
  Train page's form are generated from it), and each architecture's default schedule (``recipe``).
- ``kd``: the distillation objective.
- ``teacher``: the frozen teacher: which heads it and the student have, what it may see, its logits.
- ``cache``: the teacher's logits on K augmented views of every training image, computed once and reused.
- ``loop``: ``train_one_epoch`` and ``evaluate``.
- ``finish``: calibration on validation, the report on the locked test split, the card, registration.
- ``run``: ``train``, which strings them together.

Progress goes to a JSON-lines file a UI can follow; a stop file or SIGTERM ends a run cleanly, and a model is
registered only when a run completes, so nothing half-written ever appears in the registry.
"""
from .cache import SHIPPED_LOGITS, build_teacher_cache, cache_dir, cached_augmentations
from .config import (AUGMENT, DEFAULT_ARCH, DEFAULT_STUDENT_ARCH, DEFAULT_TEMPERATURE, DEVICES, HEADS, RECIPES,
                     Recipe, TrainConfig, TrainingError, add_arguments, default, from_arguments, option, recipe)
from .kd import grouped_teacher_logits, kd_loss
from .loop import evaluate, random_flips, resolve_device, train_one_epoch
from .progress import ProgressLog, StopRequest
from .run import check_new_run, train
from .teacher import Setup, fold_split, resolve_heads, teacher_logits

__all__ = ["AUGMENT", "DEFAULT_ARCH", "DEFAULT_STUDENT_ARCH", "DEFAULT_TEMPERATURE", "DEVICES", "HEADS", "RECIPES",
           "SHIPPED_LOGITS", "ProgressLog", "Recipe", "Setup", "StopRequest", "TrainConfig", "TrainingError",
           "add_arguments", "build_teacher_cache", "check_new_run", "cache_dir", "cached_augmentations", "default", "evaluate",
           "fold_split", "from_arguments", "grouped_teacher_logits", "kd_loss", "option", "random_flips", "recipe",
           "resolve_device", "resolve_heads", "teacher_logits", "train", "train_one_epoch"]
