"""Dataset folders, label maps, decoding, the leak-free split and batch augmentation."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skinapp.data import (DEFAULT_LABEL_MAP, DatasetError, augment_batch, decode_dataset, model_input, normalize,
                          pillow_reduces, read_label_map, resize_batch, resize_square, scan_dataset, square_geometry,
                          square_uint8, to_tensor)

from conftest import SHARED_ISIC, lesion, make_dataset


def dataset_error(root, *needles: str, **kw) -> str:
    """scan_dataset must raise one DatasetError whose message contains every needle; return the message."""
    with pytest.raises(DatasetError) as info:
        scan_dataset(root, **kw)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def put(folder: Path, n: int, malignant: bool, start: int = 0, size: int = 24, ext: str = "jpg") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img_{start + i:03d}.{ext}"
        lesion(1000 + start + i + (500 if malignant else 0), malignant, size).save(p)
        paths.append(p)
    return paths


# ------------------------------------------------------------------------------------------------ scanning

def test_binary_layout(tmp_path):
    root = make_dataset(tmp_path / "bin", per_class=5, layout="binary", size=24)
    ds = scan_dataset(root)
    assert ds.task == "malignant"
    assert ds.labels == ("benign", "malignant")
    assert ds.diagnoses == ("benign", "malignant")
    assert ds.groups == {"benign": "benign", "malignant": "malignant"}
    assert ds.class_counts() == {"benign": 5, "malignant": 5}
    assert ds.counts() == {"benign": 5, "malignant": 5}
    for s in ds.samples:
        assert s.target == int(s.diagnosis == "malignant")
        assert s.path.parent.name == s.diagnosis
        assert s.path.is_file()


def test_diagnosis_layout_uses_the_default_label_map(tiny_data):
    ds = scan_dataset(tiny_data)
    assert ds.diagnoses == ("basal_cell_carcinoma", "dermatofibroma", "melanoma", "nevus")
    assert ds.groups == {d: DEFAULT_LABEL_MAP[d] for d in ds.diagnoses}
    assert ds.counts() == {d: 8 for d in ds.diagnoses}
    assert ds.class_counts() == {"benign": 16, "malignant": 16}
    for s in ds.samples:
        assert s.target == int(DEFAULT_LABEL_MAP[s.diagnosis] == "malignant")
    assert len({s.path for s in ds.samples}) == 32


def test_scan_is_deterministic_and_accepts_str_paths(tiny_data):
    a = scan_dataset(str(tiny_data))
    b = scan_dataset(tiny_data)
    assert [s.path for s in a.samples] == [s.path for s in b.samples]


def test_default_label_map_covers_the_isic_diagnoses():
    malignant = {k for k, v in DEFAULT_LABEL_MAP.items() if v == "malignant"}
    assert malignant == {"melanoma", "basal_cell_carcinoma", "squamous_cell_carcinoma", "actinic_keratosis"}
    assert set(DEFAULT_LABEL_MAP.values()) == {"benign", "malignant"}
    assert len(DEFAULT_LABEL_MAP) == 9


def test_folder_names_are_case_insensitive(tmp_path):
    put(tmp_path / "d" / "Melanoma", 2, True)
    put(tmp_path / "d" / "NEVUS", 2, False)
    ds = scan_dataset(tmp_path / "d")
    assert ds.groups == {"Melanoma": "malignant", "NEVUS": "benign"}
    put(tmp_path / "b" / "Benign", 2, False)
    put(tmp_path / "b" / "MALIGNANT", 2, True)
    ds = scan_dataset(tmp_path / "b")
    assert ds.class_counts() == {"benign": 2, "malignant": 2}
    assert {s.diagnosis: s.target for s in ds.samples} == {"Benign": 0, "MALIGNANT": 1}


def test_nested_folders_count_and_junk_is_ignored(tmp_path):
    root = tmp_path / "d"
    put(root / "benign", 2, False)
    put(root / "benign" / "clinic_b", 2, False, start=10)
    put(root / "malignant", 3, True, ext="png")
    (root / "benign" / "README.txt").write_text("notes")
    (root / "benign" / "._img_000.jpg").write_bytes(b"mac resource fork")
    (root / "malignant" / "Thumbs.db").write_bytes(b"\0" * 10)
    put(root / ".cache", 3, True)  # hidden folder at the top is not a class
    (root / "loose.jpg").write_bytes((root / "benign" / "img_000.jpg").read_bytes())
    ds = scan_dataset(root)
    assert ds.diagnoses == ("benign", "malignant")
    assert ds.class_counts() == {"benign": 4, "malignant": 3}
    assert all(".cache" not in s.path.parts and not s.path.name.startswith(".") for s in ds.samples)


def test_user_label_map_file(tmp_path):
    root = tmp_path / "d"
    put(root / "lentigo", 3, False)
    put(root / "merkel_cell", 2, True)
    mapfile = tmp_path / "map.json"
    mapfile.write_text(json.dumps({"Lentigo": "benign", "merkel_cell": "malignant"}))
    dataset_error(root, "lentigo")  # unknown to the default map
    for lm in (mapfile, str(mapfile), {"lentigo": "benign", "merkel_cell": "malignant"}):
        ds = scan_dataset(root, label_map=lm)
        assert ds.groups == {"lentigo": "benign", "merkel_cell": "malignant"}
        assert ds.class_counts() == {"benign": 3, "malignant": 2}


def test_a_binary_label_map_is_named_in_its_refusal(tmp_path):
    mapfile = tmp_path / "map.json"
    mapfile.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DatasetError, match=f"label map {mapfile}: cannot be read as JSON"):
        read_label_map(mapfile)


def test_user_label_map_overrides_the_defaults(tmp_path):
    root = tmp_path / "d"
    put(root / "actinic_keratosis", 2, True)
    put(root / "nevus", 2, False)
    put(root / "melanoma", 2, True)
    assert scan_dataset(root).groups["actinic_keratosis"] == "malignant"
    mapfile = tmp_path / "map.json"
    mapfile.write_text(json.dumps({"actinic_keratosis": "benign", "nevus": "benign", "melanoma": "malignant"}))
    ds = scan_dataset(root, label_map=mapfile)
    assert ds.groups["actinic_keratosis"] == "benign"
    assert ds.class_counts() == {"benign": 4, "malignant": 2}


def test_melanoma_task(tiny_data):
    ds = scan_dataset(tiny_data, task="melanoma")
    assert ds.labels == ("other", "melanoma")
    assert ds.class_counts() == {"other": 24, "melanoma": 8}
    assert ds.groups == {"basal_cell_carcinoma": "other", "dermatofibroma": "other", "melanoma": "melanoma",
                         "nevus": "other"}
    for s in ds.samples:
        assert s.target == int(s.diagnosis == "melanoma")


# ------------------------------------------------------------------------------------------------ scan errors

def test_missing_folder(tmp_path):
    missing = tmp_path / "no_such_dataset"
    dataset_error(missing, str(missing))


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "data.zip"
    f.write_bytes(b"PK")
    dataset_error(f, str(f))


def test_empty_folder(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    dataset_error(root, str(root), "benign", "malignant")  # says what layout is expected


def test_no_images_only_other_files(tmp_path):
    root = tmp_path / "d"
    (root / "benign").mkdir(parents=True)
    (root / "malignant").mkdir()
    (root / "benign" / "list.csv").write_text("a,b")
    (root / "malignant" / "scan.gif").write_bytes(b"GIF89a")
    dataset_error(root, str(root))


def test_images_loose_in_the_root_are_reported(tmp_path):
    root = tmp_path / "flat"
    put(root, 3, False)
    msg = dataset_error(root, str(root))
    assert re.search(r"\b3\b", msg.replace(str(root), "")), msg  # says how many loose images it saw


def test_one_class_only_binary(tmp_path):
    root = tmp_path / "d"
    put(root / "benign", 3, False)
    (root / "malignant").mkdir()  # present but empty
    msg = dataset_error(root, str(root), "benign", "malignant")
    assert "benign (3)" in msg or re.search(r"\b3\b", msg.replace(str(root), "")), msg


def test_one_class_only_diagnosis_layout(tmp_path):
    root = tmp_path / "d"
    put(root / "nevus", 2, False)
    put(root / "dermatofibroma", 3, False)
    dataset_error(root, str(root), "nevus", "dermatofibroma", "malignant")


def test_unmapped_diagnosis_lists_known_ones(tmp_path):
    root = tmp_path / "d"
    put(root / "melanoma", 2, True)
    put(root / "nevus", 2, False)
    put(root / "mystery_rash", 2, False)
    msg = dataset_error(root, str(root), "mystery_rash")
    for known in DEFAULT_LABEL_MAP:
        assert known in msg


def test_unmapped_diagnosis_with_a_user_map_lists_the_user_map(tmp_path):
    root = tmp_path / "d"
    put(root / "lentigo", 2, False)
    put(root / "merkel_cell", 2, True)
    dataset_error(root, str(root), "merkel_cell", "lentigo", label_map={"lentigo": "benign"})


def test_melanoma_task_needs_diagnosis_folders(tmp_path):
    root = make_dataset(tmp_path / "bin", per_class=2, layout="binary", size=16)
    dataset_error(root, str(root), "melanoma", "diagnosis", "benign", "malignant", task="melanoma")


def test_melanoma_task_without_a_melanoma_folder(tmp_path):
    root = tmp_path / "d"
    put(root / "basal_cell_carcinoma", 2, True)
    put(root / "nevus", 2, False)
    dataset_error(root, str(root), "melanoma", task="melanoma")


def test_unknown_task(tiny_data):
    dataset_error(tiny_data, "nevi", "malignant", "melanoma", task="nevi")


@pytest.mark.parametrize("bad", [{"nevus": "harmless"}, {"nevus": "Benign"}, {"nevus": None}, {"nevus": 1}])
def test_bad_label_map_values(tiny_data, bad):
    msg = dataset_error(tiny_data, "nevus", "benign", "malignant", label_map=bad)
    assert repr(bad["nevus"]) in msg or str(bad["nevus"]) in msg


def test_bad_label_map_file_value(tmp_path, tiny_data):
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"melanoma": "malignant", "nevus": "maybe"}))
    dataset_error(tiny_data, "nevus", "maybe", label_map=f)


@pytest.mark.parametrize("content", ["[\"nevus\", \"benign\"]", "{not json", "\"benign\"", ""])
def test_unreadable_label_map_file(tmp_path, tiny_data, content):
    f = tmp_path / "labels.json"
    f.write_text(content)
    dataset_error(tiny_data, str(f), label_map=f)


def test_missing_label_map_file(tmp_path, tiny_data):
    f = tmp_path / "nope.json"
    dataset_error(tiny_data, str(f), label_map=f)


def test_read_label_map_defaults_are_a_copy():
    m = read_label_map(None)
    m["melanoma"] = "benign"
    assert DEFAULT_LABEL_MAP["melanoma"] == "malignant"
    # a user map is merged over the defaults: it adds or relabels diagnoses, it does not drop the others
    assert read_label_map({"Lentigo": "benign"}) == {**DEFAULT_LABEL_MAP, "lentigo": "benign"}
    assert read_label_map({"Nevus": "malignant"})["nevus"] == "malignant"


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


# ------------------------------------------------------------------------------------------------ decoding

def test_decode_dataset(tiny_data):
    ds = scan_dataset(tiny_data)
    dd = decode_dataset(ds, 20)
    assert dd.images.shape == (32, 3, 20, 20) and dd.images.dtype == torch.uint8
    assert dd.targets.tolist() == [s.target for s in ds.samples]
    assert [ds.diagnoses[i] for i in dd.diagnosis_idx.tolist()] == [s.diagnosis for s in ds.samples]
    assert dd.paths == [s.path for s in ds.samples]
    assert len(dd.hashes) == 32 and len(set(dd.hashes)) == 32
    assert dd.skipped == []
    # pixels are the resized photo, channel-first
    first = np.asarray(resize_square(Image.open(ds.samples[0].path).convert("RGB"), 20))
    np.testing.assert_array_equal(dd.images[0].permute(1, 2, 0).numpy(), first)


def test_decode_skips_unreadable_files(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=4, layout="binary", size=24)
    bad = {
        root / "benign" / "notes.jpg": b"this is a text file, not a photo",
        root / "benign" / "empty.png": b"",
        root / "malignant" / "cut.jpg": (root / "malignant" / "img_000.jpg").read_bytes()[:300],
        root / "malignant" / "anim.png": b"GIF89a" + b"\0" * 40,
    }
    for p, data in bad.items():
        p.write_bytes(data)
    ds = scan_dataset(root)
    assert len(ds.samples) == 12  # listed: the suffix looks right
    dd = decode_dataset(ds, 16)
    assert dd.images.shape == (8, 3, 16, 16)
    assert len(dd.skipped) == 4
    assert {p for p, _ in dd.skipped} == set(bad)
    for p, reason in dd.skipped:
        assert p.name in reason and reason.strip()
    assert not set(bad) & set(dd.paths)
    assert len(dd.paths) == len(dd.hashes) == len(dd.targets) == len(dd.diagnosis_idx) == 8
    assert dd.targets.tolist() == [int(p.parent.name == "malignant") for p in dd.paths]


# Orientation 6 and an XResolution tag stored as text: a valid photo with sloppy camera metadata.
ODD_EXIF = (b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x02\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00"
            b"\x1a\x01\x02\x00\x08\x00\x00\x00&\x00\x00\x00\x00\x00\x00\x00seventy\x00")


def test_decode_never_crashes_on_odd_metadata(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=3, layout="binary", size=24)
    odd = root / "malignant" / "phone.jpg"
    lesion(42, True, 32).resize((32, 20)).save(odd, exif=ODD_EXIF)
    dd = decode_dataset(scan_dataset(root), 16)
    assert dd.skipped == []
    assert odd in dd.paths
    assert dd.images.shape == (7, 3, 16, 16)


def test_decode_when_a_whole_class_is_unreadable_is_a_dataset_error(tmp_path):
    root = tmp_path / "d"
    put(root / "benign", 3, False)
    (root / "malignant").mkdir()
    for i in range(2):
        (root / "malignant" / f"bad_{i}.jpg").write_text("nope")
    ds = scan_dataset(root)
    with pytest.raises(DatasetError) as info:
        decode_dataset(ds, 16)
    assert str(root) in str(info.value)


def test_decode_handles_mixed_sizes_and_modes(tmp_path):
    root = tmp_path / "d"
    (root / "benign").mkdir(parents=True)
    (root / "malignant").mkdir()
    lesion(1, False, 40).resize((60, 30)).save(root / "benign" / "wide.jpg")
    lesion(2, False, 40).convert("L").save(root / "benign" / "grey.png")
    lesion(3, True, 40).convert("RGBA").save(root / "malignant" / "alpha.png")
    lesion(4, True, 40).save(root / "malignant" / "bmp.bmp")
    dd = decode_dataset(scan_dataset(root), 24)
    assert dd.images.shape == (4, 3, 24, 24)
    assert dd.skipped == []


# ------------------------------------------------------------------------------------------------ preprocessing

def test_resize_square_shapes():
    for w, h, size in [(100, 60, 32), (60, 100, 32), (10, 20, 48), (48, 48, 48), (181, 180, 64), (33, 500, 16)]:
        out = resize_square(Image.new("RGB", (w, h), "white"), size)
        assert out.size == (size, size), (w, h, size)


def test_resize_square_centre_crops():
    arr = np.zeros((30, 90, 3), np.uint8)
    arr[:, :30] = (255, 0, 0)
    arr[:, 30:60] = (0, 255, 0)
    arr[:, 60:] = (0, 0, 255)
    out = np.asarray(resize_square(Image.fromarray(arr), 30))
    assert (out == (0, 255, 0)).all()
    small = np.asarray(resize_square(Image.fromarray(arr), 15)).astype(int)
    assert (small[:, 3:12] == (0, 255, 0)).all()
    tall = np.asarray(resize_square(Image.fromarray(arr.transpose(1, 0, 2).copy()), 30))
    assert (tall == (0, 255, 0)).all()


def _pillow_square(img: Image.Image, size: int) -> np.ndarray:
    """Pillow's bilinear resize with the app's geometry: the resize every shipped model was first trained on."""
    nw, nh, left, top = square_geometry(*img.size, size)
    out = img.resize((nw, nh), Image.BILINEAR, reducing_gap=2.0 if size / min(img.size) <= 0.5 else None)
    return np.asarray(out.crop((left, top, left + size, top + size)), dtype=int)


def test_resize_is_pillows_within_one_grey_level_and_pillows_own_for_large_downscales():
    """PyTorch's antialiased resize replaced Pillow's: it may round a value differently, never shift or blur the
    photo; where Pillow box-reduces first (4x or more, camera-size photos) Pillow's pixels are kept as they were."""
    from skinapp.benchmark import synthetic_lesion

    cases = [(600, 450, 128, False), (450, 600, 224, False), (180, 180, 96, False), (180, 180, 260, False),
             (97, 301, 96, False), (600, 450, 96, True), (1600, 1200, 128, True)]
    for w, h, size, reduces in cases:
        img = synthetic_lesion(w, h, seed=2)
        assert pillow_reduces(w, h, size) is reduces, (w, h, size)
        got, want = np.asarray(resize_square(img, size), dtype=int), _pillow_square(img, size)
        assert got.shape == want.shape == (size, size, 3)
        diff = np.abs(got - want)
        if reduces:
            assert diff.max() == 0, (w, h, size)
        else:  # a blur or a one-pixel shift moves the photo's noise (sd 8) by tens, in most values
            assert diff.max() <= 1 and diff.mean() < 0.3, (w, h, size, diff.max(), diff.mean())
        t = square_uint8(img, size)
        assert t.dtype == torch.uint8 and t.shape == (1, 3, size, size)
        assert np.array_equal(t[0].permute(1, 2, 0).numpy(), got)


