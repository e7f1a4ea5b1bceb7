"""Knowledge distillation: the loss by hand, training end to end, progress, clean stops and torchrun (DDP)."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from skinapp.data import scan_dataset
from skinapp.distill import (DEFAULT_TEMPERATURE, TrainConfig, TrainingError, grouped_teacher_logits, kd_loss,
                             train)
from skinapp.inference import Predictor, evaluate_dataset
from skinapp.models import UnknownArchitectureError, count_params, create_model
from skinapp.registry import Registry, sha256_file
from conftest import roc_area

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
DIAGNOSES = ("basal_cell_carcinoma", "dermatofibroma", "melanoma", "nevus")
DX_GROUPS = ("malignant", "benign", "malignant", "benign")
TINY = dict(arch="dsnet", epochs=1, lr=1e-3, batch_size=8, image_size=48, threads=1, pretrained="none")


@pytest.fixture
def registry_copy(tiny_registry, tmp_path) -> Path:
    """A private copy of the shared registry, so new models never leak into other tests."""
    dst = tmp_path / "weights"
    shutil.copytree(tiny_registry, dst)
    return dst


def sub_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("SKINAPP_WEIGHTS", None)
    return env


def events(path: Path, skip=("cache",)) -> list[dict]:
    """Progress events; teacher-cache notices (before "start") are left out unless skip is empty."""
    ev = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in ev if e["event"] not in skip]


# ---------------------------------------------------------------- the loss


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_kd_loss_matches_a_hand_computed_value():
    s = [[1.0, 2.0], [0.5, 0.1]]
    t = [[2.0, 0.0], [1.0, 1.0]]
    y = [1, 0]
    T, alpha = 2.0, 0.3
    ce = sum(-math.log(_softmax(row)[lab]) for row, lab in zip(s, y)) / 2
    kl = 0.0
    for srow, trow in zip(s, t):
        ps = _softmax([v / T for v in srow])
        pt = _softmax([v / T for v in trow])
        kl += sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps))
    soft = T * T * kl / 2  # batchmean: summed over classes, averaged over the batch
    expected = alpha * ce + (1 - alpha) * soft
    # the same numbers written out: CE = (log(e+e^2) - 2 + log(e^0.5+e^0.1) - 0.5) / 2
    assert ce == pytest.approx((math.log(math.e + math.e ** 2) - 2 + math.log(math.exp(0.5) + math.exp(0.1)) - 0.5) / 2)
    got = kd_loss(torch.tensor(s), torch.tensor(y), torch.tensor(t), temperature=T, alpha=alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # CE = 0.41314, T^2 * KL = 0.52479 -> 0.3 * 0.41314 + 0.7 * 0.52479 = 0.49129
    assert ce == pytest.approx(0.41314, abs=1e-5) and soft == pytest.approx(0.52479, abs=1e-5)
    assert got.item() == pytest.approx(0.49129, abs=1e-5)


def test_kd_loss_limits():
    torch.manual_seed(0)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    y = torch.randint(0, 4, (6,))
    ce = F.cross_entropy(s, y)
    torch.testing.assert_close(kd_loss(s, y, t, temperature=3.0, alpha=1.0), ce)
    torch.testing.assert_close(kd_loss(s, y, None, temperature=3.0, alpha=0.2), ce)
    # alpha 0: only the soft term, which is zero when the student copies the teacher
    assert kd_loss(t.clone(), y, t, temperature=5.0, alpha=0.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(s, y, t, temperature=5.0, alpha=0.0).item() > 0


def test_kd_loss_gradient_skips_the_teacher():
    torch.manual_seed(1)
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1])
    kd_loss(s, y, t, temperature=4.0, alpha=0.5).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


# ---------------------------------------------------------------- training end to end


def test_trained_cards_describe_the_run(tiny_registry, tiny_data):
    reg = Registry(tiny_registry)
    assert {"tiny-teacher", "tiny-nokd", "tiny-student"} <= set(reg.names())
    teacher, student, nokd = reg.get("tiny-teacher"), reg.get("tiny-student"), reg.get("tiny-nokd")
    assert teacher.role == "teacher" and teacher.teacher is None and teacher.kd is None and teacher.default
    assert teacher.label_names == DIAGNOSES and teacher.groups == DX_GROUPS
    assert student.role == "student" and student.teacher == "tiny-teacher" and student.default
    assert student.kd == {"objectives": ["logit"], "temperature": DEFAULT_TEMPERATURE, "alpha": 0.5, "head": "diagnosis",
                          "teacher_views": 4}
    assert student.label_names == DIAGNOSES and student.groups == DX_GROUPS  # head "auto" follows the teacher
    assert nokd.teacher is None and nokd.kd is None and not nokd.default
    assert nokd.label_names == ("benign", "malignant") and nokd.groups == ("benign", "malignant")
    for card in (teacher, student, nokd):
        assert card.arch == "dsnet" and card.input_size == 48 and card.cam_layer == "block2,block3"
        assert card.task == "malignant" and card.task_labels == ("benign", "malignant")
        assert card.temperature > 0
        for k in ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "sens_at_spec80", "ece",
                  "ece_before", "ece_after", "best_epoch", "confusion_matrix", "roc"):
            assert k in card.metrics, (card.name, k)
        assert card.metrics["auc"] == pytest.approx(roc_area(card.metrics), abs=1e-4)
        assert card.metrics["ece_after"] == card.metrics["ece"]
        assert card.split_seed == 0
        d = card.data
        assert d["n_train"] + d["n_val"] + d["n_test"] == 32 and d["n_val"] > 0 and d["n_test"] > 0
        t = card.test_metrics  # the locked test split is reported, with intervals, and calibrated out of sample
        assert t["n"] == d["n_test"] and t["auc_ci"][0] <= t["auc"] <= t["auc_ci"][1] and "ece_before" in t
        assert set(d["digests"]) == {"train", "val", "test"} and d["digests"]["val"] == d["split_digest"]
        assert d["counts"] == {dx: 8 for dx in DIAGNOSES}
        assert d["class_counts"] == {"benign": 16, "malignant": 16}
        assert d["skipped"] == 0 and d["root"] == str(tiny_data) and len(d["split_digest"]) == 40
        weights = tiny_registry / card.weights
        assert card.sha256 == sha256_file(weights) and card.file_bytes == weights.stat().st_size
        model, _ = reg.load(card.name)
        assert card.params == count_params(model) and card.mflops > 0
        hist = card.train["history"]
        assert [h["epoch"] for h in hist] == [1, 2]
        assert all({"val_auc", "val_accuracy", "train_loss"} <= set(h) for h in hist)
        assert card.train["world_size"] == 1 and card.train["epochs"] == 2 and card.train["train_time_s"] >= 0
    # the split is shared, so teacher and students were validated on the very same images
    assert teacher.data["split_digest"] == student.data["split_digest"] == nokd.data["split_digest"]
    assert teacher.data["digests"] == student.data["digests"] == nokd.data["digests"]


def test_progress_log_events(tiny_data, tmp_path):
    progress = tmp_path / "run.jsonl"
    reg = Registry(tmp_path / "w")
    card = train(TrainConfig(data=str(tiny_data), name="p1", progress=str(progress), **TINY | {"epochs": 2}), reg)
    assert card is not None and reg.names() == ["p1"]
    ev = events(progress)
    kinds = [e["event"] for e in ev]
    prep = [e for e in ev[:kinds.index("start")] if e["event"] == "prepare"]
    assert kinds.index("start") == len(prep) and kinds[-1] == "done"  # preparation, then training
    assert prep[-1]["stage"] == "decoding the photos" and prep[-1]["done"] == prep[-1]["total"] == 32
    assert kinds.count("epoch") == 2 and "step" in kinds and "error" not in kinds
    start = ev[len(prep)]
    assert start["n_train"] + start["n_val"] + start["n_test"] == 32 and start["epochs"] == 2 and start["world_size"] == 1
    steps = [e for e in ev if e["event"] == "step"]
    assert all("eta_s" in e and e["eta_s"] >= 0 and 0 < e["fraction"] <= 1 for e in steps)
    assert steps[-1]["fraction"] == 1.0 and steps[-1]["eta_s"] == 0
    fractions = [e["fraction"] for e in steps]
    assert fractions == sorted(fractions)
    epochs = [e for e in ev if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and all("eta_s" in e and "val_auc" in e for e in epochs)
    assert epochs[-1]["eta_s"] == 0
    assert ev[-1]["name"] == "p1" and ev[-1]["temperature"] == card.temperature
    assert all(isinstance(e["time"], float) for e in ev)


def test_stop_file_stops_without_registering(registry_copy, tiny_data, tmp_path, monkeypatch):
    from skinapp.distill.progress import ProgressLog

    stop = tmp_path / "STOP"
    real_emit = ProgressLog.emit

    def emit(self, event, **fields):  # the stop file appears as training starts
        real_emit(self, event, **fields)
        if event == "start":
            stop.write_text("")

    monkeypatch.setattr(ProgressLog, "emit", emit)
    progress = tmp_path / "run.jsonl"
    before = sorted(p.name for p in registry_copy.iterdir())
    reg = Registry(registry_copy)
    card = train(TrainConfig(data=str(tiny_data), name="stopped-student", teacher="tiny-teacher",
                             progress=str(progress), stop_file=str(stop), **TINY | {"epochs": 3}), reg)
    assert card is None
    assert sorted(p.name for p in registry_copy.iterdir()) == before
    kinds = [e["event"] for e in events(progress) if e["event"] != "prepare"]
    assert kinds[0] == "start" and kinds[-1] == "stopped"
    assert "done" not in kinds and "epoch" not in kinds
    assert "stopped-student" not in reg.names()


def test_sigterm_stops_cleanly_and_registers_nothing(registry_copy, tiny_data, tmp_path):
    progress = tmp_path / "run.jsonl"
    before = sorted(p.name for p in registry_copy.iterdir())
    cmd = [PY, "-m", "skinapp", "--weights", str(registry_copy), "distill", "--data", str(tiny_data),
           "--name", "sig-student", "--arch", "dsnet", "--teacher", "tiny-teacher", "--epochs", "400", "--batch-size", "8",
           "--image-size", "48", "--threads", "1", "--pretrained", "none", "--progress", str(progress)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=sub_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if progress.exists() and any(e["event"] == "step" for e in events(progress)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before SIGTERM could be sent: " + proc.stderr.read()
        assert progress.exists(), "no progress before the deadline"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, (proc.returncode, err)
    assert "Traceback" not in err and "stopped on request" in err
    kinds = [e["event"] for e in events(progress)]
    assert kinds[-1] == "stopped" and "done" not in kinds
    assert sorted(p.name for p in registry_copy.iterdir()) == before


@pytest.mark.parametrize("bad, match", [
    ({"alpha": 2.0}, "alpha"),
    ({"alpha": -0.1}, "alpha"),
    ({"epochs": 0}, "epochs"),
    ({"temperature": 0.0}, "temperature"),
    ({"lr": 0.0}, "learning rate"),
    ({"batch_size": 1}, "batch size"),
    ({"image_size": 16}, "image size"),
    ({"val_frac": 1.0}, "validation fraction"),
    ({"role": "oracle"}, "role"),
    ({"head": "multilabel"}, "head"),
    ({"augment": "extreme"}, "augment"),
    ({"mixup": -1.0}, "mixup"),
    ({"mixup": 0.4, "teacher": "t", "teacher_views": 4}, "teacher views to 0"),
    ({"device": "tpu"}, "device"),
])
def test_bad_configs_raise_training_error(tiny_data, tmp_path, bad, match):
    cfg = TrainConfig(data=str(tiny_data), name="bad", weights_dir=str(tmp_path / "w"), **TINY | bad)
    with pytest.raises(TrainingError, match=match):
        train(cfg)
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_unknown_arch_and_existing_name(tiny_registry, tiny_data):
    with pytest.raises(UnknownArchitectureError):
        TrainConfig(data=str(tiny_data), name="x", arch="vgg_tiny").validate()
    with pytest.raises(TrainingError, match="already exists"):
        train(TrainConfig(data=str(tiny_data), name="tiny-student", **TINY), Registry(tiny_registry))


def test_a_name_held_by_a_broken_card_is_refused_before_training(registry_copy, tiny_data):
    """Registering over an unusable card file is refused; the run once found out only after every epoch."""
    (registry_copy / "held.json").write_text("{not json")
    with pytest.raises(TrainingError, match="taken by the card file held.json, which cannot be used .*not valid JSON"):
        train(TrainConfig(data=str(tiny_data), name="held", **TINY), Registry(registry_copy))


def test_teacher_with_a_mismatched_head(registry_copy, tiny_data):
    reg = Registry(registry_copy)
    before = sorted(p.name for p in registry_copy.iterdir())
    # a binary model as teacher for a per-diagnosis student
    with pytest.raises(TrainingError, match="tiny-nokd"):
        train(TrainConfig(data=str(tiny_data), name="m2", teacher="tiny-nokd", head="diagnosis", **TINY), reg)
    assert sorted(p.name for p in registry_copy.iterdir()) == before


def test_kd_student_with_a_timm_teacher_input_size(registry_copy, tiny_data, tmp_path):
    """A teacher at another input size than the student: both see the same augmented batch at their own size."""
    reg = Registry(registry_copy)
    teacher = train(TrainConfig(data=str(tiny_data), name="mnv3-teacher", role="teacher", head="diagnosis",
                                **TINY | {"image_size": 64, "arch": "mobilenetv3_small_100"}), reg)
    assert teacher.input_size == 64 and teacher.cam_layer == "blocks.1"
    # teacher logits precomputed on cached views (the default) and computed online on every batch
    for name, views in (("s-cached", 2), ("s-online", 0)):
        progress = tmp_path / f"{name}.jsonl"
        student = train(TrainConfig(data=str(tiny_data), name=name, teacher="mnv3-teacher", teacher_views=views,
                                    progress=str(progress), **TINY), reg)
        assert student.teacher == "mnv3-teacher" and student.input_size == 48
        assert student.label_names == DIAGNOSES and student.train["teacher_views"] == views
        assert ("cache" in [e["event"] for e in events(progress, skip=())]) == (views > 0)
        # the card's validation metrics are what `evaluate --split val` recomputes from the files, even though
        # training decoded the images at the teacher's larger size
        again = evaluate_dataset(Predictor(*reg.load(name)), scan_dataset(tiny_data), split="val")
        assert again["n"] == student.data["n_val"]
        assert again["auc"] == pytest.approx(student.metrics["auc"], abs=1e-6)
        assert again["confusion_matrix"] == student.metrics["confusion_matrix"]


def test_torchrun_two_processes(registry_copy, tiny_data, tmp_path):
    before = set(Registry(registry_copy).names())
    progress = tmp_path / "ddp.jsonl"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "skinapp", "--weights", str(registry_copy),
           "distill", "--data", str(tiny_data), "--name", "ddp-student", "--arch", "dsnet", "--teacher", "tiny-teacher", "--epochs", "1",
           "--batch-size", "8", "--image-size", "48", "--threads", "1", "--pretrained", "none",
           "--progress", str(progress)]
    r = subprocess.run(cmd, cwd=ROOT, env=sub_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    after = set(Registry(registry_copy).names())
    assert after - before == {"ddp-student"} and before <= after
    card = Registry(registry_copy).get("ddp-student")
    assert card.train["world_size"] == 2
    assert card.teacher == "tiny-teacher"
    assert not [p for p in registry_copy.iterdir() if p.name.startswith(".")]
    ev = events(progress)
    # only rank 0 writes progress: one start, one done
    assert [e["event"] for e in ev].count("start") == 1 and ev[-1]["event"] == "done"
    assert next(e for e in ev if e["event"] == "start")["world_size"] == 2
    Registry(registry_copy).load("ddp-student")


def test_grouped_teacher_logits_match_grouped_probabilities():
    t = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, -3.0, 1.0]])
    positive = [0, 2]
    for temp in (1.0, 4.0):
        g = grouped_teacher_logits(t, positive, temp)
        p = torch.softmax(t / temp, dim=1)[:, positive].sum(1)
        assert torch.allclose(torch.softmax(g / temp, dim=1)[:, 1], p, atol=1e-6)


def test_binary_student_distils_from_a_diagnosis_teacher(registry_copy, tiny_data):
    """Binary KD from the 4-diagnosis teacher: its grouped probabilities are the student's soft targets."""
    reg = Registry(registry_copy)
    card = train(TrainConfig(data=str(tiny_data), name="bin-kd", teacher="tiny-teacher", head="binary",
                             **TINY), reg)
    assert card.label_names == ("benign", "malignant") and card.teacher == "tiny-teacher"
    assert card.kd["head"] == "binary"
    reg.load("bin-kd")


