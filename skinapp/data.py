"""Dataset folders, label mapping, a leak-free split, in-memory decoding and batch augmentation."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .imageio import InvalidImageError, is_image_file, load_image

log = logging.getLogger(__name__)

DEFAULT_LABEL_MAP: dict[str, str] = {
    "melanoma": "malignant",
    "basal_cell_carcinoma": "malignant",
    "squamous_cell_carcinoma": "malignant",
    "actinic_keratosis": "malignant",
    "nevus": "benign",
    "pigmented_benign_keratosis": "benign",
    "seborrheic_keratosis": "benign",
    "dermatofibroma": "benign",
    "vascular_lesion": "benign",
}
#: task -> (negative label, positive label)
TASKS: dict[str, tuple[str, str]] = {"malignant": ("benign", "malignant"), "melanoma": ("other", "melanoma")}


class DatasetError(ValueError):
    """The dataset folder cannot be used; the message names the folder and what was found."""


@dataclass(frozen=True)
class Sample:
    path: Path
    diagnosis: str  # folder name; "benign"/"malignant" in the two-folder layout
    target: int  # index into the task's labels: 1 = positive


@dataclass
class LesionDataset:
    root: Path
    task: str
    samples: list[Sample]
    diagnoses: tuple[str, ...]  # sorted diagnosis folders that hold images
    groups: dict[str, str] = field(default_factory=dict)  # diagnosis -> task label

    @property
    def labels(self) -> tuple[str, str]:
        return TASKS[self.task]

    def counts(self) -> dict[str, int]:
        c = Counter(s.diagnosis for s in self.samples)
        return {d: c[d] for d in self.diagnoses}

    def class_counts(self) -> dict[str, int]:
        c = Counter(s.target for s in self.samples)
        return {lab: c[i] for i, lab in enumerate(self.labels)}


def get_task(task: str) -> tuple[str, str]:
    try:
        return TASKS[task]
    except KeyError:
        raise DatasetError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}") from None


def read_label_map(label_map: Mapping[str, str] | str | Path | None) -> dict[str, str]:
    """The default mapping with the user's entries merged over it (add a diagnosis or relabel one)."""
    if label_map is None:
        return dict(DEFAULT_LABEL_MAP)
    if isinstance(label_map, (str, Path)):
        path = Path(label_map)
        try:
            label_map = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"label map {path}: cannot be read as JSON ({exc})") from None
        if not isinstance(label_map, dict):
            raise DatasetError(f"label map {path}: expected a JSON object of folder -> benign|malignant")
    out = dict(DEFAULT_LABEL_MAP)
    for k, v in label_map.items():
        if v not in ("benign", "malignant"):
            raise DatasetError(f"label map: {k!r} maps to {v!r}; use 'benign' or 'malignant'")
        out[str(k).lower()] = v
    return out


