"""Metrics, ECE and temperature calibration on small examples worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sklearn.metrics import roc_auc_score

from skinapp.evaluation import (_auc_rows, _sens80_rows, _stratified_indices, age_band, binary_log_odds,
                                binary_metrics, bootstrap_ci, calibrated_metrics, delong_test, ece_null, ece_score,
                                fit_temperature, grouped_probs, paired_comparison, reliability_bins, sens_at_spec,
                                site_group, subgroup_metrics)

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
    # four diagnoses, two of them malignant; labels drawn at T = 3 from the grouped log-odds, so the fit recovers 3
    rng = np.random.default_rng(1)
    n = 6000
    logits = torch.from_numpy(rng.normal(0, 3.0, size=(n, 4)))
    p_pos = grouped_probs(logits, [1, 3], temperature=3.0).numpy()
    y = (rng.random(n) < p_pos).astype(int)
    t = fit_temperature(logits, y, positive=[1, 3])
    assert t == pytest.approx(3.0, rel=0.15), t


def test_grouped_probs_sums_groups():
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 0.0, 0.0], [3.0, -2.0, 1.0, 2.0]])
    sm = torch.softmax(logits, dim=1)
    torch.testing.assert_close(grouped_probs(logits, [1, 3]), sm[:, 1] + sm[:, 3])
    torch.testing.assert_close(grouped_probs(logits, [0, 1, 2, 3]), torch.ones(3))
    assert grouped_probs(logits, [1, 3])[1].item() == pytest.approx(0.5)
    # temperature divides the grouped log-odds: P = sigmoid(log(P(pos) / P(neg)) / T)
    odds = (sm[:, 0] + sm[:, 2]) / (sm[:, 1] + sm[:, 3])
    torch.testing.assert_close(grouped_probs(logits, [0, 2], temperature=2.0), torch.sigmoid(odds.log() / 2.0))
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            grouped_probs(logits, [1], temperature=bad)
    with pytest.raises(ValueError, match=r"\[4\]"):
        grouped_probs(logits, [1, 4])


def test_two_output_head_matches_softmax_at_every_temperature():
    logits = torch.from_numpy(np.random.default_rng(4).normal(0, 4, size=(200, 2)))
    for t in (0.3, 1.0, 3.0, 50.0):
        torch.testing.assert_close(grouped_probs(logits, [1], t), torch.softmax(logits / t, dim=1)[:, 1],
                                   rtol=1e-12, atol=1e-12)


def test_temperature_never_reorders_a_grouped_head():
    rng = np.random.default_rng(5)
    logits = torch.from_numpy(rng.normal(0, 2.5, size=(400, 9)))
    pos = [0, 2, 5, 7]
    y = (rng.random(400) < grouped_probs(logits, pos).numpy()).astype(int)
    aucs = {t: roc_auc_score(y, grouped_probs(logits, pos, t).numpy()) for t in (0.3, 1.0, 3.0, 50.0)}
    assert len(set(aucs.values())) == 1, aucs
    assert (grouped_probs(logits, pos, 1e6) - 0.5).abs().max().item() < 1e-4
    # the old form, softmax at T and then the sum over the group, reorders cases on these very logits
    old = {t: roc_auc_score(y, torch.softmax(logits / t, dim=1)[:, pos].sum(dim=1).numpy()) for t in aucs}
    assert max(old.values()) - min(old.values()) > 0.05, old


def test_binary_log_odds_dtype_and_stability():
    big = torch.tensor([[1000.0, 0.0, -1000.0], [-1000.0, 0.0, 1000.0]])
    # row 2: log P(pos) = -2000 and log P(neg) = 0, exactly as far apart as the logits say
    torch.testing.assert_close(binary_log_odds(big, [0]), torch.tensor([1000.0, -2000.0]))
    assert binary_log_odds(big.double(), [0]).dtype == torch.float64
    assert binary_log_odds(big.half(), [0]).dtype == torch.float32
    # a float32 softmax saturates: P(neg) rounds to 0 and its log-odds are infinite; this stays finite
    assert torch.softmax(big, dim=1)[0, 1:].sum().item() == 0.0


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


def test_sens_at_spec_keeps_tied_points():
    # ties put the points at 0.9, 0.7 and 0.5 on one line; sklearn's drop_intermediate would drop the 0.7 point,
    # which is the best one: 1 of 5 benign above it (specificity 0.8) and 3 of 5 malignant
    y = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    p = [0.9, 0.7, 0.7, 0.5, 0.5, 0.7, 0.5, 0.1, 0.1, 0.1]
    assert sens_at_spec(np.array(y), np.array(p), 0.8) == (pytest.approx(0.6), pytest.approx(0.7))


def _scores(n: int, n_pos: int, shift: float, seed: int, decimals: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Labels and rounded (so partly tied) scores, positives shifted up by ``shift``."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, dtype=int), np.zeros(n - n_pos, dtype=int)]
    return y, np.round(rng.random(n) + shift * y, decimals)


def test_stratified_resamples_keep_class_counts():
    y = np.r_[np.zeros(50, dtype=int), np.ones(7, dtype=int), np.zeros(30, dtype=int)]
    idx = _stratified_indices(y, 200, seed=0)
    assert idx.shape == (200, 87)
    assert (y[idx[:, :7]] == 1).all() and (y[idx[:, 7:]] == 0).all()
    assert len({tuple(r) for r in idx}) == 200  # resamples differ
    assert np.unique(idx[:, :7]).size == 7  # every positive gets drawn somewhere


def test_vectorised_statistics_match_the_library_ones():
    y, p = _scores(120, 35, 0.3, seed=6, decimals=1)  # one decimal: many ties within and across classes
    rows = p[_stratified_indices(y, 100, seed=1)]
    yb = np.r_[np.ones(35, dtype=int), np.zeros(85, dtype=int)]
    np.testing.assert_allclose(_auc_rows(rows, 35), [roc_auc_score(yb, r) for r in rows], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(_sens80_rows(rows, 35), [sens_at_spec(yb, r, 0.8)[0] for r in rows])


def test_bootstrap_ci():
    y, p = _scores(320, 80, 0.4, seed=7)
    auc, s80 = roc_auc_score(y, p), sens_at_spec(y, p, 0.8)[0]
    lo, hi = bootstrap_ci(y, p, "auc")
    assert lo < auc < hi and 0.02 < hi - lo < 0.2
    slo, shi = bootstrap_ci(y, p, "sens_at_spec80", n_boot=300)
    assert slo < s80 < shi
    assert bootstrap_ci(y, p, n_boot=200, seed=3) == bootstrap_ci(y, p, n_boot=200, seed=3)
    assert bootstrap_ci(y, p, n_boot=200, seed=3) != bootstrap_ci(y, p, n_boot=200, seed=4)
    # a wider level is wider; ten times the images is about sqrt(10) narrower
    wlo, whi = bootstrap_ci(y, p, level=0.99)
    assert wlo < lo and whi > hi
    tlo, thi = bootstrap_ci(np.tile(y, 10), np.tile(p, 10))
    assert (thi - tlo) < (hi - lo) / 2
    with pytest.raises(ValueError, match="'auc', 'sens_at_spec80'"):
        bootstrap_ci(y, p, "f1")
    with pytest.raises(ValueError, match="99"):
        bootstrap_ci(y, p, n_boot=99)
    with pytest.raises(ValueError, match="both classes"):
        bootstrap_ci(np.ones(10), np.linspace(0, 1, 10))


def _delong_var_slow(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray) -> float:
    """DeLong (1988) by its definition: every positive compared with every negative, O(m * n)."""
    def components(p):
        x, z = p[y == 1], p[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)
    (v10a, v01a), (v10b, v01b) = components(p_a), components(p_b)
    s10, s01 = np.cov(np.vstack([v10a, v10b])), np.cov(np.vstack([v01a, v01b]))
    contrast = np.array([1.0, -1.0])
    return float(contrast @ s10 @ contrast / len(v10a) + contrast @ s01 @ contrast / len(v01a))


def test_fast_delong_matches_the_definition():
    y, p_a = _scores(16, 7, 0.3, seed=8, decimals=1)
    p_b = np.round(p_a + np.random.default_rng(9).normal(0, 0.3, 16), 1)  # correlated with A, tied in places
    d = delong_test(y, p_a, p_b)
    assert d["auc_a"] == pytest.approx(roc_auc_score(y, p_a), abs=1e-12)
    assert d["auc_b"] == pytest.approx(roc_auc_score(y, p_b), abs=1e-12)
    assert d["delta"] == pytest.approx(d["auc_a"] - d["auc_b"], abs=1e-15)
    assert d["se"] ** 2 == pytest.approx(_delong_var_slow(y, p_a, p_b), abs=1e-10)
    assert d["se"] > 0 and d["z"] == pytest.approx(d["delta"] / d["se"])
    from scipy.stats import norm
    assert d["p_value"] == pytest.approx(2 * norm.sf(abs(d["z"])))


def test_paired_comparison_of_identical_models():
    y, p = _scores(200, 60, 0.3, seed=10)
    c = paired_comparison(y, p, p, n_boot=200)
    assert c["delta_auc"] == 0 and c["delta_auc_ci"] == [0.0, 0.0] and c["p_delong"] == 1.0
    assert c["n"] == 200 and c["n_positive"] == 60 and c["auc_a"] == c["auc_b"] == round(roc_auc_score(y, p), 4)


def test_paired_comparison_finds_a_real_difference():
    y, strong = _scores(300, 90, 0.6, seed=11)
    weak = np.round(np.random.default_rng(12).random(300) + 0.03 * y, 2)
    c = paired_comparison(y, strong, weak)
    assert c["p_delong"] < 1e-3 and c["delta_auc_ci"][0] > 0
    assert c["delta_auc"] == round(roc_auc_score(y, strong) - roc_auc_score(y, weak), 4)
    flipped = paired_comparison(y, weak, strong)
    assert flipped["delta_auc"] == -c["delta_auc"] and flipped["delta_auc_ci"][1] < 0
    assert paired_comparison(y, strong, weak, n_boot=200, seed=1) == paired_comparison(y, strong, weak, n_boot=200,
                                                                                        seed=1)
    assert paired_comparison(y, strong, weak, n_boot=200, seed=1)["delta_auc_ci"] != \
        paired_comparison(y, strong, weak, n_boot=200, seed=2)["delta_auc_ci"]


def test_paired_bootstrap_uses_the_same_resamples_for_both_models():
    # B is A plus a little noise: the images that flatter A flatter B too, so their difference varies far less
    # than either AUC. Independent resamples for A and B would make the difference vary ~1.4x more than one AUC.
    y, a = _scores(300, 90, 0.4, seed=13, decimals=4)
    b = a + np.random.default_rng(14).normal(0, 0.05, 300)
    lo, hi = paired_comparison(y, a, b)["delta_auc_ci"]
    alo, ahi = bootstrap_ci(y, a)
    assert hi - lo < (ahi - alo) / 3


def test_age_band():
    assert [age_band(a) for a in (0, 39.9, 40, 45, 60, 60.5, 85)] == \
        ["<40", "<40", "40-60", "40-60", "40-60", ">60", ">60"]
    assert age_band("55") == "40-60"
    assert [age_band(a) for a in (None, float("nan"), np.nan, "", "  ")] == [None] * 5
    with pytest.raises(ValueError, match="'old'"):
        age_band("old")
    with pytest.raises(ValueError, match="-3"):
        age_band(-3)


def test_site_group():
    expected = {"face": "head/neck", "scalp": "head/neck", "ear": "head/neck", "neck": "head/neck",
                "back": "trunk", "trunk": "trunk", "abdomen": "trunk", "chest": "trunk",
                "upper extremity": "upper extremity", "hand": "upper extremity",
                "lower extremity": "lower extremity", "foot": "lower extremity",
                "acral": "acral", "genital": "genital"}
    assert {k: site_group(k) for k in expected} == expected
    assert site_group(" Upper Extremity ") == "upper extremity"
    assert site_group("elbow") == "other"
    assert [site_group(v) for v in (None, "", "unknown", "UNKNOWN", float("nan"))] == [None] * 5


def test_subgroup_metrics():
    y_m, p_m = _scores(60, 20, 0.5, seed=15)
    y_f, p_f = _scores(40, 3, 0.5, seed=16)
    y_u, p_u = _scores(30, 12, 0.5, seed=17)
    y, p = np.r_[y_m, y_f, y_u], np.r_[p_m, p_f, p_u]
    sex = ["male"] * 60 + ["female"] * 40 + [None] * 15 + [""] * 15
    band = [age_band(a) for a in np.r_[np.full(65, 30.0), np.full(65, 70.0)]]
    out = subgroup_metrics(y, p, {"sex": sex, "age": band}, n_boot=200, seed=2)
    assert list(out["sex"]) == ["female", "male", "unknown"]
    male, female, unknown = out["sex"]["male"], out["sex"]["female"], out["sex"]["unknown"]
    assert (male["n"], male["n_positive"], male["note"]) == (60, 20, "")
    assert male["auc"] == round(roc_auc_score(y_m, p_m), 4)
    assert male["auc_ci"] == bootstrap_ci(y_m, p_m, n_boot=200, seed=2)
    assert (female["n"], female["n_positive"], female["auc"], female["auc_ci"]) == (40, 3, None, None)
    assert female["note"] == "too few to read: 3 malignant, 37 benign; needs >= 10 of each"
    assert unknown["n"] == 30 and unknown["auc"] == round(roc_auc_score(y_u, p_u), 4)
    assert {k: v["n"] for k, v in out["age"].items()} == {"<40": 65, ">60": 65}
    assert subgroup_metrics(y, p, {"sex": sex}, min_per_class=3, n_boot=200)["sex"]["female"]["auc"] is not None
    with pytest.raises(ValueError, match=r"\(129,\)"):
        subgroup_metrics(y, p[:-1], {"sex": sex})
    with pytest.raises(ValueError, match="'sex' has 3 values for 130"):
        subgroup_metrics(y, p, {"sex": ["male"] * 3})


def _overconfident(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(0, 1.5, size=(n, 2)))
    y = (rng.random(n) < torch.softmax(logits, dim=1)[:, 1].numpy()).astype(int)
    return logits * 3, y


def test_calibrated_metrics_fits_on_validation_and_reports_on_test():
    val_logits, val_y = _overconfident(3000, seed=18)
    test_logits, test_y = _overconfident(1500, seed=19)
    temp, val, test = calibrated_metrics(val_logits, val_y, [1], ("benign", "malignant"), test_logits, test_y)
    assert temp == fit_temperature(val_logits, val_y, [1]) and temp == pytest.approx(3.0, rel=0.15)
    p_test = grouped_probs(test_logits, [1], temp).numpy()
    assert test["n"] == 1500 and test["auc"] == pytest.approx(roc_auc_score(test_y, p_test))
    assert test["ece_after"] == pytest.approx(ece_score(test_y, p_test)) and test["ece_after"] < test["ece_before"]
    assert test["ece_before"] == pytest.approx(ece_score(test_y, grouped_probs(test_logits, [1]).numpy()))
    assert test["auc_ci"] == bootstrap_ci(test_y, p_test)
    assert test["sens_at_spec80_ci"] == bootstrap_ci(test_y, p_test, "sens_at_spec80")
    for split in (val, test):
        assert {"ece_null", "reliability_before", "reliability"} <= split.keys()
        assert split["auc_ci"][0] < split["auc"] < split["auc_ci"][1]
        assert split["sens_at_spec80_ci"][0] <= split["sens_at_spec80"] <= split["sens_at_spec80_ci"][1]
    assert val["n"] == 3000 and val["auc"] != test["auc"]
    t2, val2, none = calibrated_metrics(val_logits, val_y, [1], ("benign", "malignant"))
    assert none is None and t2 == temp and val2["auc_ci"] == val["auc_ci"]
    with pytest.raises(ValueError, match="only test_logits"):
        calibrated_metrics(val_logits, val_y, [1], ("benign", "malignant"), test_logits=test_logits)


@pytest.mark.parametrize("user_t", [None, 0.5, 3.0])
def test_the_operating_point_a_page_reads_off_a_card_is_exact(user_t):
    """Sensitivity and specificity at any threshold and temperature, read off the card's stored ROC, equal those
    counted on the scores themselves. A ROC thinned to 101 points (sklearn's drop_intermediate, then every k-th
    point) once put the default student's sensitivity at 0.5 at 66% against its true 72%."""
    from types import SimpleNamespace

    from skinapp.decision import operating_point
    from skinapp.evaluation import binary_metrics

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    z = rng.normal(1.2 * y - 0.6, 1.0)  # log-odds
    z[:40] = z[40:80]  # tied scores too
    card_t = 1.5
    card = SimpleNamespace(temperature=card_t, reported=("test", binary_metrics(y, 1 / (1 + np.exp(-z / card_t)))))
    p_user = 1 / (1 + np.exp(-z / (card_t if user_t is None else user_t)))
    for threshold in np.round(np.arange(0.05, 0.96, 0.01), 2):
        op = operating_point(card, float(threshold), user_t)
        called = p_user >= threshold
        assert op.sensitivity == pytest.approx(called[y == 1].mean(), abs=1e-6), threshold
        assert op.specificity == pytest.approx((~called)[y == 0].mean(), abs=1e-6), threshold