def test_cuda_asked_for_without_a_gpu_is_a_clear_error(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = TrainConfig(data=str(tiny_data), name="gpu", device="cuda", weights_dir=str(tmp_path / "w"), **TINY)
    with pytest.raises(TrainingError, match="no CUDA GPU"):
        train(cfg)
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_fused_teacher_trains_every_member_and_registers(tiny_data, tmp_path):
    reg = Registry(tmp_path / "w")
    card = train(TrainConfig(data=str(tiny_data), name="fused", arch="fused_lite012", role="teacher",
                             head="diagnosis", epochs=1, batch_size=8, image_size=32, threads=2,
                             pretrained="none"), reg)
    model, loaded = reg.load("fused")
    assert loaded.arch == "fused_lite012" and loaded.cam_layer.count(",") == 2
    assert set(model.members) == {"lite0", "lite1", "lite2"} and loaded.label_names == tuple(sorted(DIAGNOSES))
    # each member was trained on its own loss: none of them is still at its initial weights
    fresh = create_model("fused_lite012", len(DIAGNOSES), "none")
    for key in model.members:
        assert not torch.equal(model.members[key].classifier.weight, fresh.members[key].classifier.weight)
    assert card.metrics["auc"] == pytest.approx(roc_area(card.metrics), abs=1e-4)


def test_mixup_with_an_online_teacher(registry_copy, tiny_data, tmp_path):
    """Mixup needs the teacher on the mixed pixels, so it runs with no cached views; it must still learn."""
    reg = Registry(registry_copy)
    card = train(TrainConfig(data=str(tiny_data), name="mixed", teacher="tiny-teacher", teacher_views=0,
                             mixup=0.4, **TINY | {"epochs": 3}), reg)
    assert card.train["mixup"] == 0.4 and card.train["teacher_views"] == 0
    assert card.metrics["auc"] > 0.5


def test_the_frozen_teacher_runs_folded_and_gives_the_registered_models_logits(tiny_registry, tiny_data):
    from skinapp.distill import resolve_heads, teacher_logits

    reg = Registry(tiny_registry)
    cfg = TrainConfig(data=str(tiny_data), name="x", teacher="tiny-teacher", **TINY)
    st = resolve_heads(cfg, scan_dataset(tiny_data, "malignant"), reg)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in st.teacher.modules())
    assert not any(p.requires_grad for p in st.teacher.parameters())
    registered, card = reg.load("tiny-teacher")
    x01 = torch.rand(3, 3, 64, 64)
    from skinapp.data import model_input
    with torch.no_grad():
        want = registered.eval()(model_input(x01, card.input_size, card.mean, card.std))
    assert torch.allclose(teacher_logits(st, x01), want, atol=1e-4)


