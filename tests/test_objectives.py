"""Distillation objectives: each loss on a case worked by hand, then each objective end to end on tiny data."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from skinapp.distill import TrainConfig, TrainingError, kd_loss, train
from skinapp.distill.features import pair_stages
from skinapp.distill.objectives import (KD_OBJECTIVES, attention_loss, attention_map, confidence_weights, cutmix,
                                        intra_loss, intra_relations, parse_kd, rkd_angle, rkd_distance,
                                        rotate_quarters, weighted_kd_loss)
from skinapp.models import create_model
from skinapp.registry import Registry

TINY = dict(arch="dsnet", epochs=1, lr=1e-3, batch_size=8, image_size=48, threads=1, pretrained="none")


# ---------------------------------------------------------------- losses by hand

def test_attention_loss_by_hand():
    # student map [1, 0] -> attention [1, 0]; teacher [0, 2] -> squared [0, 4] -> normalised [0, 1]
    s = torch.tensor([[[[1.0, 0.0]]]])
    t = torch.tensor([[[[0.0, 2.0]]]])
    assert attention_map(t).tolist() == [[0.0, 1.0]]
    # mean((1 - 0)^2, (0 - 1)^2) = 1, times beta / 2
    assert attention_loss([s], [attention_map(t)], beta=1000.0).item() == pytest.approx(500.0)
    assert attention_loss([s], [attention_map(3 * s)]).item() == pytest.approx(0.0, abs=1e-9)  # scale-free


def test_attention_pools_the_teachers_larger_map_to_the_students_size():
    t = torch.zeros(1, 1, 2, 4)
    t[..., :2] = 1.0  # the left half of a 2 x 4 map is active: pooled to 1 x 2, [1, 0] before normalising
    assert attention_map(t, (1, 2)).tolist() == [[1.0, 0.0]]


def test_rkd_distance_by_hand():
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # distances 1, 1, sqrt 2
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # distances 1, 2, 1
    ds = [d / ((2 + math.sqrt(2)) / 3) for d in (1, 1, math.sqrt(2))]  # each over the mean distance
    dt = [d / (4 / 3) for d in (1, 2, 1)]
    huber = [0.5 * (a - b) ** 2 if abs(a - b) < 1 else abs(a - b) - 0.5 for a, b in zip(ds, dt)]
    assert rkd_distance(s, t).item() == pytest.approx(sum(huber) / 3, rel=1e-5)
    assert rkd_distance(s, 7 * s + 3).item() == pytest.approx(0.0, abs=1e-7)  # scale and shift free


def test_rkd_angle_by_hand():
    # a right angle at point 0 (student) against three points on a line (teacher)
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])

    def cosines(p):
        out = []
        for j in range(3):
            for i in range(3):
                for k in range(3):
                    a, b = p[i] - p[j], p[k] - p[j]
                    na, nb = math.hypot(*a), math.hypot(*b)
                    out.append(0.0 if na == 0 or nb == 0 else float(a @ b) / (na * nb))
        return out

    cs, ct = cosines(s), cosines(t)
    want = sum(0.5 * (a - b) ** 2 if abs(a - b) < 1 else abs(a - b) - 0.5 for a, b in zip(cs, ct)) / 27
    assert rkd_angle(s, t).item() == pytest.approx(want, rel=1e-5)
    assert rkd_angle(s, 2 * s + 1).item() == pytest.approx(0.0, abs=1e-7)


def test_intra_instance_relations_by_hand():
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # two positions, orthogonal: relations [[1, 0], [0, 1]]
    t = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])  # two positions, parallel: relations [[1, 1], [1, 1]]
    assert intra_relations(t, (1, 2)).tolist() == [[[1.0, 1.0], [1.0, 1.0]]]
    assert intra_loss(s, intra_relations(t, (1, 2))).item() == pytest.approx(0.5)  # mean of (0, 1, 1, 0)^2
    assert intra_loss(s, intra_relations(5 * s, (1, 2))).item() == pytest.approx(0.0, abs=1e-7)


def test_confidence_weights_and_weighted_soft_outputs_by_hand():
    logits = torch.log(torch.tensor([[0.8, 0.2], [0.6, 0.4]]))
    y = torch.tensor([0, 1])  # the teacher gives the true class 0.8 and 0.4
    w = confidence_weights(logits, y)
    assert w.tolist() == pytest.approx([0.8 / 0.6, 0.4 / 0.6])
    # a diagnosis teacher of a binary student: outputs 1 and 2 are the positive group
    dx = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]]))
    assert confidence_weights(dx, torch.tensor([1, 0]), [1, 2]).tolist() == pytest.approx([0.5 / 0.7, 0.9 / 0.7])
    s = torch.tensor([[1.0, -1.0], [0.5, 0.2]])
    # equal weights give back Hinton's loss exactly
    assert weighted_kd_loss(s, y, logits, torch.ones(2), 4.0, 0.3).item() == pytest.approx(
        kd_loss(s, y, logits, 4.0, 0.3).item(), rel=1e-6)
    # all weight on image 0: the soft term is twice image 0's own KL
    kl0 = float(torch.nn.functional.kl_div(torch.log_softmax(s[:1] / 4, 1), torch.log_softmax(logits[:1] / 4, 1),
                                           reduction="sum", log_target=True))
    ce = float(torch.nn.functional.cross_entropy(s, y))
    got = weighted_kd_loss(s, y, logits, torch.tensor([2.0, 0.0]), 4.0, 0.3).item()
    assert got == pytest.approx(0.3 * ce + 0.7 * 16 * kl0, rel=1e-5)


def test_rotations_and_cutmix_move_pixels_as_said():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    r, k = rotate_quarters(x, torch.Generator().manual_seed(0))
    for img, out, q in zip(x, r, k):
        assert torch.equal(out, torch.rot90(img, int(q), dims=(1, 2)))
    torch.manual_seed(0)
    m = cutmix(x, torch.Generator().manual_seed(1))
    # every pixel comes from one of the two images at the same place
    assert bool(((m == x) | (m == x.flip(0))).all())


def test_objective_names_are_checked():
    assert parse_kd("logit+attention") == ("logit", "attention")
    for bad in ("hinton", "logit+logit", "logit+function-matching", ""):
        with pytest.raises(TrainingError, match="logit"):
            parse_kd(bad)
    with pytest.raises(TrainingError, match="teacher views to 0"):
        TrainConfig(data="d", name="n", teacher="t", kd="function-matching", teacher_views=4).validate()
    # the default follows the objective: function matching mixes every batch anew, so its teacher runs live
    assert TrainConfig(data="d", name="n", kd="function-matching").teacher_views == 0
    assert TrainConfig(data="d", name="n", kd="attention").teacher_views == 4


def test_stages_pair_by_stride():
    student = create_model("lite0_tiny", 2, "none")
    teacher = create_model("efficientnet_lite0", 2, "none")
    # at 96 px the student's stages 1-3 have strides 4, 8, 16; Lite0's blocks 1, 2 and 4 (the deepest at 16)
    assert pair_stages(student, 96, teacher, 224) == [("blocks.1", "blocks.1"), ("blocks.2", "blocks.2"),
                                                      ("blocks.3", "blocks.4")]
    assert pair_stages(create_model("dsnet", 2, "none"), 96, teacher, 224) == [
        ("block1", "blocks.1"), ("block2", "blocks.2"), ("block3", "blocks.4")]


# ---------------------------------------------------------------- end to end

@pytest.fixture
def registry_copy(tiny_registry, tmp_path) -> Path:
    dst = tmp_path / "weights"
    shutil.copytree(tiny_registry, dst)
    return dst


@pytest.mark.parametrize("kd", ["attention", "relational", "function-matching", "logit+attention"])
def test_each_objective_trains_and_is_recorded(kd, registry_copy, tiny_data):
    reg = Registry(registry_copy)
    card = train(TrainConfig(data=str(tiny_data), name=f"s-{kd.replace('+', '-')}", teacher="tiny-teacher", kd=kd,
                             **TINY | {"epochs": 2}), reg)
    assert card.kd["objectives"] == kd.split("+")
    assert card.kd["teacher_views"] == (0 if kd == "function-matching" else 4)
    assert math.isfinite(card.metrics["auc"])
    if "attention" in kd or kd == "relational":
        assert card.kd["pairs"] == [["block1", "block1"], ["block2", "block2"], ["block3", "block3"]]
    if kd == "relational":
        assert (card.kd["kd_relation"], card.kd["kd_rotation"]) == (1.0, 0.5)
        # the rotation head trained beside the student is not part of the registered model
        model, _ = reg.load(card.name)
        assert not any("rotation" in k for k in model.state_dict())
    if kd == "function-matching":
        assert card.kd["alpha"] == 0.0 and card.kd["kd_mix"] == 1.0


def test_each_objective_changes_what_is_learned(registry_copy, tiny_data):
    """The same seed, data and schedule: each objective's extra term must move the weights away from plain logit KD."""
    reg = Registry(registry_copy)
    trained = {}
    for kd in ("logit", "attention", "relational"):
        card = train(TrainConfig(data=str(tiny_data), name=f"w-{kd}", teacher="tiny-teacher", kd=kd, teacher_views=0,
                                 **TINY), reg)
        trained[kd] = reg.load(card.name)[0].state_dict()["fc.weight"]
    assert not torch.allclose(trained["logit"], trained["attention"])
    assert not torch.allclose(trained["logit"], trained["relational"])