@pytest.mark.parametrize("rate, words", [(0.0, "no photos"), (0.24, "about 1 in 4 photos"),
                                         (0.07, "about 1 in 14 photos"), (0.01, "about 1 in 100 photos"),
                                         (0.22, "about 1 in 5 photos"), (0.25, "25% of photos"),
                                         (0.28, "28% of photos"), (0.2985, "30% of photos"), (0.4, "40% of photos"),
                                         (0.43, "43% of photos"), (0.3, "30% of photos"), (0.8, "80% of photos"),
                                         (0.996, "over 99% of photos"), (1.0, "all photos")])
def test_rates_in_words_as_a_clinician_reads_them(rate, words):
    """'About 1 in 2' once stood for a 43% miss rate, '100%' for 99.6%, and 'about 1 in 3' (33%) for 29.8%
    while 30% read '30%'."""
    from skinapp.decision import one_in

    assert one_in(rate, "photos") == words


def test_rates_in_words_never_say_less_for_more():
    """A larger rate never reads as a smaller share: the words' own share (1/N or the percentage) rises with it."""
    from skinapp.decision import one_in

    def said(rate: float) -> float:
        words = one_in(rate, "x")
        if words.startswith("about 1 in "):
            return 1 / int(words.split()[3])
        if words in ("no x", "all x"):
            return 0.0 if words == "no x" else 1.0
        return 0.995 if words.startswith("over") else float(words.split("%")[0]) / 100

    shares = [said(r) for r in np.linspace(0.001, 1.0, 4000)]
    assert all(b >= a for a, b in zip(shares, shares[1:]))


