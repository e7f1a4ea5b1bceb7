"""The models committed in weights/: they load strictly, their cards carry the protocol they were made under, and
the numbers in their cards are what `evaluate` measures on the shared ISIC data today (when that data is
present): validation for every card, and the locked test split, with its interval, for every card that has one."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from conftest import SHARED_ISIC, assert_no_pair_saturates, int8_weights, lesion
from skinapp.data import PROTOCOL, decode_dataset, scan_dataset
from skinapp.inference import Predictor, evaluate_dataset
from skinapp.registry import DEFAULT_WEIGHTS_DIR, Registry

REG = Registry(DEFAULT_WEIGHTS_DIR)


@functools.lru_cache(maxsize=None)
def _isic(task: str, size: int):
    """The shared folder scanned and decoded once per task and input size: the models share most sizes."""
    ds = scan_dataset(SHARED_ISIC, task)
    return ds, decode_dataset(ds, size)
CARDS = REG.cards()
pytestmark = pytest.mark.skipif(not CARDS, reason="no shipped models in weights/")


def test_defaults_and_size_budget():
    student, teacher = REG.default("student"), REG.default("teacher")
    assert student.teacher == teacher.name and student.params <= 300_000  # the product's bar for the default
    total = sum(p.stat().st_size for p in DEFAULT_WEIGHTS_DIR.rglob("*") if p.is_file())
    assert total < 60 * 2**20, f"weights/ holds {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("name", [c.name for c in CARDS])
def test_card_protocol_and_prediction(name):
    pred = Predictor(*REG.load(name))  # strict keys and sha256 are checked by load
    card = pred.card
    assert card.split_seed is not None and card.data["val_frac"] > 0 and len(card.data["split_digest"]) == 40
    assert card.temperature > 0 and card.metrics["auc"] > 0.75  # every shipped model is far above chance
    assert card.metrics["ece_null"]["mean"] > 0 and card.metrics["n"] == card.data["n_val"]
    if card.data.get("protocol") == PROTOCOL:  # made under the locked test split: it reports on it
        t = card.test_metrics
        assert t["n"] == card.data["n_test"] and t["auc_ci"][0] <= t["auc"] <= t["auc_ci"][1]
        assert t["auc_ci"][1] - t["auc_ci"][0] > 0.01  # an interval from a real resample, not a point
        assert set(card.data["digests"]) == {"train", "val", "test"}
    else:
        assert card.test_metrics == {}  # a model made before the test split never claims a test number
    if card.teacher:
        assert card.teacher in REG.names()
        teacher = REG.get(card.teacher)
        if card.test_metrics:  # a teacher that trained on the student's test images would leak their labels
            assert teacher.data.get("digests", {}).get("test") == card.data["digests"]["test"]
    p = pred.predict_image(lesion(3, True, size=200))
    assert math.isclose(sum(p.probabilities.values()), 1.0, rel_tol=1e-5) and 0.0 <= p.p_positive <= 1.0


@pytest.mark.skipif(not SHARED_ISIC.is_dir(), reason=f"shared ISIC data not present at {SHARED_ISIC}")
@pytest.mark.parametrize("name", [pytest.param(c.name, marks=[pytest.mark.heavy] if c.fusion else [])
                                  for c in CARDS])
def test_card_metrics_are_reproduced_by_evaluate(name):
    """A fused teacher (three networks x four flips) takes about 3 min a split on 2 cores: `pytest -m heavy`
    checks it, on the test split its numbers are quoted from; its members and fusion are checked below."""
    torch.set_num_threads(2)
    pred = Predictor(*REG.load(name))
    ds, decoded = _isic(pred.card.task, pred.card.input_size)
    parts = [("val", pred.card.metrics)] + ([("test", pred.card.test_metrics)] if pred.card.test_metrics else [])
    if pred.card.fusion and pred.card.test_metrics:
        parts = parts[1:]
    for split, card in parts:
        m = evaluate_dataset(pred, ds, split, n_boot=200, decoded=decoded)
        assert m["split"] == split and m["n"] == card["n"]
        # int8 copies too: their weights cannot saturate on any CPU (test_shipped_int8_copies_compute_alike_on_every_cpu)
        keys = ("auc", "accuracy", "sens_at_spec80")
        got, want = [m[k] for k in keys], [card[k] for k in keys]
        assert all(abs(g - w) <= 2e-3 for g, w in zip(got, want)), (split, got, want)


@pytest.mark.parametrize("name", [c.name for c in CARDS if c.precision == "int8"])
def test_shipped_int8_copies_compute_alike_on_every_cpu(name):
    """The first int8 copy, with 8-bit weights, scored test AUC 0.8908 on a CPU without VNNI and 0.8991 on one
    with it (docs/results/int8_portability_8bit.json); its matrix-product weights now fit in 7 bits."""
    assert_no_pair_saturates(REG.root / REG.get(name).weights)
    depthwise = int8_weights(REG.root / REG.get(name).weights)["depthwise"]  # these keep 8 bits: nothing saturates
    assert not depthwise or max(int(np.abs(w.astype(int)).max()) for w in depthwise.values()) > 64


@pytest.mark.parametrize("name", [c.name for c in CARDS if c.fusion])
def test_fused_models_hold_exactly_their_registered_members(name):
    """Where the members are shipped too, the fused weights are exactly theirs; members not shipped (to keep
    weights/ small) are still named in the card with the sha256 of the file they were fused from."""
    fused, card = REG.load(name)
    assert set(fused.members) == {spec["key"] for spec in card.fusion["members"]}
    shipped = [spec for spec in card.fusion["members"] if spec["name"] in REG.names()]
    for spec in card.fusion["members"]:
        assert len(spec["sha256"]) == 64 and spec["input_size"] == fused.sizes[spec["key"]]
    for spec in shipped:
        member, mcard = REG.load(spec["name"])
        assert mcard.sha256 == spec["sha256"] and mcard.input_size == spec["input_size"]
        own = fused.members[spec["key"]].state_dict()
        for key, value in member.state_dict().items():
            half = card.dtype == "float16" and value.is_floating_point()
            assert torch.equal(own[key], value.half().float() if half else value), f"{spec['name']}: {key}"