def test_shipped_teacher_logits_skip_the_teacher_and_are_checked(registry_copy, tiny_data, tmp_path, monkeypatch):
    """Logits shipped beside the registry (no pixels) let a fresh cache regenerate the seeded views and skip the
    teacher's pass; logits that do not match what the teacher gives on those views are ignored."""
    from safetensors.torch import load_file, save_file

    from skinapp import distill

    reg = Registry(registry_copy)
    cfg = dict(data=str(tiny_data), teacher="tiny-teacher", teacher_views=2, overwrite=True, **TINY)
    monkeypatch.setenv("SKINAPP_CACHE", str(tmp_path / "cold"))
    first = train(TrainConfig(name="s-cold", **cfg), reg)
    (full,) = (tmp_path / "cold").glob("teacher-views-*.safetensors")
    (logits_only,) = (tmp_path / "cold").glob("teacher-logits-*.safetensors")
    want = load_file(str(full))
    assert torch.equal(load_file(str(logits_only))["logits"], want["logits"])
    shipped = registry_copy / distill.SHIPPED_LOGITS
    shipped.mkdir()
    calls = []
    real = distill.teacher.teacher_logits
    monkeypatch.setattr(distill.teacher, "teacher_logits", lambda st, x, folds=None: calls.append(len(x)) or real(st, x, folds))
    for tamper, teacher_images in ((0.0, 8), (1.0, None), ("garbage", None)):
        if tamper == "garbage":  # an unreadable file is ignored too
            (shipped / logits_only.name).write_bytes(b"not a safetensors file")
        else:
            save_file({"logits": want["logits"] + tamper}, str(shipped / logits_only.name))
        monkeypatch.setenv("SKINAPP_CACHE", str(tmp_path / f"fresh-{tamper}"))
        calls.clear()
        progress = tmp_path / f"p-{tamper}.jsonl"
        second = train(TrainConfig(name="s-shipped", progress=str(progress), **cfg), reg)
        got = load_file(str(next((tmp_path / f"fresh-{tamper}").glob("teacher-views-*.safetensors"))))
        assert torch.equal(got["views"], want["views"])  # the same seeded pixels
        assert torch.allclose(got["logits"], want["logits"], atol=1e-5)  # tampered ones were recomputed
        messages = [e.get("message", "") for e in events(progress, skip=()) if e["event"] == "cache"]
        if teacher_images:  # only the spot check ran the teacher
            assert sum(calls) == teacher_images and any("regenerated" in m for m in messages)
            assert second.metrics["auc"] == pytest.approx(first.metrics["auc"], abs=1e-6)
        else:
            assert sum(calls) >= want["logits"].shape[1] and not any("regenerated" in m for m in messages)