def test_resize_keeps_a_photo_already_at_size_and_reads_any_mode():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(resize_square(Image.fromarray(arr), 40)), arr)
    grey = Image.fromarray(arr[..., 0], mode="L")
    assert np.array_equal(square_uint8(grey, 40)[0, 1].numpy(), arr[..., 0])


def test_to_tensor_shape_and_normalisation():
    img = Image.new("RGB", (50, 40), (255, 0, 51))
    mean, std = (0.5, 0.25, 0.1), (0.25, 0.5, 0.1)
    x = to_tensor(img, 24, mean, std)
    assert x.shape == (1, 3, 24, 24) and x.dtype == torch.float32
    expected = [(1.0 - 0.5) / 0.25, (0.0 - 0.25) / 0.5, (0.2 - 0.1) / 0.1]
    for c in range(3):
        assert torch.allclose(x[0, c], torch.full((24, 24), expected[c]), atol=1e-5)


def test_to_tensor_keeps_orientation():
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:16] = 255  # top half white
    x = to_tensor(Image.fromarray(arr), 32, (0, 0, 0), (1, 1, 1))
    assert torch.all(x[0, :, :15] == 1) and torch.all(x[0, :, 17:] == 0)


def test_normalize_and_model_input():
    x = torch.full((2, 3, 16, 16), 0.5)
    y = normalize(x, (0.5, 0.0, 1.0), (1.0, 0.5, 0.5))
    assert torch.allclose(y[:, 0], torch.zeros(2, 16, 16))
    assert torch.allclose(y[:, 1], torch.ones(2, 16, 16))
    assert torch.allclose(y[:, 2], -torch.ones(2, 16, 16))
    z = model_input(x, 8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert z.shape == (2, 3, 8, 8)
    assert torch.allclose(z, torch.zeros_like(z), atol=1e-6)


# ------------------------------------------------------------------------------------------------ augmentation

def _batch(b: int = 6, s: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, s, s), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("strength", ["standard", "strong", "none"])
@pytest.mark.parametrize("out_size", [24, 40])
def test_augment_batch_shape_dtype_range(strength, out_size):
    x = _batch()
    before = x.clone()
    out = augment_batch(x, out_size, torch.Generator().manual_seed(1), strength)
    assert out.shape == (6, 3, out_size, out_size)
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.isfinite(out).all()
    assert torch.equal(x, before)  # the decoded images are not modified


@pytest.mark.parametrize("strength", ["standard", "strong"])
def test_augment_batch_is_deterministic_for_a_seed(strength):
    x = _batch()
    a = augment_batch(x, 32, torch.Generator().manual_seed(123), strength)
    b = augment_batch(x, 32, torch.Generator().manual_seed(123), strength)
    c = augment_batch(x, 32, torch.Generator().manual_seed(124), strength)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_augment_batch_actually_augments():
    x = _batch(8, 32)
    plain = x.float() / 255.0
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, 32, gen, "standard")
    changed = [(out[i] - plain[i]).abs().mean().item() > 0.01 for i in range(8)]
    assert all(changed)
    again = augment_batch(x, 32, gen, "standard")  # the generator moved on: another draw
    assert not torch.allclose(out, again)


