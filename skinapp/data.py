"""Dataset folders, label mapping, lesion metadata, a lesion-grouped three-way split, in-memory decoding and
batch augmentation."""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

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


#: columns that say which photos show one lesion (or one patient: coarser, and just as safe for a split)
ID_COLUMNS = ("lesion_id", "patient_id")
#: near-duplicate photos: a 64-bit DCT perceptual hash within this Hamming distance (docs/experiments.md,
#: "Lesion-grouped splits": it joins re-crops and re-exports of one photo, not second photos of a lesion)
PHASH_THRESHOLD = 6
#: how the split is made; a card that lacks it predates the locked test split (two parts, byte-identical groups)
PROTOCOL = "lesion-grouped train/val/test v1"


@dataclass(frozen=True)
class Metadata:
    """A per-image table: the lesion (or patient) each photo shows, plus whatever else it has (age, sex, site)."""
    path: Path
    id_column: str
    rows: dict[Path, dict[str, str]]  # sample path -> the table's row for it

    def lesion_id(self, path: Path) -> str | None:
        return (self.rows.get(path) or {}).get(self.id_column) or None


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
    metadata: Metadata | None = None

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
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
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
                 label_map: Mapping[str, str] | str | Path | None = None,
                 metadata: str | Path | None | bool = None) -> LesionDataset:
    """List a dataset folder: benign/ + malignant/ subfolders, or one subfolder per diagnosis.

    ``metadata``: a CSV naming each image's lesion (see :func:`read_metadata`); None looks for
    ``metadata.csv`` inside the folder or ``<folder>-metadata.csv`` beside it; False reads none.
    """
    root = Path(root).expanduser()
    neg, pos = get_task(task)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    folders = _image_folders(root)
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
    meta_path = find_metadata(root) if metadata is None else (None if metadata is False else Path(metadata))
    meta = read_metadata(meta_path, root, samples) if meta_path else None
    if meta is None:
        log.warning("dataset folder %s has no metadata table (metadata.csv with image and lesion_id columns): "
                    "photos of one lesion can only be grouped when they are near-duplicates, so a split may put "
                    "one lesion on both sides", root)
    return LesionDataset(root, task, samples, tuple(sorted(folders)), groups, meta)


#: a dataset folder holds thousands of photos; a walk that meets more entries than this is in the wrong folder
#: (a home folder, /, /proc) and stops with a message instead of walking the whole tree
MAX_ENTRIES = 200_000


def _image_folders(root: Path) -> dict[str, list[Path]]:
    """Each non-hidden subfolder's images (at any depth, hidden parts skipped), sorted; only folders with images."""
    seen = [0]

    def unreadable(exc: OSError) -> None:
        raise DatasetError(f"dataset folder {root}: cannot read {exc.filename} ({exc.strerror or exc}); choose a "
                           f"folder this server may read") from None

    try:
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as exc:
        unreadable(exc)
    out = {}
    for d in subdirs:
        found = []
        for dirpath, dirnames, filenames in os.walk(d, onerror=unreadable):
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            seen[0] += len(dirnames) + len(filenames)
            if seen[0] > MAX_ENTRIES:
                raise DatasetError(f"dataset folder {root} holds more than {MAX_ENTRIES:,} files and folders: it "
                                   f"does not look like a dataset (benign/ + malignant/ or one folder per diagnosis)")
            found += [p for p in (Path(dirpath) / f for f in filenames if not f.startswith(".")) if is_image_file(p)]
        if found:
            out[d.name] = sorted(found, key=str)
    return out


def find_metadata(root: Path) -> Path | None:
    """``metadata.csv`` inside the dataset folder, else ``<folder>-metadata.csv`` beside it."""
    for cand in (root / "metadata.csv", root.parent / f"{root.name}-metadata.csv"):
        if cand.is_file():
            return cand
    return None


