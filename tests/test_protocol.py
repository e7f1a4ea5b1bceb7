"""The protocol numbers stand on: lesion metadata, near-duplicate grouping, the three-way split, selection."""
from __future__ import annotations

import io
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinapp.data import (PHASH_THRESHOLD, DatasetError, decode_dataset, group_keys, legacy_split,
                          near_duplicates, perceptual_hash, scan_dataset, split_digest, split_indices)
from skinapp.protocol import SplitSpec, select

from conftest import SHARED_ISIC, lesion, make_dataset


def _parts(sp):
    return {"train": sp.train, "val": sp.val, "test": sp.test}


def _straddling(sp, keys) -> set[str]:
    sides = {name: {keys[i] for i in idx} for name, idx in _parts(sp).items()}
    return (sides["train"] & sides["val"]) | (sides["train"] & sides["test"]) | (sides["val"] & sides["test"])


# ------------------------------------------------------------------------------------------------ the split

def test_split_is_a_partition_and_deterministic():
    strata = [i % 3 for i in range(90)]
    keys = [f"h{i}" for i in range(90)]
    sp = split_indices(strata, keys, 0.2, seed=0, test_frac=0.2)
    assert sorted(sp.train + sp.val + sp.test) == list(range(90))
    assert len(sp.val) == 18 and len(sp.test) == 18
    assert sp.val == sorted(sp.val) and sp.test == sorted(sp.test)
    assert split_indices(list(strata), list(keys), 0.2, seed=0, test_frac=0.2) == sp


def test_the_test_split_is_locked_against_the_validation_seed():
    strata = [i % 2 for i in range(100)]
    keys = [f"{i:04x}" for i in range(100)]
    runs = [split_indices(strata, keys, 0.25, seed=s) for s in range(5)]
    assert len({tuple(r.val) for r in runs}) == 5  # the seed moves validation...
    assert len({tuple(r.test) for r in runs}) == 1  # ...and never the test split
    assert split_indices(strata, keys, 0.25, seed=0, test_seed=1).test != runs[0].test


def test_split_does_not_depend_on_input_order():
    keys = [f"h{i:03d}" for i in range(60)]
    strata = [i % 2 for i in range(60)]
    sp = split_indices(strata, keys, 0.2, seed=4)
    order = list(range(60))[::-1]
    sp2 = split_indices([strata[i] for i in order], [keys[i] for i in order], 0.2, seed=4)
    for part in ("val", "test"):
        assert {keys[i] for i in sp.part(part)} == {keys[order[i]] for i in sp2.part(part)}


@pytest.mark.parametrize("val_frac,test_frac", [(0.1, 0.1), (0.2, 0.2), (0.3, 0.2), (0.2, 0.0)])
def test_split_is_stratified(val_frac, test_frac):
    sizes = {0: 50, 1: 30, 2: 20, 3: 7}
    strata = [s for s, n in sizes.items() for _ in range(n)]
    keys = [f"h{i}" for i in range(len(strata))]
    for seed in range(3):
        sp = split_indices(strata, keys, val_frac, seed, test_frac)
        for part, frac in (("val", val_frac), ("test", test_frac)):
            got = Counter(strata[i] for i in sp.part(part))
            for s, n in sizes.items():
                assert abs(got[s] - n * frac) <= 1, (part, s, got[s], n * frac)
        assert Counter(strata[i] for i in sp.train).keys() == sizes.keys()  # every stratum keeps training images


def test_a_single_image_stratum_stays_in_training():
    strata = [0] * 20 + [1]
    sp = split_indices(strata, [f"h{i}" for i in range(21)], 0.3, seed=0, test_frac=0.3)
    assert 20 in sp.train


def test_groups_never_straddle_any_two_parts():
    rng = np.random.default_rng(0)
    keys, strata = [], []
    for g in range(80):
        for c in range(int(rng.integers(1, 6))):  # a lesion with 1-5 photos
            keys.append(f"g{g}")
            strata.append((g + (c == 3)) % 3)  # now and then a photo filed under another diagnosis
    perm = rng.permutation(len(keys))
    keys, strata = [keys[i] for i in perm], [strata[i] for i in perm]
    for seed in range(20):
        sp = split_indices(strata, keys, 0.2, seed, 0.2)
        assert sorted(sp.train + sp.val + sp.test) == list(range(len(keys)))
        assert not _straddling(sp, keys)
        assert sp.val and sp.test
        assert abs(len(sp.test) - 0.2 * len(keys)) <= 0.06 * len(keys)  # whole lesions still fill the part