def test_a_roc_without_finite_rates_gives_no_operating_point_and_no_crash():
    """A split without positives leaves NaN in its ROC, which card validation allows; the plain words once
    raised on it where the page used to print 'nan%'."""
    from types import SimpleNamespace

    from skinapp.decision import negative_caveat, one_in, operating_point

    roc = {"thresholds": [1.0, 0.5, 0.0], "tpr": [float("nan")] * 3, "fpr": [0.0, 0.5, 1.0]}
    card = SimpleNamespace(task_labels=("benign", "malignant"), temperature=1.0, reported=("test", {"roc": roc}))
    assert operating_point(card, 0.5) is None
    assert negative_caveat(card, 0.5) == "Leaning benign does not rule out malignancy."
    with pytest.raises(ValueError, match="not nan"):
        one_in(float("nan"), "photos")


def test_a_benign_lean_is_blue_and_says_what_it_does_not_rule_out():
    """Green read as all clear; a clinician's reading asked for a neutral colour and the missed share. The share
    is of malignant photos that leaned benign too, i.e. scored below the band's lower edge, not the threshold."""
    from types import SimpleNamespace

    from skinapp.decision import negative_caveat, operating_point, uncertain_caveat, verdict
    from skinapp.evaluation import binary_metrics

    y = np.array([0] * 6 + [1] * 4)
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7, 0.3, 0.45, 0.9, 0.95])  # malignant below 0.5: 2 of 4; below 0.4: 1
    card = SimpleNamespace(task_labels=("benign", "malignant"), temperature=1.0,
                           reported=("test", binary_metrics(y, p)))
    assert verdict(card, 0.2, 0.5, 0.1) == ("Leans benign", "blue")
    assert verdict(card, 0.8, 0.5, 0.1) == ("Leans malignant", "red")
    assert operating_point(card, 0.5).sensitivity == 0.5
    assert negative_caveat(card, 0.5, None, 0.1) == (
        "Leaning benign does not rule out malignancy: 25% of malignant photos in its locked test split scored "
        "below 0.40 at this temperature, as this one did.")
    assert "50% of malignant photos in its locked test split scored below 0.50" in negative_caveat(card, 0.5)
    assert negative_caveat(card, 0.25) == ("Leaning benign does not rule out malignancy, although no malignant "
                                           "photo in its locked test split scored below 0.25 at this temperature.")
    assert negative_caveat(card, 0.08, None, 0.1) == "Leaning benign does not rule out malignancy."  # no such lean
    assert "scored below 0.001 at this temperature" in negative_caveat(card, 0.05, None, 0.049)  # not 'below 0.00'
    tuned = SimpleNamespace(**{**vars(card), "reported": ("validation", card.reported[1])})
    assert "in its validation split (optimistic: the split it was tuned on) scored" in negative_caveat(tuned, 0.5)
    assert uncertain_caveat(card) == ("Too close to the threshold for the model to lean either way; this does not "
                                      "rule out malignancy: treat it as unresolved.")