@pytest.mark.parametrize("field, value, needle", [
    ("epochs", 0, "epochs 0 must be a whole number between 1 and 1000"),
    ("lr", float("nan"), "learning rate nan must be a number"),
    ("temperature", 0.1, "temperature 0.1 must be a number between 0.5 and 100"),
    ("alpha", 1.5, "alpha 1.5 must be a number between 0 and 1"),
    ("batch_size", 1, "batch size 1"),
    ("threads", 0, "threads 0"),
    ("seed", -1, "seed -1"),
    ("val_frac", 0.0, "validation fraction 0.0"),
    ("image_size", 16, "image size 16"),
    ("augment", "heavy", "augment 'heavy' must be one of: none, standard, strong"),
    ("device", "tpu", "device 'tpu' must be one of"),
    ("folds", 1, "folds 1"),
    ("data", " ", "no dataset folder given"),
])
def test_config_refuses_each_value_out_of_its_bounds(field, value, needle):
    """The bounds live on the config's fields; the CLI and the Train page take theirs from the same place."""
    import re

    TrainConfig(data="d", name="n").validate()  # the defaults themselves pass
    with pytest.raises(TrainingError, match=re.escape(needle)):
        TrainConfig(**{"data": "d", "name": "n"} | {field: value}).validate()


# ---------------------------------------------------------------- a teacher on someone else's folder

