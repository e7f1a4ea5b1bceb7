"""Reliability suite: a hostile-file corpus through the CLI and the pages, a corrupted registry through the CLI and
every page, and a training job killed at each stage. What a hostile user tries, end to end."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import lesion

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _bomb_png(side: int = 60_000) -> bytes:
    """A PNG whose header claims side x side pixels: refused before any pixel is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def _exif_rotated() -> bytes:
    img = lesion(7, True, 64).resize((64, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(img, "JPEG", exif=exif)


def _animated_gif() -> bytes:
    frames = [lesion(s, True, 48).convert("P") for s in (1, 2)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:])


def corpus() -> dict[str, tuple[bytes, bool]]:
    """file name -> (bytes, whether a prediction is expected); every other file gets one plain error."""
    good = lesion(11, True, 64)
    wide = Image.new("RGB", (20000, 8), (180, 120, 100))
    sixteen = Image.fromarray(np.asarray(good.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    return {
        "zero.jpg": (b"", False),
        "text.png": (b"this is a note, not a photo\n" * 4, False),
        "truncated.jpg": (_save(good, "JPEG")[:400], False),
        "bomb.png": (_bomb_png(), False),
        "page.jpg": (b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", False),
        "animated-gif.png": (_animated_gif(), False),  # a GIF under an image name
        "one-pixel.png": (_save(Image.new("RGB", (1, 1), (120, 80, 60)), "PNG"), False),  # "too small"
        "strip.png": (_save(wide, "PNG"), True),
        "rgba.png": (_save(good.convert("RGBA"), "PNG"), True),
        "palette.png": (_save(good.convert("P"), "PNG"), True),
        "cmyk.jpg": (_save(good.convert("CMYK"), "JPEG"), True),
        "sixteen-bit.png": (_save(sixteen, "PNG"), True),
        "rotated.jpg": (_exif_rotated(), True),
        "scan.tiff": (_save(good, "TIFF"), True),
    }


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    for name, (data, _) in corpus().items():
        (d / name).write_bytes(data)
    return d


@pytest.fixture
def env(tmp_path, tiny_registry, tiny_data, monkeypatch) -> Path:
    weights = tmp_path / "weights"
    shutil.copytree(tiny_registry, weights)
    monkeypatch.setenv("SKINAPP_WEIGHTS", str(weights))
    monkeypatch.setenv("SKINAPP_DATA_ROOTS", str(tiny_data.parent))
    monkeypatch.setenv("SKINAPP_JOBS", str(tmp_path / "jobs"))
    return weights


# ---------------------------------------------------------------- hostile files

def test_hostile_files_through_the_cli(tiny_registry, corpus_dir, capsys):
    from skinapp.cli import main

    files = sorted(corpus_dir.iterdir())
    code = main(["--weights", str(tiny_registry), "predict", "--model", "tiny-student", "--json",
                 *map(str, files)])
    out, err = capsys.readouterr()
    rows = {Path(r["image"]).name: r for r in json.loads(out)}
    assert code == 2 and set(rows) == {f.name for f in files}  # one row per file; exit 2 as some failed
    for name, (_, predicted) in corpus().items():
        r = rows[name]
        if predicted:
            assert abs(sum(r["probabilities"].values()) - 1) < 1e-5 and "error" not in r, name
        else:
            assert name in r["error"] and "Traceback" not in r["error"], name
    assert "Traceback" not in err and len([ln for ln in err.splitlines() if ln.startswith("skinapp: error:")]) == 7


def test_hostile_files_through_diagnose_and_compare(env):
    at = AppTest.from_file(APP, default_timeout=120).run()
    items = [(name, data, "application/octet-stream") for name, (data, _) in corpus().items()]
    at.file_uploader(key="dx_files").set_value(items).run()
    assert not at.exception, [e.value for e in at.exception]
    refused = {name for name, (_, ok) in corpus().items() if not ok}
    errors = [e.value for e in at.error]
    assert len(errors) == len(refused) and all(any(n in e for e in errors) for n in refused)
    assert not any("could not be analysed" in e for e in errors)  # each refusal says why, in plain words
    assert len([m for m in at.markdown if m.value.startswith("####")]) == len(corpus()) - len(refused)
    table = at.dataframe[0].value
    assert list(table["file"]) == list(corpus())
    for name in ("bomb.png", "strip.png", "page.jpg"):
        cmp = AppTest.from_string("from skinapp.ui import compare\ncompare.render()\n", default_timeout=120).run()
        data, ok = corpus()[name]
        cmp.file_uploader(key="cmp_file").set_value((name, data, "image/png")).run()
        assert not cmp.exception, name
        assert bool(cmp.error) != ok, name


# ---------------------------------------------------------------- a corrupted registry

def corrupt(weights: Path) -> list[str]:
    """Eight kinds of damage beside the good models; returns the file names that must be listed as broken."""
    (weights / "malformed.json").write_text("{ not json")
    (weights / "a-list.json").write_text("[1, 2, 3]")
    (weights / "notes.json").write_text(json.dumps({"note": "remember to retrain"}))
    card = json.loads((weights / "tiny-nokd.json").read_text())
    (weights / "copy-of-nokd.json").write_text(json.dumps(card))  # a duplicate name, saved under another file
    for name, w in (("outside", "/etc/passwd"), ("upward", "../../../../etc/passwd")):
        (weights / f"{name}.json").write_text(json.dumps(card | {"name": name, "weights": w}))
    missing = {k: v for k, v in card.items() if k not in ("arch", "label_names")}
    (weights / "no-arch.json").write_text(json.dumps(missing | {"name": "no-arch"}))
    shutil.copy(weights / "tiny-nokd.safetensors", weights / "tampered.safetensors")
    with open(weights / "tampered.safetensors", "r+b") as f:
        f.seek(-16, 2)
        f.write(b"\xff" * 16)
    (weights / "tampered.json").write_text(json.dumps(card | {"name": "tampered", "weights": "tampered.safetensors",
                                                              "default": False}))
    return ["a-list.json", "copy-of-nokd.json", "malformed.json", "no-arch.json", "notes.json", "outside.json",
            "upward.json"]


def test_a_corrupted_registry_breaks_only_its_bad_entries(env, tiny_data, capsys):
    from skinapp.cli import main

    broken = corrupt(env)
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    names = {m["name"] for m in listed["models"]} if isinstance(listed, dict) else {m["name"] for m in listed}
    assert {"tiny-teacher", "tiny-student", "tiny-nokd"} <= names
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert all(b in text for b in broken)
    img = sorted((tiny_data / "melanoma").glob("*.jpg"))[0]
    assert main(["predict", str(img)]) == 0  # the default student still answers
    assert main(["predict", "--model", "tampered", str(img)]) == 2
    assert "altered or replaced" in capsys.readouterr().err
    for page in ("diagnose", "compare", "models", "train"):
        at = AppTest.from_string(f"from skinapp.ui import {page}\n{page}.render()\n", default_timeout=120).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        notes = " ".join(w.value for w in at.warning)
        if page in ("diagnose", "models"):
            assert all(b in notes for b in broken), page


# ---------------------------------------------------------------- a job killed at each stage

def _events(progress: Path) -> list[str]:
    if not progress.exists():
        return []
    return [json.loads(line)["event"] for line in progress.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("stage", ["decoding", "teacher cache", "training"])
def test_a_job_killed_at_any_stage_leaves_the_registry_whole(stage, env, tiny_data, tmp_path):
    """SIGKILL, no chance to clean up: the registry must still list exactly its models, and the next job start
    removes anything half-written."""
    from skinapp import jobs
    from skinapp.registry import Registry

    before = sorted(p.name for p in env.iterdir())
    args = {"data": str(tiny_data), "name": f"killed-{stage.split()[0]}", "arch": "dsnet", "epochs": 50,
            "image_size": 48, "batch_size": 8, "teacher": "tiny-teacher", "threads": 1, "pretrained": "none",
            "teacher_views": 8}
    state = jobs.start_job(args, weights_dir=str(env))
    progress = jobs.jobs_dir() / state.id / "progress.jsonl"
    wanted = {"decoding": None, "teacher cache": "cache", "training": "step"}[stage]
    deadline = time.time() + 90
    while wanted is not None and wanted not in _events(progress) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(state.spec["pid"], signal.SIGKILL)
    deadline = time.time() + 10
    while jobs.job_state(jobs.jobs_dir() / state.id).status == "running" and time.time() < deadline:
        time.sleep(0.1)
    assert jobs.job_state(jobs.jobs_dir() / state.id).status == "failed"
    Registry(env).recover()
    assert sorted(p.name for p in env.iterdir()) == before
    assert args["name"] not in Registry(env).names()