def test_augment_none_is_plain_scaling():
    x = _batch(3, 32)
    out = augment_batch(x, 32, torch.Generator().manual_seed(0), "none")
    assert torch.allclose(out, x.float() / 255.0)
    small = augment_batch(x, 16, torch.Generator().manual_seed(0), "none")
    assert small.shape == (3, 3, 16, 16)


def test_augment_keeps_a_flat_grey_image_flat_and_grey():
    x = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)
    out = augment_batch(x, 24, torch.Generator().manual_seed(5), "strong")
    for i in range(4):
        assert torch.allclose(out[i], out[i, 0, 0, 0].expand(3, 24, 24), atol=1e-4)
    brightness = out[:, 0, 0, 0]
    assert (brightness - 128 / 255).abs().max() <= 0.4 * 128 / 255 + 1e-4


def test_augment_geometry_is_a_crop_flip_or_rotation():
    """With colour jitter neutralised, every output pixel comes from the input: a red-only input stays red-only."""
    x = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    x[:, 0] = 200
    out = augment_batch(x, 32, torch.Generator().manual_seed(9), "standard")
    assert torch.all(out[:, 1:] <= out[:, :1] + 1e-6)


def test_augment_pair_gives_both_resolutions_the_same_view():
    """The teacher's view at its size and the student's from the photo decoded at the student's size: one crop,
    turn, flip and colour (the student's is close to the teacher's resized, and far from another draw)."""
    from skinapp.data import augment_pair

    photo = [lesion(i, i % 2 == 0, 180) for i in range(4)]
    big = torch.stack([torch.from_numpy(np.array(p.resize((224, 224)))).permute(2, 0, 1) for p in photo])
    small = torch.stack([torch.from_numpy(np.array(p.resize((96, 96)))).permute(2, 0, 1) for p in photo])
    gen = torch.Generator().manual_seed(3)
    t, s = augment_pair(big, small, 224, 96, gen, "standard")
    assert t.shape == (4, 3, 224, 224) and s.shape == (4, 3, 96, 96)
    same = (resize_batch(t, 96) - s).abs().mean().item()
    other = (resize_batch(augment_batch(big, 224, torch.Generator().manual_seed(4), "standard"), 96) - s)
    assert same < 0.02 < other.abs().mean().item()
    # the generator moved on exactly as one augment_batch call moves it
    ref = torch.Generator().manual_seed(3)
    augment_batch(big, 224, ref, "standard")
    assert torch.equal(torch.rand(5, generator=gen), torch.rand(5, generator=ref))
    # without the student's own photos, its view is the teacher's resized (the old way, kept for size >= teacher's)
    t2, s2 = augment_pair(big, None, 224, 96, torch.Generator().manual_seed(3), "standard")
    assert torch.equal(t2, t) and torch.equal(s2, resize_batch(t, 96))