def _folder(root: Path, folders: dict[str, bool], n: int = 8) -> Path:
    from conftest import lesion

    seed = 500
    for name, malignant in folders.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            seed += 1
            lesion(seed, malignant).save(root / name / f"{name}_{i}.jpg")
    return root


def test_a_diagnosis_teacher_teaches_a_folder_with_fewer_diagnoses(registry_copy, tmp_path):
    data = _folder(tmp_path / "three", {"melanoma": True, "nevus": False, "dermatofibroma": False})
    reg = Registry(registry_copy)
    card = train(TrainConfig(data=str(data), name="three-dx", teacher="tiny-teacher", **TINY), reg)
    assert card.label_names == ("dermatofibroma", "melanoma", "nevus") and card.kd["head"] == "diagnosis"
    # its soft targets are the teacher's outputs for those three, in the folder's order
    from skinapp.distill.teacher import plan_heads

    plan = plan_heads("auto", "malignant", scan_dataset(data), reg.get("tiny-teacher"))
    assert [DIAGNOSES[i] for i in plan.teacher_columns] == ["dermatofibroma", "melanoma", "nevus"]


def test_a_diagnosis_teacher_teaches_a_benign_malignant_folder_through_its_groups(registry_copy, tmp_path):
    from conftest import make_dataset
    from skinapp.distill.teacher import plan_heads

    data = make_dataset(tmp_path / "two", per_class=8, layout="binary")
    reg = Registry(registry_copy)
    plan = plan_heads("auto", "malignant", scan_dataset(data), reg.get("tiny-teacher"))
    assert plan.head == "binary" and [DX_GROUPS[i] for i in plan.teacher_positive] == ["malignant", "malignant"]
    card = train(TrainConfig(data=str(data), name="two-folders", teacher="tiny-teacher", **TINY), reg)
    assert card.label_names == ("benign", "malignant") and card.kd["head"] == "binary"


