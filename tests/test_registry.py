"""The model registry: round trips, integrity checks, unique names, defaults, float16 and atomic writes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import skinapp.registry as registry_mod
from skinapp.models import create_model
from skinapp.registry import (DuplicateModelError, ModelCard, ModelFileError, Registry, UnknownModelError)

LABELS = ("benign", "malignant")


def make_card(name: str, role: str = "student", arch: str = "dsnet", **kw) -> ModelCard:
    base = dict(label_names=LABELS, groups=LABELS, input_size=48, cam_layer="block3")
    base.update(kw)
    return ModelCard(name=name, role=role, arch=arch, **base)


def make_model(seed: int = 0, num_classes: int = 2):
    torch.manual_seed(seed)
    model = create_model("dsnet", num_classes)
    # non-trivial BatchNorm buffers so the round trip covers them too
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 48, 48))
    return model.eval()


def files(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


def test_round_trip_identical_outputs_and_keys(tmp_path):
    reg = Registry(tmp_path)
    model = make_model()
    card = reg.register(model, make_card("rt"))
    assert card.weights == "rt.safetensors"
    assert card.params == sum(p.numel() for p in model.parameters())
    assert card.mflops > 0 and card.file_bytes == (tmp_path / "rt.safetensors").stat().st_size
    assert len(card.sha256) == 64 and card.created
    assert files(tmp_path) == {"rt.json", "rt.safetensors"}
    loaded, lcard = reg.load("rt")
    assert lcard == card
    assert not loaded.training
    assert list(loaded.state_dict()) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # the card on disk is plain JSON with the same content
    on_disk = json.loads((tmp_path / "rt.json").read_text())
    assert on_disk["name"] == "rt" and on_disk["sha256"] == card.sha256


def test_tampered_weights_are_refused_naming_the_file(tmp_path):
    reg = Registry(tmp_path)
    reg.register(make_model(), make_card("t1"))
    path = tmp_path / "t1.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as ei:
        reg.load("t1")
    assert str(path) in str(ei.value)
    assert "altered" in str(ei.value)


def test_missing_weights_file_is_named(tmp_path):
    reg = Registry(tmp_path)
    reg.register(make_model(), make_card("gone"))
    (tmp_path / "gone.safetensors").unlink()
    with pytest.raises(ModelFileError) as ei:
        reg.load("gone")
    assert str(tmp_path / "gone.safetensors") in str(ei.value)
    assert "missing" in str(ei.value)


def test_card_that_does_not_fit_the_weights(tmp_path):
    reg = Registry(tmp_path)
    reg.register(make_model(), make_card("wrong"))
    # architecture changed on the card: the weights' keys belong to another network
    reg.update("wrong", arch="mobilenetv3_small_100")
    with pytest.raises(ModelFileError) as ei:
        reg.load("wrong")
    assert "wrong.safetensors" in str(ei.value) and "mobilenetv3_small_100" in str(ei.value)
    # same architecture, but the card claims four output classes: the head's shape does not fit
    reg.update("wrong", arch="dsnet", label_names=("a", "b", "c", "d"), groups=LABELS * 2)
    with pytest.raises(ModelFileError, match="does not fit"):
        reg.load("wrong")


@pytest.mark.parametrize("file, content, reason", [
    ("bad.json", json.dumps({"name": "bad", "role": "student"}), "lacks required fields"),
    ("bad.json", "{not json", "not valid JSON"),
    ("bad.json", "[1, 2, 3]", "JSON list, not a model card"),
    ("notes.json", json.dumps({"comment": "stray file"}), "lacks required fields"),
    ("bad.json", b"\xff\xfe\x00", "not valid JSON"),
])
def test_one_bad_card_breaks_only_itself(tmp_path, file, content, reason):
    reg = Registry(tmp_path)
    reg.register(make_model(0), make_card("good"))
    path = tmp_path / file
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    assert reg.names() == ["good"]
    reg.load("good")  # the other model is untouched
    (b,) = reg.broken()
    assert b.file == file and reason in b.reason
    with pytest.raises(ModelFileError, match=reason):
        reg.get(path.stem)
    with pytest.raises(registry_mod.DuplicateModelError):  # nor is the broken file silently replaced
        reg.register(make_model(1), make_card(path.stem))


@pytest.mark.parametrize("changes, reason", [
    ({"params": None}, "params must be a whole number"),
    ({"metrics": None}, "metrics must be an object"),
    ({"temperature": 0}, "temperature must be a number above 0"),
    ({"temperature": "1.2"}, "temperature must be a number above 0"),
    ({"temperature": float("nan")}, "temperature must be a number above 0"),
    ({"input_size": "48"}, "input_size must be a whole number of pixels"),
    ({"input_size": True}, "input_size must be a whole number of pixels"),
    ({"mean": [0.5]}, "mean must be three numbers"),
    ({"std": [0.2, 0.0, 0.2]}, "std must be three positive numbers"),
    ({"task_labels": ["benign", "malignant", "other"]}, "task_labels must be two different labels"),
    ({"groups": ["benign"]}, "groups must give one of benign, malignant for each of the 2 classes"),
    ({"role": "oracle"}, "role must be one of teacher, student"),
    ({"default": "yes"}, "default must be true or false"),
    ({"test_metrics": {"n": 5, "auc": 0.8, "roc": {"thresholds": [0.5], "tpr": [1]}}}, "test_metrics: roc must hold"),
    ({"test_metrics": {"auc": "0.9"}}, "test_metrics: auc must be a number or null"),
    ({"metrics": {"auc_ci": [0.8]}}, "metrics: auc_ci must be [low, high] or null"),
    ({"metrics": {"reliability": [1, 2]}}, "metrics: reliability must be a list of bins"),
    ({"metrics": {"reliability": [{"confidence": 0.6, "n": 3}]}}, "metrics: reliability must be a list of bins"),
    ({"test_metrics": {"ece_null": {"mean": 0.1}}}, "test_metrics: ece_null must hold numbers mean and p95"),
])
def test_a_card_field_of_the_wrong_kind_is_refused_with_its_reason(tmp_path, changes, reason):
    """Each of these, hand-edited into a card, once crashed a page that listed the model."""
    reg = Registry(tmp_path)
    reg.register(make_model(0), make_card("good"))
    card = json.loads((tmp_path / "good.json").read_text())
    (tmp_path / "odd.json").write_text(json.dumps(card | {"name": "odd"} | changes))
    assert reg.names() == ["good"]
    (b,) = reg.broken()
    assert b.file == "odd.json" and b.reason.startswith("odd.json: ") and reason in b.reason, b.reason


def test_every_shipped_card_passes_the_field_rules():
    cards, broken = Registry().scan()
    assert not broken and len(cards) >= 10


@pytest.mark.parametrize("weights", ["/tmp/outside/x.safetensors", "../../../../../../etc/passwd", "sub/x.safetensors",
                                     "..", ""])
def test_weights_outside_the_registry_folder_are_refused(tmp_path, weights):
    reg = Registry(tmp_path)
    reg.register(make_model(0), make_card("good"))
    card = json.loads((tmp_path / "good.json").read_text())
    (tmp_path / "evil.json").write_text(json.dumps(card | {"name": "evil", "weights": weights}))
    assert reg.names() == ["good"]
    with pytest.raises(ModelFileError, match="inside the registry folder"):
        reg.load("evil")


def test_unknown_name_lists_registered_models(tmp_path):
    reg = Registry(tmp_path)
    reg.register(make_model(0), make_card("alpha"))
    reg.register(make_model(1), make_card("beta", role="teacher"))
    with pytest.raises(UnknownModelError) as ei:
        reg.load("gamma")
    msg = str(ei.value)
    assert "gamma" in msg and "alpha" in msg and "beta" in msg
    assert isinstance(ei.value, KeyError)
    assert not msg.startswith("'")  # readable, not KeyError's quoted repr
    assert Registry(tmp_path / "empty").names() == []


def test_duplicate_registration_is_refused(tmp_path):
    reg = Registry(tmp_path)
    first = reg.register(make_model(0), make_card("dup"))
    with pytest.raises(DuplicateModelError, match="dup"):
        reg.register(make_model(1), make_card("dup"))
    assert reg.get("dup").sha256 == first.sha256  # the first entry is untouched
    second = reg.register(make_model(1), make_card("dup"), overwrite=True)
    assert second.sha256 != first.sha256
    reg.load("dup")


def test_two_cards_with_the_same_name_field(tmp_path):
    reg = Registry(tmp_path)
    reg.register(make_model(), make_card("twin"))
    shutil.copy(tmp_path / "twin.json", tmp_path / "other-file.json")
    assert reg.names() == ["twin"]  # the copy is unusable, the original keeps working
    (b,) = reg.broken()
    assert b.file == "other-file.json" and "'twin'" in b.reason and "NAME.json" in b.reason
    reg.load("twin")


def test_invalid_names_and_roles(tmp_path):
    reg = Registry(tmp_path)
    for bad in ("../escape", "", ".hidden", "a b"):
        with pytest.raises(registry_mod.RegistryError):
            reg.register(make_model(), make_card(bad))
    with pytest.raises(registry_mod.RegistryError, match="role"):
        reg.register(make_model(), make_card("r", role="oracle"))
    assert not any(tmp_path.iterdir())  # nothing written for a refused entry


def test_set_default_leaves_one_default_per_role(tmp_path):
    reg = Registry(tmp_path)
    for i, name in enumerate(("s1", "s2", "s3")):
        reg.register(make_model(i), make_card(name, default=True))
    reg.register(make_model(5), make_card("t1", role="teacher", default=True))
    reg.register(make_model(6), make_card("t2", role="teacher"))
    for name in ("s2", "s1", "s3", "s3"):
        reg.set_default(name)
        students = [c.name for c in reg.cards() if c.role == "student" and c.default]
        assert students == [name]
        assert reg.default("student").name == name
        assert [c.name for c in reg.cards() if c.role == "teacher" and c.default] == ["t1"]
    reg.set_default("t2")
    assert [c.name for c in reg.cards() if c.role == "teacher" and c.default] == ["t2"]
    assert [c.name for c in reg.cards() if c.role == "student" and c.default] == ["s3"]
    # weights are untouched by card updates
    reg.load("s1")
    reg.load("t1")
    # teachers are listed first
    assert [c.role for c in reg.cards()] == ["teacher", "teacher", "student", "student", "student"]


def test_float16_registration_halves_the_file(tmp_path):
    reg = Registry(tmp_path)
    model = make_model()
    c32 = reg.register(model, make_card("m32"))
    c16 = reg.register(model, make_card("m16"), dtype="float16")
    assert c16.dtype == "float16" and c32.dtype == "float32"
    assert 0.45 < c16.file_bytes / c32.file_bytes < 0.55, (c16.file_bytes, c32.file_bytes)
    loaded, card = reg.load("m16")
    assert card.dtype == "float16"
    assert all(v.dtype != torch.float16 for v in loaded.state_dict().values())
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref, out = model(x), loaded(x)
    assert not torch.equal(ref, out)  # it really was rounded
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    with pytest.raises(registry_mod.RegistryError, match="dtype"):
        reg.register(model, make_card("m8"), dtype="int8")


def test_failed_weights_write_leaves_nothing(tmp_path, monkeypatch):
    reg = Registry(tmp_path)
    reg.register(make_model(), make_card("keep"))
    before = files(tmp_path)

    def broken_save(state, filename, metadata=None):
        Path(filename).write_bytes(b"partial weights")  # half-written, then the disk fails
        raise OSError("disk full")

    monkeypatch.setattr(registry_mod, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        reg.register(make_model(1), make_card("crash"))
    assert files(tmp_path) == before
    assert reg.names() == ["keep"]
    monkeypatch.undo()
    reg.register(make_model(1), make_card("crash"))
    reg.load("crash")


def test_failed_card_write_leaves_no_card_and_no_temp_files(tmp_path, monkeypatch):
    reg = Registry(tmp_path)
    reg.register(make_model(), make_card("keep"))
    good_card = (tmp_path / "keep.json").read_text()
    real_write_text = Path.write_text

    def broken_write_text(self, data, *a, **kw):
        if self.suffix == ".tmp" and ".json." in self.name:
            real_write_text(self, data[: len(data) // 2], *a, **kw)
            raise OSError("disk full")
        return real_write_text(self, data, *a, **kw)

    monkeypatch.setattr(Path, "write_text", broken_write_text)
    with pytest.raises(OSError, match="disk full"):
        reg.register(make_model(1), make_card("crash"))
    # a failed update of an existing card keeps the old card whole
    with pytest.raises(OSError, match="disk full"):
        reg.update("keep", temperature=2.0)
    monkeypatch.undo()
    names = files(tmp_path)
    assert "crash.json" not in names
    assert "crash.safetensors" not in names  # no orphan weights either
    assert "keep.safetensors" in names
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")], names
    assert reg.names() == ["keep"]
    assert (tmp_path / "keep.json").read_text() == good_card
    # the name is still free: registering again works
    reg.register(make_model(1), make_card("crash"))
    assert reg.load("crash")[1].name == "crash"


def test_recovery_removes_what_a_killed_registration_left(tmp_path):
    """SIGKILL between the weights and the card leaves weights without a card; mid-write, a temp file. The next
    registration (or job start) removes both, and nothing it did not write."""
    import torch
    from safetensors.torch import save_file

    reg = Registry(tmp_path)
    model = make_model()
    reg.register(model, make_card("kept"))
    reg.register(model, make_card("orphan"))
    (tmp_path / "orphan.json").unlink()  # as if killed before the card was written
    (tmp_path / ".orphan.safetensors.x1y2.tmp").write_bytes(b"half a file")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "users-own.safetensors"))  # not ours: no name metadata
    assert sorted(reg.recover()) == [".orphan.safetensors.x1y2.tmp", "orphan.safetensors"]
    assert files(tmp_path) == {"kept.json", "kept.safetensors", "users-own.safetensors"}
    assert reg.names() == ["kept"]
    reg.register(model, make_card("orphan"))  # the name is free again
    assert reg.recover() == []
