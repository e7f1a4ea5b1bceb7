"""Metrics, ECE and temperature calibration on small examples worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from skinapp.evaluation import (binary_metrics, ece_null, ece_score, fit_temperature, grouped_probs,
                                reliability_bins, sens_at_spec)

# Five benign, five malignant. At threshold 0.5: one benign scored 0.6 (FP), one malignant scored 0.35 (FN).
Y = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
P = [0.1, 0.2, 0.3, 0.4, 0.6, 0.35, 0.5, 0.7, 0.8, 0.9]


def test_perfect_separation():
    m = binary_metrics([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.45, 0.55, 0.7, 0.99])
    assert m["auc"] == 1.0
    assert m["accuracy"] == 1.0 and m["sensitivity"] == 1.0 and m["specificity"] == 1.0
    assert m["sens_at_spec80"] == 1.0
    assert m["confusion_matrix"] == [[3, 0], [0, 3]]


def test_known_confusion_matrix_and_rates():
    m = binary_metrics(Y, P, labels=("benign", "malignant"))
    assert m["n"] == 10 and m["n_positive"] == 5
    assert m["confusion_matrix"] == [[4, 1], [1, 4]]  # [[tn, fp], [fn, tp]]
    assert m["sensitivity"] == pytest.approx(0.8)
    assert m["specificity"] == pytest.approx(0.8)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx(0.8)
    # pairs (malignant, benign) ranked right: 0.35 beats 3, 0.5 beats 4, 0.7/0.8/0.9 beat all 5 -> 22 of 25
    assert m["auc"] == pytest.approx(22 / 25)
    assert m["per_class"]["malignant"]["precision"] == pytest.approx(0.8)
    assert m["per_class"]["benign"]["support"] == 5
    # rounding the threshold moves one case: at 0.65 only 0.7, 0.8, 0.9 are called malignant
    m65 = binary_metrics(Y, P, threshold=0.65)
    assert m65["confusion_matrix"] == [[5, 0], [2, 3]]
    assert m65["balanced_accuracy"] == pytest.approx((0.6 + 1.0) / 2)


def test_unbalanced_rates():
    # 2 malignant, 6 benign: balanced accuracy weighs both classes equally, accuracy does not
    m = binary_metrics([1, 1, 0, 0, 0, 0, 0, 0], [0.9, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert m["sensitivity"] == pytest.approx(0.5) and m["specificity"] == pytest.approx(1.0)
    assert m["accuracy"] == pytest.approx(7 / 8)
    assert m["balanced_accuracy"] == pytest.approx(0.75)


def test_sensitivity_at_specificity_80():
    # specificity >= 0.8 allows at most one of five benign above the threshold. Lowering the threshold to 0.5
    # keeps that single FP (0.6) and catches 4 of 5 malignant; at 0.4 a second benign crosses.
    s, t = sens_at_spec(np.array(Y), np.array(P), 0.8)
    assert s == pytest.approx(0.8)
    assert t == pytest.approx(0.5)
    m = binary_metrics(Y, P)
    assert m["sens_at_spec80"] == pytest.approx(0.8) and m["threshold_at_spec80"] == pytest.approx(0.5)
    # a stricter specificity (100%) forbids the 0.6 benign: only 0.7/0.8/0.9 remain
    s100, t100 = sens_at_spec(np.array(Y), np.array(P), 1.0)
    assert s100 == pytest.approx(0.6) and t100 == pytest.approx(0.7)
    # the reported threshold is a probability, never sklearn's "inf"
    assert 0.0 <= m["roc"]["thresholds"][0] <= 1.0


def test_metrics_need_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        binary_metrics([1, 1, 1], [0.2, 0.5, 0.9])


def test_ece_zero_when_perfectly_calibrated():
    # 10 cases at p=0.8 (predicted malignant, confidence 0.8), 8 malignant; 10 at p=0.3 (predicted benign,
    # confidence 0.7), 7 benign: each bin's accuracy equals its confidence.
    y = [1] * 8 + [0] * 2 + [0] * 7 + [1] * 3
    p = [0.8] * 10 + [0.3] * 10
    assert ece_score(y, p) == pytest.approx(0.0, abs=1e-9)


def test_ece_known_value():
    # bin A: 10 at p=0.9, 6 malignant -> |0.6 - 0.9| = 0.3; bin B: 10 at p=0.2 (confidence 0.8), all benign
    # -> |1.0 - 0.8| = 0.2. Weighted by size: 0.5 * 0.3 + 0.5 * 0.2 = 0.25.
    y = [1] * 6 + [0] * 4 + [0] * 10
    p = [0.9] * 10 + [0.2] * 10
    assert ece_score(y, p) == pytest.approx(0.25)
    bins = reliability_bins(y, p)
    assert sorted((b["n"], round(b["confidence"], 6), round(b["accuracy"], 6)) for b in bins) == \
        [(10, 0.8, 1.0), (10, 0.9, 0.6)]
    assert binary_metrics(y, p)["ece"] == pytest.approx(0.25)


def test_fit_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    n = 6000
    true_logits = torch.from_numpy(rng.normal(0, 1.5, size=(n, 2)))
    p1 = torch.softmax(true_logits, dim=1)[:, 1].numpy()
    y = (rng.random(n) < p1).astype(int)
    t = fit_temperature(true_logits * 3, y, positive=[1])
    assert t == pytest.approx(3.0, rel=0.12), t
    # calibrated logits need no change
    assert fit_temperature(true_logits, y, positive=[1]) == pytest.approx(1.0, rel=0.12)
    # scaling lowers the ECE of the overconfident logits
    before = ece_score(y, grouped_probs(true_logits * 3, [1]).numpy())
    after = ece_score(y, grouped_probs(true_logits * 3, [1], t).numpy())
    assert after < before


def test_fit_temperature_with_grouped_classes():
    # four diagnoses, two of them malignant: the label is drawn from the grouped probability
    rng = np.random.default_rng(1)
    n = 6000
    true_logits = torch.from_numpy(rng.normal(0, 1.5, size=(n, 4)))
    p_pos = grouped_probs(true_logits, [1, 3]).numpy()
    y = (rng.random(n) < p_pos).astype(int)
    t = fit_temperature(true_logits * 3, y, positive=[1, 3])
    assert t == pytest.approx(3.0, rel=0.2), t


def test_grouped_probs_sums_groups():
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 0.0, 0.0], [3.0, -2.0, 1.0, 2.0]])
    sm = torch.softmax(logits, dim=1)
    torch.testing.assert_close(grouped_probs(logits, [1, 3]), sm[:, 1] + sm[:, 3])
    torch.testing.assert_close(grouped_probs(logits, [0, 1, 2, 3]), torch.ones(3))
    assert grouped_probs(logits, [1, 3])[1].item() == pytest.approx(0.5)
    sm2 = torch.softmax(logits / 2.0, dim=1)
    torch.testing.assert_close(grouped_probs(logits, [0, 2], temperature=2.0), sm2[:, 0] + sm2[:, 2])
    with pytest.raises(ValueError, match="temperature"):
        grouped_probs(logits, [1], temperature=0.0)


def test_ece_null_is_the_noise_floor_of_a_calibrated_model():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.02, 0.98, 300)
    small, large = ece_null(p, draws=300), ece_null(np.tile(p, 30), draws=100)
    assert 0 < small["mean"] <= small["p95"] < 0.2
    assert large["mean"] < small["mean"] / 3  # noise shrinks ~ 1/sqrt(n): 30x the images, ~5x less
    # labels drawn from the probabilities are calibrated, and their ECE sits inside the null range
    y = (rng.random(300) < p).astype(int)
    assert ece_score(y, p) <= small["p95"] * 1.5
    # a badly overconfident model is far outside it
    sharp = np.where(p > 0.5, 0.999, 0.001)
    assert ece_score(y, sharp) > ece_null(sharp)["p95"] + 0.1
    assert ece_null(p, draws=50, seed=1) == ece_null(p, draws=50, seed=1)  # reproducible
