"""The float16 copy: half the bytes, same predictions within rounding, the change measured and recorded."""
from __future__ import annotations

import shutil

import pytest
import torch

from skinapp.cli import main
from skinapp.compress import compress_model
from skinapp.inference import Predictor
from skinapp.registry import Registry


@pytest.fixture()
def reg(tmp_path, tiny_registry):
    shutil.copytree(tiny_registry, tmp_path / "w")
    return Registry(tmp_path / "w")


def test_compress_halves_the_file_and_measures_the_change(reg, tiny_data):
    card = compress_model(reg, "tiny-student", "tiny-student-fp16", str(tiny_data))
    src = reg.get("tiny-student")
    assert card.dtype == "float16" and not card.default
    assert card.teacher == src.teacher and card.temperature == src.temperature
    c = card.metrics["compression"]
    assert c["source"] == "tiny-student" and c["source_bytes"] == src.file_bytes
    assert c["bytes"] == card.file_bytes < 0.6 * src.file_bytes
    assert set(c["change"]) >= {"auc", "accuracy"}
    assert abs(c["change"]["auc"]) < 0.05
    assert card.metrics["n"] == src.data["n_val"]
    a, b = Predictor(*reg.load("tiny-student")), Predictor(*reg.load("tiny-student-fp16"))
    x = torch.rand(4, 3, card.input_size, card.input_size)
    assert torch.allclose(a.logits(x), b.logits(x), atol=5e-2)
    assert next(b.model.parameters()).dtype == torch.float32  # computed in float32 on the CPU


def test_compress_cli_and_duplicate_name(reg, tiny_data, capsys):
    args = ["--weights", str(reg.root), "compress", "--model", "tiny-student", "--name", "half", "--data",
            str(tiny_data)]
    assert main(args) == 0
    assert "registered half" in capsys.readouterr().out
    assert main(args) == 2
    assert "already registered" in capsys.readouterr().err


def test_models_set_default(reg, capsys):
    assert main(["--weights", str(reg.root), "models", "--set-default", "tiny-nokd", "--json"]) == 0
    rows = {r["name"]: r["default"] for r in __import__("json").loads(capsys.readouterr().out)}
    assert rows["tiny-nokd"] and not rows["tiny-student"] and rows["tiny-teacher"]
    assert main(["--weights", str(reg.root), "models", "--set-default", "nope"]) == 2
    assert "registered models: tiny-teacher" in capsys.readouterr().err


def test_compress_refuses_its_sources_name_and_a_foreign_folder_and_leaves_the_registry_as_it_was(reg, tmp_path,
                                                                                                  tiny_data):
    """With --overwrite and the source's own name, the fp16 copy once replaced the source's fp32 weights; with a
    folder the model never saw, the copy's card carried that folder's numbers as its validation and test."""
    from conftest import make_dataset
    from skinapp.data import DatasetError
    from skinapp.registry import RegistryError

    files = {p.name: p.read_bytes() for p in reg.root.iterdir()}
    with pytest.raises(RegistryError, match="the copy needs a name of its own; 'tiny-student' is its source's"):
        compress_model(reg, "tiny-student", "tiny-student", str(tiny_data), overwrite=True)
    foreign = make_dataset(tmp_path / "foreign", per_class=6, layout="binary")
    with pytest.raises(DatasetError, match="not tiny-student's own data"):
        compress_model(reg, "tiny-student", "half", str(foreign))
    assert {p.name: p.read_bytes() for p in reg.root.iterdir()} == files
