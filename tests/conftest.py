"""Shared fixtures: small generated lesion images and a tiny trained registry; never real patient data."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Teacher-logit caches of test runs go to a throwaway folder, never the project's runs/cache, removed at exit
# (each run left about 3.5 MB in /tmp before).
os.environ["SKINAPP_CACHE"] = tempfile.mkdtemp(prefix="skinapp-cache-")
atexit.register(shutil.rmtree, os.environ["SKINAPP_CACHE"], ignore_errors=True)
SHARED_ISIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic9"


def lesion(seed: int, malignant: bool, size: int = 48) -> Image.Image:
    """A skin-toned square with a blob: malignant ones are darker, larger and irregular, so a model can learn."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2 + rng.uniform(-3, 3, 2)
    ang = np.arctan2(yy - c[0], xx - c[1])
    wobble = 0.12 * np.sin(5 * ang + rng.uniform(0, 6)) if malignant else 0.02 * np.sin(2 * ang)
    r = size * ((0.3 if malignant else 0.18) + wobble + rng.uniform(-0.03, 0.03))
    inside = np.hypot(yy - c[0], xx - c[1]) < r
    img = np.empty((size, size, 3), np.float32)
    img[...] = (215, 172, 150) + rng.normal(0, 6, 3)
    img[inside] = (70, 40, 35) if malignant else (160, 110, 90)
    img += rng.normal(0, 10, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make_dataset(root: Path, per_class: int = 12, layout: str = "diagnosis", size: int = 48) -> Path:
    folders = ({"melanoma": True, "basal_cell_carcinoma": True, "nevus": False, "dermatofibroma": False}
               if layout == "diagnosis" else {"malignant": True, "benign": False})
    n = per_class if layout == "binary" else max(2, per_class // 2)
    seed = 0
    for folder, malignant in folders.items():
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            seed += 1
            lesion(seed, malignant, size).save(d / f"img_{i:03d}.jpg", quality=92)
    return root


def roc_area(metrics: dict) -> float:
    """The area under the ROC points a card stores (every distinct score, rounded to 6 decimals): its AUC."""
    import numpy as np

    roc = metrics["roc"]
    return float(np.trapezoid(roc["tpr"], roc["fpr"]))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and two OpenMP threads thrash on a busy 2-core machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "lesions", per_class=16)


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory, tiny_data) -> Path:
    """A registry with a small teacher (diagnosis head) and two dsnet students: KD and no-KD."""
    from skinapp.distill import TrainConfig, train
    from skinapp.registry import Registry

    root = tmp_path_factory.mktemp("weights")
    reg = Registry(root)
    common = dict(data=str(tiny_data), epochs=2, lr=1e-3, batch_size=8, image_size=48, threads=2, pretrained="none",
                  weights_dir=str(root))
    train(TrainConfig(name="tiny-teacher", arch="dsnet", role="teacher", head="diagnosis", default=True,
                      **common), reg)
    train(TrainConfig(name="tiny-student", arch="dsnet", teacher="tiny-teacher", default=True, **common), reg)
    train(TrainConfig(name="tiny-nokd", arch="dsnet", **common), reg)
    return root


def int8_weights(path) -> dict[str, dict[str, np.ndarray]]:
    """The int8 weights of a QDQ graph's convolutions, as "gemm" (run as a matrix product) or "depthwise"."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    dq = {n.output[0]: n.input[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    out: dict[str, dict[str, np.ndarray]] = {"gemm": {}, "depthwise": {}}
    for n in g.node:
        if n.op_type == "Conv" and n.input[1] in dq and inits[dq[n.input[1]]].dtype == np.int8:
            w = inits[dq[n.input[1]]]
            out["depthwise" if w.shape[1] == 1 and w.shape[0] > 1 else "gemm"][dq[n.input[1]]] = w
    return out


def assert_no_pair_saturates(path) -> None:
    """u8 x s8 pairs are added in 16 bits on CPUs without VNNI: with matrix-product weights in -64..64 no pair can
    saturate, so every CPU computes the card's numbers (an 8-bit weight reaches -128 or 127 in nearly every
    layer); depthwise kernels widen to 16 bits first and keep 8."""
    from skinapp.runtime import WEIGHT_RANGE

    weights = int8_weights(path)
    assert weights["gemm"] and 2 * 255 * max(-WEIGHT_RANGE[0], WEIGHT_RANGE[1]) <= 32767
    for name, w in weights["gemm"].items():
        assert WEIGHT_RANGE[0] <= w.min() and w.max() <= WEIGHT_RANGE[1], name
