"""A teacher fused from registered models: its output, card, Grad-CAM, use as a teacher, and what it refuses."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import lesion, roc_area
from skinapp.cli import main
from skinapp.distill import TrainConfig, cached_augmentations, random_flips, train
from skinapp.explain import explain
from skinapp.fuse import FusionError, fuse_models
from skinapp.inference import Predictor
from skinapp.models import VIEWS, flip_invariant
from skinapp.registry import DuplicateModelError, ModelFileError, Registry


@pytest.fixture()
def reg(tmp_path, tiny_registry):
    """The tiny registry plus a second diagnosis-head member that sees 32 px instead of 48."""
    shutil.copytree(tiny_registry, tmp_path / "w")
    reg = Registry(tmp_path / "w")
    net, card = reg.load("tiny-teacher")
    reg.register(net, dataclasses.replace(card, name="small-member", input_size=32, default=False))
    return reg


def test_output_is_the_mean_probability_over_members_and_views(reg, tiny_data):
    card = fuse_models(reg, ["tiny-teacher", "small-member"], "fused", str(tiny_data))
    fused = Predictor(*reg.load("fused"))
    x = torch.rand(2, 3, 48, 48)
    probs = []
    for name, size in (("tiny-teacher", 48), ("small-member", 32)):
        net, _ = reg.load(name)
        for view in ("identity", "hflip", "vflip", "rot180"):
            xi = F.interpolate(VIEWS[view](x), size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False) if size != 48 else VIEWS[view](x)
            with torch.no_grad():
                probs.append(torch.softmax(net(xi), dim=1))
    expected = torch.stack(probs).mean(0)
    assert torch.allclose(fused.logits(x).exp(), expected, atol=1e-5)
    teacher = reg.get("tiny-teacher")
    assert card.role == "teacher" and card.arch == "fused" and not card.default
    assert card.input_size == 48 and card.label_names == teacher.label_names and card.data == teacher.data
    assert [m["name"] for m in card.fusion["members"]] == ["tiny-teacher", "small-member"]
    assert card.fusion["views"] == ["identity", "hflip", "vflip", "rot180"]
    assert card.params == 2 * teacher.params and card.mflops > 4 * teacher.mflops
    assert card.cam_layer == ("members.tiny_teacher.block2,members.tiny_teacher.block3,"
                              "members.small_member.block2,members.small_member.block3")
    assert card.cam_method == "layercam"  # both members are dsnet: their own method
    assert card.metrics["n"] == teacher.data["n_val"]
    assert card.metrics["auc"] == pytest.approx(roc_area(card.metrics), abs=1e-4)
    assert card.temperature > 0 and card.metrics["ece_null"]["mean"] > 0


def test_views_none_and_half_precision(reg, tiny_data):
    card = fuse_models(reg, ["tiny-teacher", "small-member"], "fused-half", str(tiny_data), views="none",
                       dtype="float16")
    assert card.fusion["views"] == ["identity"] and card.dtype == "float16"
    assert card.file_bytes < 0.6 * 2 * reg.get("tiny-teacher").file_bytes
    assert torch.isfinite(Predictor(*reg.load("fused-half")).logits(torch.rand(1, 3, 48, 48))).all()


def test_gradcam_covers_every_member(reg, tiny_data):
    fuse_models(reg, ["tiny-teacher", "small-member"], "fused", str(tiny_data))
    cam = explain(Predictor(*reg.load("fused")), lesion(3, True, 64))
    assert cam.heatmap.shape == (48, 48) and cam.overlay.shape == (64, 64, 3)  # overlay at the photo's 64 px
    assert float(cam.heatmap.min()) >= 0 and float(cam.heatmap.max()) <= 1


def test_cli_default_teacher_and_distilling_from_it(reg, tiny_data, capsys):
    rc = main(["--weights", str(reg.root), "fuse", "--members", "tiny-teacher,small-member", "--name", "fused",
               "--data", str(tiny_data), "--default", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["name"] == "fused" and out["fused_from"] == ["tiny-teacher", "small-member"]
    assert reg.default("teacher").name == "fused"
    student = train(TrainConfig(name="from-fused", arch="dsnet", teacher="fused", data=str(tiny_data), epochs=1, lr=1e-3, batch_size=8,
                                image_size=48, threads=1, pretrained="none", weights_dir=str(reg.root)), reg)
    assert student.teacher == "fused" and math.isfinite(student.metrics["auc"])
    # the fused teacher averages over all four flips: one cached augmentation per image serves four views
    assert student.kd["flipped_views"] is True and student.kd["cached_augmentations"] == 1


@pytest.mark.parametrize("members, message", [
    (["tiny-teacher"], "at least two members"),
    (["tiny-teacher", "tiny-teacher"], "different models"),
    (["tiny-teacher", "tiny-nokd"], "differ in label_names"),
])
def test_refuses_members_that_cannot_be_fused(reg, tiny_data, members, message):
    with pytest.raises(FusionError, match=message):
        fuse_models(reg, members, "fused", str(tiny_data))
    assert "fused" not in reg.names()


def test_refuses_other_splits_nesting_unknown_views_and_duplicates(reg, tiny_data):
    other = reg.get("small-member")
    reg.update("small-member", data=other.data | {"split_digest": "0" * 40})
    with pytest.raises(FusionError, match="different splits"):
        fuse_models(reg, ["tiny-teacher", "small-member"], "fused", str(tiny_data))
    reg.update("small-member", data=other.data)
    with pytest.raises(FusionError, match="choose one of: none, flips"):
        fuse_models(reg, ["tiny-teacher", "small-member"], "fused", str(tiny_data), views="rotations")
    fuse_models(reg, ["tiny-teacher", "small-member"], "fused", str(tiny_data))
    with pytest.raises(FusionError, match="itself fused"):
        fuse_models(reg, ["fused", "tiny-teacher"], "fused2", str(tiny_data))
    with pytest.raises(DuplicateModelError, match="model 'fused' already exists"):
        fuse_models(reg, ["tiny-teacher", "small-member"], "fused", str(tiny_data))


def test_a_card_that_no_longer_matches_its_weights_is_refused(reg, tiny_data):
    card = fuse_models(reg, ["tiny-teacher", "small-member"], "fused", str(tiny_data))
    reg.update("fused", fusion=card.fusion | {"members": card.fusion["members"][:1] * 2})
    with pytest.raises(ModelFileError):
        reg.load("fused")


def test_a_fusion_over_all_flips_is_flip_invariant(reg, tiny_data):
    fuse_models(reg, ["tiny-teacher", "small-member"], "flips", str(tiny_data))
    fuse_models(reg, ["tiny-teacher", "small-member"], "plain", str(tiny_data), views="none")
    flips, plain = reg.load("flips")[0], reg.load("plain")[0]
    assert flip_invariant(flips) and not flip_invariant(plain) and not flip_invariant(reg.load("tiny-teacher")[0])
    x = torch.rand(3, 3, 48, 48)
    with torch.no_grad():
        out = flips(x)
        for view in VIEWS.values():
            assert torch.allclose(flips(view(x)), out, atol=1e-5)
    assert (cached_augmentations(4, True), cached_augmentations(5, True), cached_augmentations(4, False)) == (1, 2, 4)


def test_random_flips_draws_every_flip_of_every_image():
    x = torch.arange(4.0).view(1, 1, 2, 2).repeat(64, 3, 1, 1)
    out = random_flips(x, torch.Generator().manual_seed(0))
    seen = {tuple(o[0].flatten().tolist()) for o in out}
    assert seen == {tuple(VIEWS[v](x[:1])[0, 0].flatten().tolist()) for v in VIEWS}


def test_views_must_be_known_and_start_with_the_photo_itself():
    from skinapp.models import FusedNet

    nets = {"a": torch.nn.Linear(2, 2), "b": torch.nn.Linear(2, 2)}
    with pytest.raises(ValueError, match="choose from: identity, hflip, vflip, rot180"):
        FusedNet(nets, views=("identity", "rot90"))
    with pytest.raises(ValueError, match="first view must be 'identity'"):
        FusedNet(nets, views=("hflip", "identity"))


def test_a_folder_that_is_not_the_members_data_leaves_no_fused_model(reg, tmp_path):
    """The fused card was once registered before its calibration read the folder: a wrong folder left a teacher
    with no metrics and T = 1 in the registry (and, with --overwrite, replaced the one before it)."""
    from conftest import make_dataset
    from skinapp.data import DatasetError

    foreign = make_dataset(tmp_path / "foreign", per_class=6, layout="binary")
    before = sorted(p.name for p in reg.root.iterdir())
    with pytest.raises(DatasetError, match="not fused's own data"):
        fuse_models(reg, ["tiny-teacher", "small-member"], "fused", str(foreign))
    assert sorted(p.name for p in reg.root.iterdir()) == before