def test_the_score_note_says_what_the_score_is_not():
    """A clinician read 'P(malignant) = 0.93' as this patient's risk, actinic keratosis as cancer, and a moved T
    as still calibrated; the note says what each is, from the card's own grouping and validation split."""
    from types import SimpleNamespace

    from skinapp.decision import score_note, temperatures

    card = SimpleNamespace(task_labels=("benign", "malignant"), temperature=1.4545,
                           metrics={"n": 320, "n_positive": 162},
                           label_names=["actinic_keratosis", "melanoma", "nevus", "basal_cell_carcinoma"],
                           groups=["malignant", "malignant", "benign", "malignant"])
    note = score_note(card)
    assert note.startswith("The score P(malignant) is calibrated on validation photos of which 51% are malignant, "
                           "not a clinic's share: it is not this patient's risk.")
    assert note.endswith("Malignant here means melanoma, basal cell carcinoma and actinic keratosis (pre-malignant, "
                         "counted as malignant in training).")
    assert score_note(card, 1.4545) == note
    assert score_note(card, 2.0).startswith("The score P(malignant) at T = 2.00 is not calibrated (the calibrated T "
                                            "is 1.45); even calibrated, it is fitted to validation photos of which 51%")
    # the CLI takes --temperature 1.45: not the calibrated 1.4545, and not printed as if it were
    assert "at T = 1.45 is not calibrated (the calibrated T is 1.454)" in score_note(card, 1.45)
    assert temperatures(1.45, 1.4545) == ("1.45", "1.454") and temperatures(2.0, 1.4545) == ("2.00", "1.45")
    unknown = SimpleNamespace(**{**vars(card), "metrics": {}})  # a card without validation counts
    assert score_note(unknown).startswith("The score P(malignant) is calibrated on its validation photos, not a")
    two = SimpleNamespace(**{**vars(card), "label_names": ["Benign", "Malignant"], "groups": ["benign", "malignant"]})
    assert "here means" not in score_note(two)  # 'Malignant here means Malignant' said nothing