def read_metadata(path: str | Path, root: Path, samples: Sequence[Sample]) -> Metadata:
    """Read the whole table and check it before anything uses it: a half-read table never reaches training.

    ``image`` is the path below the dataset folder (``melanoma/ISIC_0000.jpg``) or a file name / stem that is
    unique in it; the id column is ``lesion_id`` or, failing that, ``patient_id``.
    """
    path = Path(path).expanduser()
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"metadata {path}: cannot be read as a CSV table ({exc})") from None
    id_col = next((c for c in ID_COLUMNS if c in header), None)
    if "image" not in header or id_col is None:
        raise DatasetError(f"metadata {path}: needs an 'image' column and one of {', '.join(ID_COLUMNS)}; "
                           f"found columns: {', '.join(header) or 'none'}")
    index = _image_index(root, samples)
    out: dict[Path, dict[str, str]] = {}
    first_row: dict[Path, int] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        key = row.get("image", "")
        sample = index.get(key) or index.get(key.replace("\\", "/"))
        if sample is None:
            raise DatasetError(f"metadata {path}, row {line}: image {key!r} is not an image of {root} (or its name "
                               f"is not unique there)")
        if sample in out and out[sample].get(id_col, "") != row.get(id_col, ""):
            raise DatasetError(f"metadata {path}, row {line}: image {key!r} is given {id_col} "
                               f"{row.get(id_col)!r}, but row {first_row[sample]} gave it "
                               f"{out[sample].get(id_col)!r}")
        first_row.setdefault(sample, line)
        out[sample] = row
    return Metadata(path, id_col, out)


def _image_index(root: Path, samples: Sequence[Sample]) -> dict[str, Path]:
    """Relative path, file name and stem -> sample path; names that are not unique are left out."""
    index: dict[str, Path] = {}
    seen: Counter = Counter()
    for s in samples:
        for key in {s.path.name, s.path.stem}:
            seen[key] += 1
            index[key] = s.path
    index = {k: v for k, v in index.items() if seen[k] == 1}
    index.update({s.path.relative_to(root).as_posix(): s.path for s in samples})
    return index


def square_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop left, crop top) of ``resize_square``: the shorter side to ``size``."""
    scale = size / min(width, height)
    nw, nh = max(size, round(width * scale)), max(size, round(height * scale))
    return nw, nh, (nw - size) // 2, (nh - size) // 2


def pillow_reduces(width: int, height: int, size: int) -> bool:
    """Whether Pillow's resize to ``size`` first box-reduces the photo by an integer factor (``reducing_gap`` 2:
    a downscale by 4x or more, i.e. camera-size photos). There its pixels are kept, and it is the faster one."""
    nw, nh, _, _ = square_geometry(width, height, size)
    return int(width / nw / 2.0) > 1 or int(height / nh / 2.0) > 1


def square_uint8(img: Image.Image, size: int) -> torch.Tensor:
    """The one geometric preprocessing step everywhere (training, evaluation, inference): the shorter side to
    ``size``, then the centre square, as a 1x3xSxS uint8 tensor. PyTorch's antialiased bilinear resize of the
    uint8 photo (Pillow's filter, within one grey level of it, the same bytes on every CPU kernel and twice as
    fast; docs/experiments.md, "The resize switch"), except for downscales by 4x or more, which keep Pillow's
    box reduce and resize (``pillow_reduces``)."""
    nw, nh, left, top = square_geometry(*img.size, size)
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    if pillow_reduces(*img.size, size):
        small = rgb.resize((nw, nh), Image.BILINEAR, reducing_gap=2.0).crop((left, top, left + size, top + size))
        return torch.from_numpy(np.array(small)).permute(2, 0, 1).unsqueeze(0)
    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).unsqueeze(0)  # channels last: the fast uint8 kernel
    if (nh, nw) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    return x[:, :, top:top + size, left:left + size]


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """``square_uint8`` as a Pillow image (what pages show and overlays are drawn on)."""
    return Image.fromarray(square_uint8(img, size)[0].permute(1, 2, 0).contiguous().numpy())


def to_tensor(img: Image.Image, size: int, mean, std) -> torch.Tensor:
    """PIL image -> normalised 1x3xSxS float tensor."""
    return normalize(square_uint8(img, size).float() / 255.0, mean, std)


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
    groups: list[str] = field(default_factory=list)  # one key per image: photos of one lesion share it
    n_with_id: int = 0  # images whose lesion the metadata names


def decode_dataset(ds: LesionDataset, size: int, check: Callable[[], None] | None = None,
                   report: Callable[[int], None] | None = None) -> DecodedData:
    """``check``: called every few images (a stop request raises there, so a cancel need not wait for decoding);
    ``report``: told how many images are done, at the same points and at the end (a job's progress bar)."""
    imgs, targets, dx, hashes, paths, skipped, phashes = [], [], [], [], [], [], []
    dindex = {d: i for i, d in enumerate(ds.diagnoses)}
    for n, s in enumerate(ds.samples):
        if n % 16 == 0:
            if check is not None:
                check()
            if report is not None:
                report(n)
        try:
            img = load_image(s.path)
        except InvalidImageError as exc:
            skipped.append((s.path, str(exc)))
            continue
        hashes.append(hashlib.sha1(img.tobytes() + repr(img.size).encode()).hexdigest())
        phashes.append(perceptual_hash(img))
        imgs.append(np.asarray(resize_square(img, size), dtype=np.uint8))
        targets.append(s.target)
        dx.append(dindex[s.diagnosis])
        paths.append(s.path)
    if report is not None:
        report(len(ds.samples))
    if skipped:
        log.warning("skipped %d unreadable file(s) in %s", len(skipped), ds.root)
    if len(set(targets)) < 2:
        raise DatasetError(f"dataset folder {ds.root}: after skipping {len(skipped)} unreadable file(s), "
                           f"{len(targets)} readable image(s) remain and they are not of both classes")
    images = _stack(imgs, size)
    ids = [ds.metadata.lesion_id(p) if ds.metadata else None for p in paths]
    return DecodedData(images, torch.tensor(targets), torch.tensor(dx), hashes, paths, skipped,
                       group_keys(hashes, ids, phashes), sum(i is not None for i in ids))


def perceptual_hash(img: Image.Image) -> int:
    """64-bit DCT hash (Zauner 2010): signs of the 8x8 lowest frequencies of a 32x32 grey copy against their
    median. It survives re-encoding, resizing and small crops, so re-exports of one photo find each other."""
    from scipy.fft import dctn

    grey = np.asarray(img.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float64)
    low = dctn(grey, norm="ortho")[:8, :8].ravel()[1:]  # the DC term says only how bright the photo is
    bits = np.concatenate([[False], low > np.median(low)])
    return int(np.packbits(bits).view(">u8")[0])


def near_duplicates(phashes: Sequence[int], threshold: int = PHASH_THRESHOLD) -> list[tuple[int, int]]:
    """Pairs (i < j) whose perceptual hashes differ in at most ``threshold`` bits; rows in chunks, so large
    folders never build the whole n x n table at once."""
    h = np.asarray(phashes, dtype=np.uint64)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(h), 512):
        d = np.bitwise_count(h[start:start + 512, None] ^ h[None, :])
        for i, j in zip(*np.nonzero(d <= threshold)):
            if start + i < j:
                pairs.append((int(start + i), int(j)))
    return pairs