def scan_dataset(root: str | Path, task: str = "malignant",
                 label_map: Mapping[str, str] | str | Path | None = None) -> LesionDataset:
    """List a dataset folder: benign/ + malignant/ subfolders, or one subfolder per diagnosis."""
    root = Path(root).expanduser()
    neg, pos = get_task(task)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    folders = {d.name: sorted((p for p in d.rglob("*") if is_image_file(p)
                               and not any(part.startswith(".") for part in p.relative_to(d).parts)),
                              key=lambda p: str(p))
               for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    folders = {k: v for k, v in folders.items() if v}
    if not folders:
        loose = sum(1 for p in root.iterdir() if is_image_file(p))
        raise DatasetError(
            f"dataset folder {root} has no images in subfolders (found {loose} loose image(s)); expected "
            f"benign/ and malignant/ subfolders or one subfolder per diagnosis")
    binary_layout = {k.lower() for k in folders} <= {"benign", "malignant"}
    mapping = read_label_map(label_map)
    groups: dict[str, str] = {}
    for name in folders:
        key = name.lower()
        if binary_layout:
            group = key
        elif key not in mapping:
            raise DatasetError(
                f"dataset folder {root}: diagnosis folder {name!r} is not in the label map; known diagnoses: "
                f"{', '.join(sorted(mapping))} (pass a JSON label map to add it)")
        else:
            group = mapping[key]
        if task == "melanoma":
            if binary_layout:
                raise DatasetError(f"dataset folder {root}: the melanoma task needs diagnosis folders "
                                   f"(found only {', '.join(folders)})")
            group = pos if key == "melanoma" else neg
        groups[name] = group
    present = set(groups.values())
    if present != {neg, pos}:
        found = ", ".join(f"{n} ({len(v)})" for n, v in folders.items())
        raise DatasetError(f"dataset folder {root} has only one class ({', '.join(sorted(present))}); "
                           f"both {neg} and {pos} are needed. Found: {found}")
    samples = [Sample(p, name, int(groups[name] == pos)) for name, paths in folders.items() for p in paths]
    return LesionDataset(root, task, samples, tuple(sorted(folders)), groups)


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop: the one geometric preprocessing step everywhere."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None if scale > 0.5 else 2.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image, size: int, mean, std) -> torch.Tensor:
    """PIL image -> normalised 1x3xSxS float tensor."""
    arr = np.asarray(resize_square(img, size), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)
    return normalize(x.unsqueeze(0), mean, std)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


@dataclass
class DecodedData:
    """All images of a dataset decoded once into memory: small dermoscopy sets fit easily and epochs get cheap."""
    images: torch.Tensor  # N x 3 x S x S uint8
    targets: torch.Tensor  # N, task target (0/1)
    diagnosis_idx: torch.Tensor  # N, index into dataset.diagnoses
    hashes: list[str]
    paths: list[Path]
    skipped: list[tuple[Path, str]]


def decode_dataset(ds: LesionDataset, size: int) -> DecodedData:
    imgs, targets, dx, hashes, paths, skipped = [], [], [], [], [], []
    dindex = {d: i for i, d in enumerate(ds.diagnoses)}
    for s in ds.samples:
        try:
            img = load_image(s.path)
        except InvalidImageError as exc:
            skipped.append((s.path, str(exc)))
            continue
        hashes.append(hashlib.sha1(img.tobytes() + repr(img.size).encode()).hexdigest())
        imgs.append(np.asarray(resize_square(img, size), dtype=np.uint8))
        targets.append(s.target)
        dx.append(dindex[s.diagnosis])
        paths.append(s.path)
    if skipped:
        log.warning("skipped %d unreadable file(s) in %s", len(skipped), ds.root)
    if len(set(targets)) < 2:
        raise DatasetError(f"dataset folder {ds.root}: after skipping {len(skipped)} unreadable file(s), "
                           f"{len(targets)} readable image(s) remain and they are not of both classes")
    images = _stack(imgs, size)
    return DecodedData(images, torch.tensor(targets), torch.tensor(dx), hashes, paths, skipped)


def decode_paths(paths: list[Path], size: int) -> torch.Tensor:
    """Images known to be readable -> N x 3 x S x S uint8, through the same steps as inference."""
    return _stack([np.asarray(resize_square(load_image(p), size), dtype=np.uint8) for p in paths], size)


def _stack(arrs: list[np.ndarray], size: int) -> torch.Tensor:
    if not arrs:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def _groups(strata: list[int], hashes: list[str]) -> tuple[dict[str, list[int]], dict[int, list[str]]]:
    """Items by content hash (identical images move together), and the hashes of each stratum, sorted."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        by_hash[h].append(i)
    by_stratum: dict[int, list[str]] = defaultdict(list)
    for h in sorted(by_hash):
        by_stratum[strata[by_hash[h][0]]].append(h)
    return by_hash, by_stratum


def split_indices(strata: list[int], hashes: list[str], val_frac: float = 0.2,
                  seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic stratified split in which identical images (same content hash) never straddle it."""
    if not 0.0 < val_frac < 1.0:
        raise DatasetError(f"validation fraction {val_frac} must be between 0 and 1")
    by_hash, by_stratum = _groups(strata, hashes)
    rng = random.Random(seed)
    val: list[int] = []
    for stratum in sorted(by_stratum):
        hs = by_stratum[stratum]
        rng.shuffle(hs)
        n_val = int(math.floor(len(hs) * val_frac + 0.5)) if len(hs) > 1 else 0
        for h in hs[:n_val]:
            val.extend(by_hash[h])
    val_set = set(val)
    train = [i for i in range(len(hashes)) if i not in val_set]
    return train, sorted(val)


def fold_ids(strata: list[int], hashes: list[str], folds: int, seed: int = 0) -> list[int]:
    """A fold (0..folds-1) per item, stratified, identical images always in one fold.

    It depends only on the items' (hash, stratum) pairs and the seed, so fold teachers trained on the training
    split and a later distillation run on the same split agree on which member never saw which image.
    """
    if not 2 <= folds <= 20:
        raise DatasetError(f"number of folds {folds} must be between 2 and 20")
    by_hash, by_stratum = _groups(strata, hashes)
    rng = random.Random(seed * 7919 + folds)
    out, dealt = [0] * len(hashes), 0
    for stratum in sorted(by_stratum):
        hs = by_stratum[stratum]
        rng.shuffle(hs)
        for h in hs:  # dealt round-robin across strata, so small diagnoses do not all land in fold 0
            for i in by_hash[h]:
                out[i] = dealt % folds
            dealt += 1
    return out


# ---------------------------------------------------------------- augmentation (on batches, in memory)

def augment_batch(x: torch.Tensor, out_size: int, gen: torch.Generator, strength: str = "standard") -> torch.Tensor:
    """uint8 Bx3xSxS -> float [0,1] Bx3xOxO. Dermoscopy has no up or down, so all 8 flips/rotations are fair.

    One call makes the batch that both teacher and student see (each resized to its own input afterwards).
    """
    x = x.float() / 255.0
    if strength == "none":
        return resize_batch(x, out_size)
    b, _, s, _ = x.shape
    out = torch.empty(b, 3, out_size, out_size, device=x.device)
    r = torch.rand(b, 8, generator=gen)
    lo = 0.35 if strength == "strong" else 0.6
    for i in range(b):
        area = (lo + (1 - lo) * r[i, 0]) * s * s
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * r[i, 1].item())
        cw = int(round(min(s, math.sqrt(area * ratio))))
        ch = int(round(min(s, math.sqrt(area / ratio))))
        top = int(r[i, 2] * (s - ch + 1))
        left = int(r[i, 3] * (s - cw + 1))
        crop = x[i:i + 1, :, top:top + ch, left:left + cw]
        img = resize_batch(crop, out_size)[0]
        k = int(r[i, 4] * 4) % 4
        img = torch.rot90(img, k, (1, 2))
        if r[i, 5] < 0.5:
            img = img.flip(2)
        out[i] = img
    jit = 0.4 if strength == "strong" else 0.2
    brightness, contrast, saturation = (1 + (torch.rand(3, b, 1, 1, 1, generator=gen) * 2 - 1) * jit).to(x.device)
    out = out * brightness
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean
    gray = out.mean(dim=1, keepdim=True)
    out = (out - gray) * saturation + gray
    return out.clamp_(0, 1)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """A float NCHW batch resized to size x size (antialiased bilinear): the one tensor resize everywhere."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def model_input(x01: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """Float [0,1] batch -> a model's own input size and normalisation."""
    return normalize(resize_batch(x01, size), mean, std)