def test_a_folder_with_a_diagnosis_the_teacher_lacks_is_refused_before_any_decoding(registry_copy, tmp_path,
                                                                                     monkeypatch):
    from skinapp.distill import run

    data = _folder(tmp_path / "new", {"melanoma": True, "vascular_lesion": False}, n=3)
    monkeypatch.setattr(run, "decode_dataset", lambda *a: pytest.fail("decoded before refusing"))
    with pytest.raises(TrainingError, match="also has vascular_lesion, which it cannot teach: use the binary head"):
        train(TrainConfig(data=str(data), name="x", teacher="tiny-teacher", **TINY), Registry(registry_copy))
    # the binary head is the way out, as the message says
    monkeypatch.undo()
    card = train(TrainConfig(data=str(data), name="x", teacher="tiny-teacher", head="binary", **TINY),
                 Registry(registry_copy))
    assert card.label_names == ("benign", "malignant")


# ---------------------------------------------------------------- stops and names, at every stage

def test_a_bad_name_is_refused_before_any_data_is_read(registry_copy, tiny_data, monkeypatch):
    from skinapp.distill import run
    from skinapp.registry import RegistryError

    monkeypatch.setattr(run, "scan_dataset", lambda *a: pytest.fail("read the data before checking the name"))
    for bad in ("../evil", "", ".hidden", "a/b", "x" * 101):
        with pytest.raises(RegistryError, match="model name"):
            train(TrainConfig(data=str(tiny_data), name=bad, **TINY), Registry(registry_copy))