def group_keys(hashes: Sequence[str], lesion_ids: Sequence[str | None], phashes: Sequence[int],
               threshold: int = PHASH_THRESHOLD) -> list[str]:
    """One key per image; identical images, photos of one lesion and near-duplicates share it.

    Near-duplicates are joined unless the metadata says they are two lesions (both have ids, and they differ).
    The key is the smallest content hash in the group, so it depends on the images, not on their order.
    """
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    first: dict[str, int] = {}
    for i, key in enumerate(zip(hashes, lesion_ids)):
        for k in (f"sha:{key[0]}", f"id:{key[1]}" if key[1] else None):
            if k is not None:
                join(i, first.setdefault(k, i))
    for i, j in near_duplicates(phashes, threshold):
        if not (lesion_ids[i] and lesion_ids[j] and lesion_ids[i] != lesion_ids[j]):
            join(i, j)
    smallest: dict[int, str] = {}
    for i, h in enumerate(hashes):
        r = find(i)
        smallest[r] = min(smallest.get(r, h), h)
    return [smallest[find(i)] for i in range(len(hashes))]


def decode_paths(paths: list[Path], size: int) -> torch.Tensor:
    """Images known to be readable -> N x 3 x S x S uint8, through the same steps as inference."""
    return _stack([np.asarray(resize_square(load_image(p), size), dtype=np.uint8) for p in paths], size)


def _stack(arrs: list[np.ndarray], size: int) -> torch.Tensor:
    if not arrs:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def _groups(strata: list[int], keys: list[str]) -> tuple[dict[str, list[int]], dict[int, list[str]]]:
    """Items by group key (a group moves as one), and the keys of each stratum, sorted. A group whose photos
    sit in several strata belongs to its most common one (ties: the smallest)."""
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        by_key[k].append(i)
    by_stratum: dict[int, list[str]] = defaultdict(list)
    for k in sorted(by_key):
        votes = Counter(strata[i] for i in by_key[k])
        by_stratum[min(votes, key=lambda s: (-votes[s], s))].append(k)
    return by_key, by_stratum


@dataclass(frozen=True)
class Split:
    train: list[int]
    val: list[int]
    test: list[int]

    def part(self, name: str) -> list[int]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose one of: train, val, test")
        return getattr(self, name)


