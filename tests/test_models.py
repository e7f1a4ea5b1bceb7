"""Architectures: shapes, size, FLOPs, offline ImageNet init, local checkpoints and clear errors."""
from __future__ import annotations

import importlib

import pytest
import torch
from safetensors.torch import save_file

from skinapp.explain import resolve_layers
from skinapp.models import (ARCHITECTURES, DSNet, PretrainedWeightsError, UnknownArchitectureError, count_mflops,
                            count_params, create_model, cut_stages, fold_batchnorm, get_arch)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_builds_and_has_the_right_output_shape(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=2, pretrained="none").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()
    # the card's Grad-CAM layer(s) must exist in the built network
    for layer in get_arch(arch).cam_layer.split(","):
        model.get_submodule(layer)


def test_fused_teacher_outputs_the_log_of_its_members_mean_probability():
    torch.manual_seed(0)
    model = create_model("fused_lite012", num_classes=3, pretrained="none").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused, members = model(x), model(x, members=True)
    assert members.shape == (3, 2, 3)
    expected = torch.softmax(members, dim=2).mean(dim=0)
    assert torch.allclose(torch.softmax(fused, dim=1), expected, atol=1e-6)
    assert torch.allclose(fused.exp().sum(dim=1), torch.ones(2), atol=1e-5)  # already log-probabilities


def test_fused_teacher_members_start_from_their_own_imagenet_packages():
    fused = create_model("fused_lite012", num_classes=2, pretrained="auto")
    for key, arch in (("lite0", "efficientnet_lite0"), ("lite2", "efficientnet_lite2")):
        single = create_model(arch, num_classes=2, pretrained="auto")
        assert torch.equal(fused.members[key].conv_stem.weight, single.conv_stem.weight)
        assert not torch.equal(fused.members[key].conv_stem.weight,
                               create_model(arch, num_classes=2, pretrained="none").conv_stem.weight)


def test_dsnet_is_small_and_cheap():
    dsnet = create_model("dsnet", 2)
    assert isinstance(dsnet, DSNet)
    assert count_params(dsnet) <= 300_000
    ds_mflops = count_mflops(dsnet, 128)
    lite_mflops = count_mflops(create_model("efficientnet_lite0", 2), 224)
    assert ds_mflops > 0
    assert ds_mflops < 0.5 * lite_mflops, (ds_mflops, lite_mflops)
    # counting must not leave the model in eval mode
    dsnet.train()
    count_mflops(dsnet, 64)
    assert dsnet.training