def test_a_stop_during_decoding_ends_the_run_before_training(registry_copy, tiny_data, tmp_path):
    stop, progress = tmp_path / "stop", tmp_path / "p.jsonl"
    stop.touch()  # already there: decoding checks it every 16 images
    card = train(TrainConfig(data=str(tiny_data), name="never", stop_file=str(stop), progress=str(progress),
                             **TINY), Registry(registry_copy))
    assert card is None and "never" not in Registry(registry_copy).names()
    assert [e["event"] for e in events(progress, skip=())] == ["stopped"]


def test_a_stop_during_the_teachers_pass_ends_the_run_within_one_chunk(registry_copy, tiny_data, tmp_path,
                                                                       monkeypatch):
    from skinapp.distill import teacher as teacher_mod

    stop, progress = tmp_path / "stop", tmp_path / "p.jsonl"
    calls = []
    real = teacher_mod.teacher_logits

    def slow_teacher(st, x, folds=None):  # the stop arrives while the cache's first chunk is computed
        calls.append(len(x))
        stop.touch()
        return real(st, x, folds)

    monkeypatch.setattr(teacher_mod, "teacher_logits", slow_teacher)
    monkeypatch.setenv("SKINAPP_CACHE", str(tmp_path / "cache"))
    card = train(TrainConfig(data=str(tiny_data), name="never", teacher="tiny-teacher", stop_file=str(stop),
                             progress=str(progress), **TINY), Registry(registry_copy))
    assert card is None and calls == [16]  # one chunk of the teacher's pass, then the stop was honoured
    kinds = [e["event"] for e in events(progress, skip=())]
    assert kinds[-1] == "stopped" and "step" not in kinds
    assert not list((tmp_path / "cache").glob("*.safetensors"))  # no half-built cache is saved


def test_a_student_smaller_than_its_teacher_trains_on_views_of_its_own_decode(registry_copy, tiny_data, tmp_path,
                                                                              monkeypatch):
    """Its views are cut from the photos decoded at its own size (as its validation photos are), with the
    teacher's crop, not resized down from the teacher's upsampled view; cached and live alike."""
    from skinapp.distill import cache, loop

    monkeypatch.setenv("SKINAPP_CACHE", str(tmp_path / "cache"))
    seen = []
    for module in (cache, loop):
        real = module.augment_pair

        def spy(big, small, big_size, small_size, gen, strength="standard", _real=real):
            seen.append((tuple(big.shape[-2:]), None if small is None else tuple(small.shape[-2:]), small_size))
            return _real(big, small, big_size, small_size, gen, strength)

        monkeypatch.setattr(module, "augment_pair", spy)
    reg = Registry(registry_copy)
    for views in (2, 0):  # the cache's pass, then the teacher live at every step
        seen.clear()
        card = train(TrainConfig(data=str(tiny_data), name=f"small-{views}", teacher="tiny-teacher",
                                 teacher_views=views, **TINY | {"image_size": 32}), reg)
        assert card.input_size == 32 and seen
        assert set(seen) == {((48, 48), (32, 32), 32)}, seen