def _deal(by_key: dict[str, list[int]], by_stratum: dict[int, list[str]], frac: float, seed: int,
          taken: set[str]) -> list[str]:
    """Per stratum, whole groups in seeded order until the part holds about ``frac`` of the stratum's images.

    A group joins when half of it still fits, so large lesions neither block a part nor overfill it; a stratum
    of one group stays in training.
    """
    rng = random.Random(seed)
    out: list[str] = []
    for stratum in sorted(by_stratum):
        keys = by_stratum[stratum]
        if len(keys) < 2:
            continue
        target = len([i for k in keys for i in by_key[k]]) * frac
        free = [k for k in keys if k not in taken]
        rng.shuffle(free)
        got = 0
        for k in free:
            if got + len(by_key[k]) / 2 <= target + 1e-9 and got < target:
                out.append(k)
                got += len(by_key[k])
    return out


def split_indices(strata: list[int], keys: list[str], val_frac: float = 0.2, seed: int = 0,
                  test_frac: float = 0.2, test_seed: int = 0) -> Split:
    """Train / validation / locked test, stratified, whole groups (lesions) on one side only.

    The test part depends only on the groups and ``test_seed``, never on ``seed``: every run that varies the
    validation split (seeds, folds) still reports on the same, untouched test images.
    """
    if not 0.0 < val_frac < 1.0 or not 0.0 <= test_frac < 1.0 or val_frac + test_frac >= 1.0:
        raise DatasetError(f"validation fraction {val_frac} must be in (0, 1) and test fraction {test_frac} in "
                           f"[0, 1), together below 1")
    by_key, by_stratum = _groups(strata, keys)
    test = set(_deal(by_key, by_stratum, test_frac, test_seed * 7919 + 17, set()))
    val_frac_rest = val_frac  # of the whole stratum, so the parts keep their stated sizes
    val = set(_deal(by_key, by_stratum, val_frac_rest, seed, test))
    pick = lambda ks: sorted(i for k in ks for i in by_key[k])  # noqa: E731
    return Split([i for i in range(len(keys)) if keys[i] not in test | val], pick(val), pick(test))


def legacy_split(strata: list[int], hashes: list[str], val_frac: float = 0.2,
                 seed: int = 0) -> tuple[list[int], list[int]]:
    """The two-part split of models made before the locked test split (identical bytes grouped, nothing else);
    kept only so their cards' validation numbers can still be re-measured."""
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
    return [i for i in range(len(hashes)) if i not in val_set], sorted(val)


def split_digest(hashes: Sequence[str], index: Sequence[int]) -> str:
    """Names a part of a split by its images' content, so models can be checked to share one."""
    return hashlib.sha1(",".join(sorted(hashes[i] for i in index)).encode()).hexdigest()


def fold_ids(strata: list[int], keys: list[str], folds: int, seed: int = 0) -> list[int]:
    """A fold (0..folds-1) per item, stratified, a group (lesion) always in one fold.

    It depends only on the items' (hash, stratum) pairs and the seed, so fold teachers trained on the training
    split and a later distillation run on the same split agree on which member never saw which image.
    """
    if not 2 <= folds <= 20:
        raise DatasetError(f"number of folds {folds} must be between 2 and 20")
    by_hash, by_stratum = _groups(strata, keys)
    rng = random.Random(seed * 7919 + folds)
    out, dealt = [0] * len(keys), 0
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


def augment_pair(big: torch.Tensor, small: torch.Tensor | None, big_size: int, small_size: int,
                 gen: torch.Generator, strength: str = "standard") -> tuple[torch.Tensor, torch.Tensor]:
    """The same augmentation (crop, turn, flip, colour) of one batch at two resolutions: ``big`` for a teacher
    with the larger input, ``small`` (the photos decoded at the student's own size) for the student. A student
    view resized down from the teacher's was resampled twice (the photos are upsampled to the teacher's size
    first) and is blurrier than the photos it is evaluated on; at 180 px that cost the distilled students
    0.04 validation AUC (docs/experiments.md). ``small`` None: the student's view is the big one resized."""
    state = gen.get_state()
    x_big = augment_batch(big, big_size, gen, strength)
    if small is None:
        return x_big, resize_batch(x_big, small_size)
    twin = torch.Generator(device=gen.device)
    twin.set_state(state)  # the same random draws, so the same crop, turn, flip and colour
    return x_big, augment_batch(small, small_size, twin, strength)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """A float NCHW batch resized to size x size (antialiased bilinear): the one tensor resize everywhere."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def model_input(x01: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """Float [0,1] batch -> a model's own input size and normalisation."""
    return normalize(resize_batch(x01, size), mean, std)