def _package_state(package: str) -> dict[str, torch.Tensor]:
    mod = importlib.import_module(package)
    cls = next(getattr(mod, n) for n in dir(mod) if n.endswith("ModelFile"))
    return torch.load(cls.get_model_file_path(), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_offline_imagenet_package_init(arch):
    package = get_arch(arch).lite_package
    if arch != "efficientnet_lite0":  # lite0 is a hard dependency; the others are optional
        pytest.importorskip(package)
    source = _package_state(package)
    torch.manual_seed(0)
    random_init = create_model(arch, 2, pretrained="none")
    torch.manual_seed(0)
    pre = create_model(arch, 2, pretrained="package")
    stem = pre.conv_stem.weight
    assert not torch.equal(stem, random_init.conv_stem.weight)
    assert torch.equal(stem, source["_conv_stem.weight"])
    # a deeper tensor too: the last conv before the head
    assert torch.equal(pre.conv_head.weight, source["_conv_head.weight"])
    # the classifier stays the new 2-class head
    assert pre.classifier.weight.shape == (2, source["_fc.weight"].shape[1])
    # "auto" uses the package when there is one
    auto = create_model(arch, 2, pretrained="auto")
    assert torch.equal(auto.conv_stem.weight, stem)


@pytest.mark.parametrize("arch", ["dsnet", "resnet50"])
def test_package_init_without_a_package_lists_the_valid_ones(arch):
    with pytest.raises(PretrainedWeightsError) as ei:
        create_model(arch, 2, pretrained="package")
    msg = str(ei.value)
    assert arch in msg
    for name, spec in ARCHITECTURES.items():
        if spec.lite_package:
            assert name in msg


def test_auto_without_a_package_is_random_init():
    torch.manual_seed(3)
    a = create_model("dsnet", 2, pretrained="auto")
    torch.manual_seed(3)
    b = create_model("dsnet", 2, pretrained="none")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_unknown_architecture_lists_the_valid_names():
    for call in (lambda: create_model("vgg_tiny", 2), lambda: get_arch("vgg_tiny")):
        with pytest.raises(UnknownArchitectureError) as ei:
            call()
        msg = str(ei.value)
        assert "vgg_tiny" in msg
        for name in ARCHITECTURES:
            assert name in msg


def test_unknown_pretrained_value_is_a_clear_error(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="neither a file"):
        create_model("dsnet", 2, pretrained=str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_checkpoint_initialises_the_backbone(tmp_path, suffix):
    torch.manual_seed(1)
    src = create_model("dsnet", num_classes=4)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.5)  # make it clearly different from any fresh init
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    torch.manual_seed(2)
    fresh = create_model("dsnet", num_classes=4, pretrained="none")
    torch.manual_seed(2)
    loaded = create_model("dsnet", num_classes=4, pretrained=str(path))
    lsd, fsd = loaded.state_dict(), fresh.state_dict()
    for k, v in state.items():
        if k.startswith("fc."):
            continue
        assert torch.equal(lsd[k], v), k
        if v.is_floating_point() and "running" not in k:
            assert not torch.equal(fsd[k], v), k
    # a checkpoint with another head size: backbone loaded, head left fresh at the new size
    torch.manual_seed(2)
    two = create_model("dsnet", num_classes=2, pretrained=str(path))
    assert two.fc.weight.shape == (2, 160)
    assert torch.equal(two.block3[0][0].weight, state["block3.0.0.weight"])
    torch.manual_seed(2)
    ref2 = create_model("dsnet", num_classes=2, pretrained="none")
    assert torch.equal(two.fc.weight, ref2.fc.weight)


def test_lite0_tiny_is_a_small_imagenet_initialised_cut_of_lite0():
    source = _package_state(get_arch("efficientnet_lite0").lite_package)
    tiny = create_model("lite0_tiny", 9, pretrained="package")
    assert count_params(tiny) <= 300_000
    assert len(tiny.blocks) == 4 and tiny.classifier.weight.shape == (9, 80)
    assert torch.equal(tiny.conv_stem.weight, source["_conv_stem.weight"])
    # the last kept layer is ImageNet's too, not only the stem
    full = create_model("efficientnet_lite0", 9, pretrained="package")
    assert torch.equal(tiny.blocks[3][2].conv_pwl.weight, full.blocks[3][2].conv_pwl.weight)
    # random init and the registry's strict reload see the same keys
    assert sorted(create_model("lite0_tiny", 9).state_dict()) == sorted(tiny.state_dict())
    assert count_mflops(tiny, 96) < count_mflops(create_model("dsnet", 9), 96)


def test_cutting_more_stages_than_a_network_has_is_a_clear_error():
    with pytest.raises(UnknownArchitectureError, match="cannot keep 9 stages.*has 7"):
        cut_stages(create_model("efficientnet_lite0", 2), 9, 2)


def _randomise_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("arch", ["dsnet", "lite0_tiny", "efficientnet_lite0"])
def test_folding_batchnorm_keeps_outputs_and_layer_names(arch):
    model = _randomise_batchnorm(create_model(arch, 3))
    x = torch.rand(2, 3, 64, 64)
    folded = fold_batchnorm(model, 64)
    assert folded is not model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4)
    resolve_layers(folded, get_arch(arch).cam_layer)  # Grad-CAM still finds its layers
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


class _NormFirst(torch.nn.Module):
    """Registers conv then norm, but calls them the other way round: folding by order would be wrong."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.norm(x))


def test_folding_is_refused_when_it_would_change_the_output(caplog):
    model = _randomise_batchnorm(_NormFirst())
    with caplog.at_level("WARNING"):
        assert fold_batchnorm(model, 16) is model
    assert "keeping it unfolded" in caplog.text