# ------------------------------------------------------------------------------------------------ real data

def test_shared_isic9_scan():
    if not SHARED_ISIC.is_dir():
        pytest.skip(f"shared ISIC data not present at {SHARED_ISIC}")
    ds = scan_dataset(SHARED_ISIC)
    assert len(ds.diagnoses) == 9
    assert set(ds.diagnoses) == set(DEFAULT_LABEL_MAP)
    assert ds.class_counts() == {"benign": 790, "malignant": 805}
    assert ds.counts()["melanoma"] == 304
    mel = scan_dataset(SHARED_ISIC, task="melanoma")
    assert mel.class_counts() == {"other": 1291, "melanoma": 304}
    dd = decode_dataset(ds, 32)
    assert dd.skipped == []
    assert dd.images.shape == (1595, 3, 32, 32)


def test_hidden_folders_inside_a_class_are_ignored(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=4, layout="binary")
    hidden = root / "benign" / ".ipynb_checkpoints"
    hidden.mkdir()
    lesion(99, False, 48).save(hidden / "copy.jpg")
    ds = scan_dataset(root)
    assert not any(".ipynb_checkpoints" in str(s.path) for s in ds.samples)
    assert ds.class_counts() == {"benign": 4, "malignant": 4}


def test_a_folder_that_is_not_a_dataset_is_refused_without_walking_the_tree(tmp_path, monkeypatch):
    import skinapp.data as data_mod

    root = tmp_path / "home"
    for i in range(30):
        (root / "stuff" / f"d{i}").mkdir(parents=True)
    monkeypatch.setattr(data_mod, "MAX_ENTRIES", 20)
    with pytest.raises(DatasetError, match="more than 20 files and folders: it does not look like a dataset"):
        scan_dataset(root)


def test_an_unreadable_folder_is_a_clear_refusal(tmp_path, monkeypatch):
    import skinapp.data as data_mod

    root = make_dataset(tmp_path / "d", per_class=4)

    def denied(top, onerror=None, **kw):
        onerror(PermissionError(13, "Permission denied", str(top)))
        return iter(())

    monkeypatch.setattr(data_mod.os, "walk", denied)
    with pytest.raises(DatasetError, match="cannot read .* \\(Permission denied\\); choose a folder this server"):
        scan_dataset(root)