def test_cached_feature_targets_are_the_teachers_on_each_cached_view(registry_copy, tiny_data, tmp_path, monkeypatch):
    """Attention and relational runs cache the teacher's feature targets beside each view; they must be what the
    teacher gives on that view (here teacher and student share one size, so the stored view is what it saw)."""
    from safetensors.torch import load_file

    from skinapp.distill.features import pair_stages, stage_names, stage_shapes
    from skinapp.distill.loop import FeatureKD
    from skinapp.data import model_input

    monkeypatch.setenv("SKINAPP_CACHE", str(tmp_path / "cache"))
    reg = Registry(registry_copy)
    train(TrainConfig(data=str(tiny_data), name="att-cached", teacher="tiny-teacher", kd="attention",
                      teacher_views=1, **TINY), reg)
    (path,) = (tmp_path / "cache").glob("teacher-views-*.safetensors")
    cache = load_file(str(path))
    assert {"feat.att0", "feat.att1", "feat.att2", "feat.emb", "feat.intra"} <= set(cache)
    teacher, card = reg.load("tiny-teacher")
    student = create_model("dsnet", 4, "none")
    shapes = stage_shapes(student, 48)
    fk = FeatureKD(TrainConfig(data="d", name="n", kd="attention"), student, teacher.eval(),
                   pair_stages(student, 48, teacher, 48), stage_names(student)[-1], stage_names(teacher)[-1], 160,
                   {n: s[1:] for n, s in shapes.items()})
    x01 = cache["views"][0, :6].float() / 255
    with torch.no_grad():
        teacher(model_input(x01, card.input_size, card.mean, card.std))
    live = fk.targets()
    for name in ("att0", "att2", "emb", "intra"):
        assert torch.allclose(cache[f"feat.{name}"][0, :6], live[name], atol=0.05), name
    assert not torch.allclose(cache["feat.emb"][0, :6], cache["feat.emb"][0, 6:12], atol=0.05)
    fk.close()


