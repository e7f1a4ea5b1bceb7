"""The seed-study summary both the objectives script and the Models page read."""
from __future__ import annotations

import pytest

from skinapp.studies import StudyError, summarise_pairs


def _row(seed, auc, control, ci, variant="kd", arch="dsnet", size=None):
    return {"arch": arch, "image_size": size, "variant": variant, "seed": seed, "teacher": "t", "auc_kd": auc,
            "auc_control": control, "delta_auc": auc - control, "delta_auc_ci": ci, "val_auc_kd": 0.8,
            "val_auc_control": 0.7 + seed / 100, "train_s_kd": 10.0 * (seed + 1)}


def test_mean_sd_over_seeds_and_seeds_whose_interval_clears_zero():
    rows = [_row(0, 0.86, 0.84, [0.005, 0.035]), _row(1, 0.88, 0.84, [-0.01, 0.09]),
            _row(2, 0.82, 0.85, [-0.05, -0.01])]
    (s,) = summarise_pairs(rows)
    assert s["auc"] == pytest.approx((0.8533333, 0.0305505), abs=1e-6)
    assert s["delta_auc"][0] == pytest.approx((0.02 + 0.04 - 0.03) / 3)
    assert (s["seeds_better"], s["seeds_worse"], s["seeds"]) == (1, 1, 3)
    assert s["val_auc"] == pytest.approx((0.8, 0.71)) and s["train_s"] == pytest.approx(20.0)
    assert s["sens_at_spec80"] is None  # the rows carry none: not a made-up number


def test_groups_by_network_size_and_variant_in_first_seen_order():
    rows = [_row(0, 0.9, 0.9, [-0.01, 0.01], "init-kd", "lite0_tiny", 180), _row(0, 0.8, 0.8, [-0.01, 0.01]),
            _row(1, 0.9, 0.9, [-0.01, 0.01], "init-kd", "lite0_tiny", 180)]
    rows.append({k: v for k, v in _row(1, 0.8, 0.8, [-0.01, 0.01]).items() if k != "variant"})  # old files
    out = summarise_pairs(rows)
    assert [(s["network"], s["image_size"], s["variant"], s["seeds"]) for s in out] == [
        ("lite0_tiny", 180, "init-kd", 2), ("dsnet", None, "kd", 2)]


def test_a_row_without_the_paired_numbers_is_refused_by_name():
    row = _row(0, 0.9, 0.8, [0.0, 0.2])
    del row["delta_auc_ci"]
    with pytest.raises(StudyError, match="lacks delta_auc_ci"):
        summarise_pairs([row])


def test_what_an_objective_did_is_read_from_a_study_file(tmp_path):
    from skinapp.studies import load_study, measured
    import json

    assert load_study(tmp_path / "absent.json") == []
    rows = [_row(0, 0.86, 0.84, [0.005, 0.035]), _row(1, 0.83, 0.84, [-0.03, 0.01]),
            _row(0, 0.9, 0.9, [-0.01, 0.01], "kd", "lite0_tiny", 180)]  # another input size: not the default's
    path = tmp_path / "study.json"
    path.write_text(json.dumps(rows))
    study = load_study(path)
    assert measured(study, "logit") == ["dsnet: ΔAUC +0.005 over 2 seeds (1 better, 0 worse)"]
    assert measured(study, "attention") == [] and measured(study, "logit+attention") == []