@pytest.mark.parametrize("val_frac,test_frac", [(0.0, 0.2), (1.0, 0.0), (-0.2, 0.2), (0.2, -0.1), (0.5, 0.5),
                                                (0.2, 1.0)])
def test_split_rejects_bad_fractions(val_frac, test_frac):
    with pytest.raises(DatasetError) as info:
        split_indices([0, 1], ["a", "b"], val_frac, test_frac=test_frac)
    assert str(val_frac) in str(info.value) and str(test_frac) in str(info.value)


def test_legacy_split_is_the_old_two_part_split():
    """Cards made before the test split record a validation digest of this split; it must not drift (the digest
    pinned here is what the split function of that time gave)."""
    strata = [i % 3 for i in range(90)]
    keys = [f"h{i}" for i in range(90)]
    tr, va = legacy_split(strata, keys, 0.2, seed=0)
    assert sorted(tr + va) == list(range(90)) and len(va) == 18
    assert split_digest(keys, va) == "dc8a5a58e66fcddb012477f26ae64deebffc23c7"


# ------------------------------------------------------------------------------------------------ perceptual hash

def _texture(seed: int, size: int = 180) -> Image.Image:
    """A photo-like image: smooth colour variation that differs from seed to seed (generated lesions are all one
    centred blob, so their coarse structure, which the hash reads, is too alike to tell them apart)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(60, 230, (10, 10, 3)).astype(np.uint8), "RGB").resize((size, size),
                                                                                             Image.BICUBIC)


def _reframe(img: Image.Image, margin: float = 0.02) -> Image.Image:
    """The same photo cropped a little, scaled back, brightened and re-encoded as JPEG."""
    w, h = img.size
    m = int(round(w * margin))
    out = img.crop((m, m, w - m, h - m)).resize((w, h), Image.BICUBIC).point(lambda v: min(255, int(v * 1.05)))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=80)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_a_reframed_photo_is_a_near_duplicate_and_another_photo_is_not():
    """Measured, not assumed: re-cropped by 2% a side, brightened 5% and re-encoded, most photos stay within the
    threshold (the real re-framed pair in the ISIC folder is 4 bits apart), while unrelated photos are far off."""
    same = [(perceptual_hash(_texture(s)) ^ perceptual_hash(_reframe(_texture(s)))).bit_count() for s in range(20)]
    assert sum(d <= PHASH_THRESHOLD for d in same) >= 16, same
    other = [(perceptual_hash(_texture(s)) ^ perceptual_hash(_texture(s + 100))).bit_count() for s in range(20)]
    assert min(other) > 3 * PHASH_THRESHOLD, other
    # a resized, re-encoded export of one photo is always found
    small = _texture(1).resize((150, 150), Image.BILINEAR)
    assert (perceptual_hash(_texture(1)) ^ perceptual_hash(small)).bit_count() <= 2


def test_near_duplicates_finds_pairs_in_chunks():
    rng = np.random.default_rng(1)
    h = [int(x) for x in rng.integers(0, 2**63, 1100, dtype=np.int64)]
    h[1050] = h[3] ^ 0b101  # 2 bits apart, in another chunk of 512 rows
    h[700] = h[10] ^ (2**40 - 1)  # 40 bits apart
    pairs = near_duplicates(h, 6)
    assert (3, 1050) in pairs and (10, 700) not in pairs
    assert all(i < j for i, j in pairs)


def test_group_keys_join_bytes_lesions_and_near_duplicates():
    hashes = ["a", "a", "b", "c", "d", "e"]
    ids = [None, None, "L1", "L1", "L2", "L3"]
    far = [0, 0, 0xFFFF, 0xFFFF << 20, 0xFFFF << 40, (0xFFFF << 40) | 1]  # 16+ bits apart, except the last two
    ph = far  # d and e look alike, but the metadata says two lesions
    k = group_keys(hashes, ids, ph)
    assert k[0] == k[1] == "a"  # identical bytes
    assert k[2] == k[3] == "b"  # one lesion, two unlike photos; the key is the smallest content hash
    assert k[4] != k[5]  # near-duplicates with two different ids stay apart
    k2 = group_keys(hashes, [None, None, "L1", "L1", "L2", None], ph)
    assert k2[4] == k2[5]  # ...but a near-duplicate without an id joins


# ------------------------------------------------------------------------------------------------ metadata

def _dataset_with_lesions(tmp_path: Path) -> Path:
    root = make_dataset(tmp_path / "lesions", per_class=12, size=32)
    return root


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_metadata_beside_the_folder_is_found_and_groups_a_lesion(tmp_path):
    root = _dataset_with_lesions(tmp_path)
    rows = ["image,lesion_id,age,sex,localization"]
    # three unlike photos of one melanoma, two of one nevus
    rows += [f"melanoma/img_00{i}.jpg,LES_A,70,male,back" for i in range(3)]
    _texture(9, 32).save(root / "nevus" / "unique_name.jpg")
    rows += ["nevus/img_000.jpg,LES_B,30,female,face", "unique_name,LES_B,30,female,face"]  # a unique stem works
    _write(tmp_path / "lesions-metadata.csv", "\n".join(rows) + "\n")
    ds = scan_dataset(root)
    assert ds.metadata is not None and ds.metadata.id_column == "lesion_id"
    dd = decode_dataset(ds, 16)
    assert dd.n_with_id == 5
    names = [p.relative_to(root).as_posix() for p in dd.paths]
    key = {n: k for n, k in zip(names, dd.groups)}
    assert key["melanoma/img_000.jpg"] == key["melanoma/img_001.jpg"] == key["melanoma/img_002.jpg"]
    assert key["nevus/img_000.jpg"] == key["nevus/unique_name.jpg"] != key["melanoma/img_000.jpg"]
    for seed in range(10):
        sp = SplitSpec(0.25, 0.25, seed).split(dd)
        assert not _straddling(sp, dd.groups)


def test_metadata_inside_the_folder_wins_and_patient_id_works(tmp_path):
    root = _dataset_with_lesions(tmp_path)
    _write(tmp_path / "lesions-metadata.csv", "image,lesion_id\nnevus/img_000.jpg,X\n")
    _write(root / "metadata.csv", "image,patient_id\nnevus/img_000.jpg,P1\nmelanoma/img_000.jpg,P1\n")
    ds = scan_dataset(root)
    assert ds.metadata.path == root / "metadata.csv" and ds.metadata.id_column == "patient_id"
    assert ds.metadata.lesion_id(root / "melanoma" / "img_000.jpg") == "P1"


def test_no_metadata_warns_and_still_works(tmp_path, caplog):
    root = _dataset_with_lesions(tmp_path)
    with caplog.at_level("WARNING"):
        ds = scan_dataset(root)
    assert ds.metadata is None
    assert "no metadata table" in caplog.text and str(root) in caplog.text
    assert scan_dataset(root, metadata=False).metadata is None


@pytest.mark.parametrize("text,needles", [
    ("image,age\nnevus/img_000.jpg,3\n", ["needs an 'image' column", "lesion_id", "found columns: image, age"]),
    ("picture,lesion_id\nnevus/img_000.jpg,A\n", ["needs an 'image' column"]),
    ("image,lesion_id\nnevus/img_000.jpg,A\nnevus/nope.jpg,B\n", ["row 3", "'nevus/nope.jpg'", "not an image of"]),
    ("image,lesion_id\nnevus/img_000.jpg,A\nmelanoma/img_000.jpg,B\nnevus/img_000.jpg,C\n",
     ["row 4", "'C'", "row 2 gave it 'A'"]),
    ("image,lesion_id\nimg_000.jpg,A\n", ["row 2", "not unique"]),  # one such name in every diagnosis folder
])
def test_bad_metadata_is_one_clear_error_naming_file_and_row(tmp_path, text, needles):
    root = _dataset_with_lesions(tmp_path)
    meta = _write(tmp_path / "table.csv", text)
    with pytest.raises(DatasetError) as info:
        scan_dataset(root, metadata=meta)
    msg = str(info.value)
    assert str(meta) in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_missing_or_binary_metadata_file(tmp_path):
    root = _dataset_with_lesions(tmp_path)
    with pytest.raises(DatasetError, match="cannot be read"):
        scan_dataset(root, metadata=tmp_path / "absent.csv")
    bad = tmp_path / "bin.csv"
    bad.write_bytes(b"\xff\xfe\x00\x81" * 50)
    with pytest.raises(DatasetError, match="metadata"):
        scan_dataset(root, metadata=bad)


def test_duplicate_photos_on_disk_stay_on_one_side(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=12, size=48)
    mel, bcc, nev = root / "melanoma", root / "basal_cell_carcinoma", root / "nevus"
    twin = lesion(777, True, 48)
    twin.save(mel / "twin_a.jpg", quality=90)
    twin.save(mel / "twin_b.jpg", quality=90)
    shutil.copy(mel / "twin_a.jpg", bcc / "twin_c.jpg")  # copied into another folder of the same class
    _texture(4, 96).save(nev / "img_002.jpg")
    _texture(4, 96).resize((80, 80), Image.BILINEAR).save(nev / "img_002_recrop.png")  # a smaller re-export
    dd = decode_dataset(scan_dataset(root, metadata=False), 16)
    key = {p.relative_to(root).as_posix(): k for p, k in zip(dd.paths, dd.groups)}
    groups = [("melanoma/twin_a.jpg", "melanoma/twin_b.jpg", "basal_cell_carcinoma/twin_c.jpg"),
              ("nevus/img_002.jpg", "nevus/img_002_recrop.png")]
    for g in groups:
        assert len({key[n] for n in g}) == 1, g
    seen = set()
    for seed in range(30):
        sp = SplitSpec(0.3, 0.2, seed, test_seed=seed).split(dd)
        where = {dd.paths[i].relative_to(root).as_posix(): part for part, idx in _parts(sp).items() for i in idx}
        for g in groups:
            assert len({where[n] for n in g}) == 1, (seed, g)
        seen.add(where["melanoma/twin_a.jpg"])
    assert seen == {"train", "val", "test"}  # grouped, not excluded


# ------------------------------------------------------------------------------------------------ selection

def _card_data(dd, spec: SplitSpec) -> dict:
    from skinapp.data import PROTOCOL

    sp = spec.split(dd)
    return {"protocol": PROTOCOL, "val_frac": spec.val_frac, "test_frac": spec.test_frac, "test_seed": spec.test_seed,
            "digests": {p: split_digest(dd.hashes, sp.part(p)) for p in ("train", "val", "test")}}


def test_select_defaults_to_the_locked_test_split_on_own_data(tmp_path):
    dd = decode_dataset(scan_dataset(make_dataset(tmp_path / "d", per_class=16), metadata=False), 16)
    spec = SplitSpec(0.2, 0.25, seed=3)
    data = _card_data(dd, spec)
    sel = select(data, 3, "m", dd)
    assert sel.split == "test" and sorted(sel.index.tolist()) == spec.split(dd).test
    assert "locked test split" in sel.note
    every = select(data, 3, "m", dd, "all")
    assert len(every.index) == len(dd.targets) and "trained on" in every.note
    # another validation seed than the card's: not this model's split, so everything, and it says so
    other = select(data, 4, "m", dd)
    assert other.split == "all" and "split digests differ" in other.note


def test_select_legacy_cards_have_no_test_split(tmp_path):
    dd = decode_dataset(scan_dataset(make_dataset(tmp_path / "d", per_class=16), metadata=False), 16)
    tr, va = legacy_split(dd.diagnosis_idx.tolist(), dd.hashes, 0.2, 0)
    data = {"val_frac": 0.2, "split_digest": split_digest(dd.hashes, va)}
    sel = select(data, 0, "old", dd)
    assert sel.split == "val" and sel.index.tolist() == va and "predates the locked test split" in sel.note
    with pytest.raises(DatasetError, match="before the locked test split"):
        select(data, 0, "old", dd, "test")
    with pytest.raises(ValueError, match="choose one of: auto, all, train, val, test"):
        select(data, 0, "old", dd, "holdout")


# ------------------------------------------------------------------------------------------------ real data

def test_shared_isic9_split_keeps_every_lesion_on_one_side():
    if not SHARED_ISIC.is_dir():
        pytest.skip(f"shared ISIC data not present at {SHARED_ISIC}")
    ds = scan_dataset(SHARED_ISIC)
    assert ds.metadata is not None and len(ds.metadata.rows) == 1595
    dd = decode_dataset(ds, 16)
    assert dd.n_with_id == 1053
    sp = SplitSpec().split(dd)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (955, 320, 320)
    ids = [ds.metadata.lesion_id(p) for p in dd.paths]
    sides = {part: {ids[i] for i in idx if ids[i]} for part, idx in _parts(sp).items()}
    assert not (sides["train"] & sides["test"]) and not (sides["val"] & sides["test"])
    assert not (sides["train"] & sides["val"])
    where = {dd.paths[i].name: part for part, idx in _parts(sp).items() for i in idx}
    assert where["ISIC_0024522.jpg"] == where["ISIC_0030387.jpg"]  # the reframed squamous cell carcinoma pair
    assert Counter(int(dd.targets[i]) for i in sp.test) == {1: 161, 0: 159}