def test_student_starts_from_the_teachers_layers(registry_copy, tiny_data):
    reg = Registry(registry_copy)
    teacher, _ = reg.load("tiny-teacher")
    card = train(TrainConfig(data=str(tiny_data), name="from-teacher", init_from_teacher="tiny-teacher",
                             **TINY | {"lr": 1e-6, "epochs": 1}), reg)  # steps too small to move anything
    assert card.train["init"]["teacher"] == "tiny-teacher" and card.train["init"]["tensors"] > 10
    student, _ = reg.load("from-teacher")
    s, t = student.state_dict(), teacher.state_dict()
    assert torch.allclose(s["stem.0.weight"], t["stem.0.weight"], atol=1e-4)
    assert torch.allclose(s["block3.0.0.weight"], t["block3.0.0.weight"], atol=1e-4)


def test_init_from_a_teacher_without_matching_layers_is_refused(registry_copy, tiny_data):
    with pytest.raises(TrainingError, match="lite0_tiny starts from: efficientnet_lite0, lite0_tiny"):
        train(TrainConfig(data=str(tiny_data), name="x", init_from_teacher="tiny-teacher",
                          **TINY | {"arch": "lite0_tiny"}), Registry(registry_copy))


def test_objectives_registry_lists_what_the_train_page_offers():
    assert list(KD_OBJECTIVES) == ["logit", "attention", "relational", "function-matching"]
    assert all(o.summary and o.reference for o in KD_OBJECTIVES.values())
