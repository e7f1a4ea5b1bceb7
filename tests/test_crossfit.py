"""Cross-fitted teachers: fold teachers, their fusion, and distillation that scores each training image with the
member that never saw it."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from skinapp.data import DatasetError, decode_dataset, fold_ids, scan_dataset
from skinapp.protocol import SplitSpec
from skinapp.distill import TrainConfig, TrainingError, fold_split, resolve_heads, teacher_logits, train
from skinapp.fuse import FusionError, fuse_models
from skinapp.registry import Registry

K = 3


def test_fold_ids_stratified_deterministic_and_keep_duplicates_together():
    strata = [i % 3 for i in range(60)]
    hashes = [f"h{i}" for i in range(58)] + ["h0", "h1"]  # two duplicates of the first images
    ids = fold_ids(strata, hashes, 4, seed=1)
    assert ids == fold_ids(strata, hashes, 4, seed=1)
    assert ids != fold_ids(strata, hashes, 4, seed=2)
    assert ids[58] == ids[0] and ids[59] == ids[1]
    assert set(ids) == {0, 1, 2, 3}
    for s in range(3):  # every diagnosis is spread over the folds, at most one apart
        c = Counter(f for f, st in zip(ids, strata) if st == s)
        assert max(c.values()) - min(c.values()) <= 2
    with pytest.raises(DatasetError, match="folds 1"):
        fold_ids(strata, hashes, 1)


@pytest.fixture(scope="module")
def crossfit_registry(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp("cf-weights")
    reg = Registry(root)
    common = dict(data=str(tiny_data), epochs=1, lr=1e-3, batch_size=8, image_size=32, threads=1, pretrained="none",
                  weights_dir=str(root), arch="dsnet", role="teacher", head="diagnosis", folds=K)
    for k in range(K):
        train(TrainConfig(name=f"fold{k}", fold=k, seed=k, **common), reg)
    fuse_models(reg, [f"fold{k}" for k in range(K)], "cf", str(tiny_data), crossfit=True)
    return reg


def test_fold_teachers_leave_their_fold_out(crossfit_registry, tiny_data):
    cards = [crossfit_registry.get(f"fold{k}") for k in range(K)]
    ds = scan_dataset(tiny_data)
    dec = decode_dataset(ds, 32)
    sp = SplitSpec().split(dec)
    train_idx, val_idx = sp.train, sp.val
    ids = fold_ids([int(dec.diagnosis_idx[i]) for i in train_idx], [dec.groups[i] for i in train_idx], K, 0)
    for k, c in enumerate(cards):
        assert c.train["folds"] == K and c.train["fold"] == k
        assert c.data["n_train"] == sum(f != k for f in ids) < len(train_idx)
        assert c.data["n_val"] == len(val_idx)  # validation is untouched
    plan = crossfit_registry.get("cf").fusion["crossfit"]
    assert plan == {"folds": K, "members": ["fold0", "fold1", "fold2"]}


def test_crossfit_teacher_scores_each_image_with_the_member_that_never_saw_it(crossfit_registry, tiny_data):
    cfg = TrainConfig(data=str(tiny_data), name="s", teacher="cf", image_size=32, pretrained="none")
    ds = scan_dataset(tiny_data)
    st = resolve_heads(cfg, ds, crossfit_registry)
    dec = decode_dataset(ds, 32)
    sp = SplitSpec().split(dec)
    train_idx, val_idx = sp.train, sp.val
    kept, folds = fold_split(cfg, st, dec, train_idx, val_idx)
    assert kept == train_idx and len(folds) == len(train_idx) and set(folds.tolist()) == set(range(K))
    x01 = dec.images[train_idx].float() / 255
    got = teacher_logits(st, x01, folds)
    for k in range(K):
        sel = folds == k
        own = st.teacher(teacher_input(st, x01[sel]), only=[f"fold{k}"])
        assert torch.allclose(got[sel], own, atol=1e-5)
        other = st.teacher(teacher_input(st, x01[sel]), only=[f"fold{(k + 1) % K}"])
        assert not torch.allclose(got[sel], other, atol=1e-5)
    # new photos (no fold) get the whole ensemble
    assert torch.allclose(teacher_logits(st, x01), st.teacher(teacher_input(st, x01)), atol=1e-5)


def teacher_input(st, x01):
    from skinapp.data import model_input

    tc = st.teacher_card
    return model_input(x01, tc.input_size, tc.mean, tc.std).contiguous(memory_format=torch.channels_last)


def test_distil_from_crossfit_teacher_and_refusals(crossfit_registry, tiny_data, tmp_path):
    common = dict(data=str(tiny_data), arch="dsnet", epochs=1, lr=1e-3, batch_size=8, image_size=32, threads=1,
                  pretrained="none", weights_dir=str(crossfit_registry.root), teacher="cf", teacher_views=2)
    card = train(TrainConfig(name="cf-student", **common), crossfit_registry)
    assert card.teacher == "cf" and card.kd["head"] == "diagnosis"
    card = train(TrainConfig(name="cf-student-live", **(common | {"teacher_views": 0})), crossfit_registry)
    assert card.teacher == "cf"
    with pytest.raises(TrainingError, match="another split"):
        train(TrainConfig(name="x", split_seed=3, **common), crossfit_registry)
    with pytest.raises(TrainingError, match="mixup"):
        train(TrainConfig(name="x", mixup=0.4, **(common | {"teacher_views": 0})), crossfit_registry)
    with pytest.raises(TrainingError, match="cross-fitted"):
        train(TrainConfig(name="x", folds=K, fold=0, **common), crossfit_registry)
    with pytest.raises(TrainingError, match="fold 5"):
        TrainConfig(data="d", name="x", folds=K, fold=5).validate()


def test_crossfit_fusion_needs_one_member_per_fold(crossfit_registry, tiny_data):
    with pytest.raises(FusionError, match="one member per fold"):
        fuse_models(crossfit_registry, ["fold0", "fold1"], "bad", str(tiny_data), crossfit=True)