@pytest.mark.parametrize("stage", ["after the last step", "while the test split is measured"])
def test_a_cancel_after_training_registers_nothing(stage, registry_copy, tiny_data, tmp_path, monkeypatch):
    """A QA probe cancelled a job after its last step and found its model registered ('done'), though the page
    had said the job would stop."""
    import skinapp.distill.finish as finish_mod
    import skinapp.distill.run as run_mod

    stop = tmp_path / "stop"
    module, name = (run_mod, "_epochs") if stage == "after the last step" else (finish_mod, "fit_and_report")
    real = getattr(module, name)

    def then_cancel(*args, **kwargs):  # the stage runs to its end, then the user presses Cancel
        out = real(*args, **kwargs)
        stop.write_text("")
        return out
    monkeypatch.setattr(module, name, then_cancel)
    progress = tmp_path / "run.jsonl"
    before = sorted(p.name for p in registry_copy.iterdir())
    card = train(TrainConfig(data=str(tiny_data), name="late-cancel", progress=str(progress), stop_file=str(stop),
                             **TINY), Registry(registry_copy))
    assert card is None and sorted(p.name for p in registry_copy.iterdir()) == before
    kinds = [e["event"] for e in events(progress)]
    assert kinds[-1] == "stopped" and "done" not in kinds and "epoch" in kinds


def test_a_split_with_nothing_to_train_on_is_refused():
    """20 photos with a 0.75 test fraction left no training photo, and the run registered an untrained model
    (train loss NaN, test AUC 0.22) instead of refusing."""
    from types import SimpleNamespace

    from skinapp.data import DatasetError
    from skinapp.protocol import check_parts

    ds = SimpleNamespace(root="/data/tiny")
    decoded = SimpleNamespace(targets=torch.tensor([0, 1, 0, 1, 0, 1, 0, 0]))
    parts = {"train": [], "val": [0, 1], "test": [2, 3, 4, 5, 6, 7]}
    split = SimpleNamespace(part=lambda name: parts[name])
    with pytest.raises(DatasetError, match=r"the train split \(0 images\) lacks both classes; add images or lower "
                                           r"the validation and test fractions"):
        check_parts(ds, decoded, split, need_test=True)
    parts["train"] = [6, 7]  # one class only
    with pytest.raises(DatasetError, match=r"the train split \(2 images\) lacks one class"):
        check_parts(ds, decoded, split, need_test=False)
    parts["train"] = [5, 6]
    check_parts(ds, decoded, split, need_test=True)  # both classes everywhere: no complaint


@pytest.mark.parametrize("how", ["a file where the folder should be", "a write that fails"])
def test_an_unwritable_cache_does_not_throw_the_teachers_pass_away(how, registry_copy, tiny_data, tmp_path,
                                                                   monkeypatch, caplog):
    """With SKINAPP_CACHE under a file, a job ran the teacher's whole pass, then failed on 'Not a directory'; a
    full disk fails in safetensors' own error, and must leave no half-written file behind."""
    import safetensors.torch
    from safetensors import SafetensorError

    if how == "a file where the folder should be":
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        monkeypatch.setenv("SKINAPP_CACHE", str(blocker / "cache"))
    else:
        monkeypatch.setenv("SKINAPP_CACHE", str(tmp_path / "cache"))

        def full_disk(tensors, filename, *a, **k):
            Path(filename).write_bytes(b"half")
            raise SafetensorError("No space left on device")
        monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    card = train(TrainConfig(data=str(tiny_data), name="no-cache", teacher="tiny-teacher", **TINY),
                 Registry(registry_copy))
    assert card is not None and card.name == "no-cache"
    assert any("could not keep the teacher cache" in r.getMessage() for r in caplog.records)
    if how == "a write that fails":
        assert not list((tmp_path / "cache").glob("*.tmp"))
