"""Binary metrics a clinician asks about, ECE, temperature calibration (Guo et al. 2017), bootstrap intervals,
DeLong's paired AUC test and per-subgroup AUCs."""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.stats import norm, rankdata
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve


def binary_log_odds(logits: torch.Tensor, positive: Sequence[int]) -> torch.Tensor:
    """log P(positive) - log P(negative) of a head whose ``positive`` outputs sum to P(positive), at T = 1.

    Temperature is applied to this one number, not to the per-class logits: dividing it by T is monotone, so
    the ranking (hence the AUC) never changes, whereas softmax(logits / T) summed over a group can reorder cases.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (n, classes), got shape {tuple(logits.shape)}")
    k = logits.shape[1]
    bad = [i for i in positive if not -k <= i < k]
    if bad:
        raise ValueError(f"positive indices {bad} are out of range for {k} outputs")
    x = logits.double() if logits.dtype == torch.float64 else logits.float()
    log_p = torch.log_softmax(x, dim=1)
    mask = torch.zeros(k, dtype=torch.bool, device=x.device)
    mask[list(positive)] = True
    return torch.logsumexp(log_p[:, mask], dim=1) - torch.logsumexp(log_p[:, ~mask], dim=1)


def grouped_probs(logits: torch.Tensor, positive: Sequence[int], temperature: float = 1.0) -> torch.Tensor:
    """P(positive) = sigmoid(binary log-odds / T): for two outputs this is softmax(logits / T)[:, 1] exactly."""
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return torch.sigmoid(binary_log_odds(logits, positive) / temperature)


def ece_score(y: np.ndarray, p_pos: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-label confidence, equal-width bins."""
    bins = reliability_bins(y, p_pos, n_bins)
    n = sum(b["n"] for b in bins)
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins)) if n else 0.0


def ece_null(p_pos: np.ndarray, n_bins: int = 15, draws: int = 500, seed: int = 0) -> dict[str, float]:
    """The ECE that a perfectly calibrated model with these very probabilities would show on this many images.

    Labels drawn from the model's own probabilities are calibrated by construction, so their ECE is sampling
    noise alone: an observed ECE inside this range is miscalibration too small to measure on this set.
    """
    rng = np.random.default_rng(seed)
    p = np.asarray(p_pos, dtype=np.float64)
    vals = [ece_score((rng.random(len(p)) < p).astype(int), p, n_bins) for _ in range(draws)]
    return {"mean": round(float(np.mean(vals)), 4), "p95": round(float(np.percentile(vals, 95)), 4)}


def reliability_bins(y: np.ndarray, p_pos: np.ndarray, n_bins: int = 15) -> list[dict[str, float]]:
    """Per-bin confidence vs accuracy, for reliability diagrams."""
    y = np.asarray(y).astype(int)
    p_pos = np.asarray(p_pos, dtype=np.float64)
    pred = (p_pos >= 0.5).astype(int)
    conf = np.where(pred == 1, p_pos, 1 - p_pos)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            out.append({"lo": float(lo), "hi": float(hi), "n": int(m.sum()),
                        "confidence": float(conf[m].mean()), "accuracy": float((pred[m] == y[m]).mean())})
    return out


def sens_at_spec(y: np.ndarray, p_pos: np.ndarray, spec: float = 0.8) -> tuple[float, float]:
    """Highest sensitivity whose specificity is at least ``spec``, and the threshold that gives it.

    Every threshold is kept: sklearn's ``drop_intermediate`` drops collinear points, and with tied scores the
    dropped one can be the best point under the specificity floor.
    """
    fpr, tpr, thr = roc_curve(y, p_pos, drop_intermediate=False)
    ok = fpr <= 1 - spec + 1e-12
    i = int(np.argmax(np.where(ok, tpr, -1)))
    return float(tpr[i]), float(min(thr[i], 1.0))


def full_roc(y: np.ndarray, p_pos: np.ndarray) -> dict[str, list[float]]:
    """The ROC at every distinct score, thresholds descending and capped at 1 (sklearn's first is infinite):
    point i is what "P >= thresholds[i]" gives. Thresholds keep 10 decimals: two scores closer than 1e-5 must
    stay two points."""
    fpr, tpr, thr = roc_curve(y, p_pos, drop_intermediate=False)
    return {"fpr": fpr.round(6).tolist(), "tpr": tpr.round(6).tolist(),
            "thresholds": np.minimum(thr, 1.0).round(10).tolist()}


def binary_metrics(y: Sequence[int], p_pos: Sequence[float], threshold: float = 0.5,
                   labels: tuple[str, str] = ("benign", "malignant")) -> dict[str, Any]:
    """Metrics at ``threshold``, and the whole ROC: every distinct score kept (no ``drop_intermediate``, no
    thinning), so the sensitivity and specificity the pages read off it at any other threshold are exact. A
    thinned curve once put the default student's sensitivity at 0.5 at 66% against its true 72%."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p_pos, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError(f"metrics need both classes in the labels; found only {labels[int(y[0])] if len(y) else 'none'}")
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    sens, spec = tp / max(tp + fn, 1), tn / max(tn + fp, 1)
    s80, t80 = sens_at_spec(y, p, 0.8)
    return {
        "n": int(len(y)),
        "n_positive": int(y.sum()),
        "threshold": float(threshold),
        "auc": float(roc_auc_score(y, p)),
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float((sens + spec) / 2),
        "sensitivity": float(sens),
        "specificity": float(spec),
        "sens_at_spec80": s80,
        "threshold_at_spec80": t80,
        "ece": ece_score(y, p),
        "per_class": {labels[i]: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                                  "support": int(sup[i])} for i in (0, 1)},
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        "roc": full_roc(y, p),
    }


def fit_temperature(logits: torch.Tensor, y: Sequence[int], positive: Sequence[int],
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature minimising the binary NLL of the grouped probabilities on held-out data."""
    from scipy.optimize import minimize_scalar

    yt = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    logits = logits.detach().double()

    def nll(log_t: float) -> float:
        p = grouped_probs(logits, positive, math.exp(log_t)).double().clamp(1e-7, 1 - 1e-7)
        return float(-(yt * p.log() + (1 - yt) * (1 - p).log()).mean())

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-4})
    return float(round(math.exp(res.x), 4))


def _check_binary(y: ArrayLike, *scores: ArrayLike) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels as 0/1 ints and scores as float64, checked to line up, so every resampler can trust them."""
    y = np.asarray(y).astype(int)
    out = [np.asarray(s, dtype=np.float64) for s in scores]
    for s in out:
        if s.shape != y.shape:
            raise ValueError(f"scores of shape {s.shape} do not match labels of shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(y.tolist()) - {0, 1})}")
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError(f"need both classes in the labels; got {int(y.sum())} positive of {len(y)}")
    return y, out


def _stratified_indices(y: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) resampled indices: positives in the first columns, negatives after, counts as in ``y``.

    Stratifying keeps every resample's prevalence, so no resample lacks a class and the AUC is always defined.
    """
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100 for a percentile interval, got {n_boot}")
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    return np.hstack([rng.choice(pos, (n_boot, len(pos))), rng.choice(neg, (n_boot, len(neg)))])


def _auc_rows(scores: np.ndarray, n_pos: int) -> np.ndarray:
    """Mann-Whitney AUC of each row whose first ``n_pos`` entries are positives (midranks count ties as 1/2)."""
    n_neg = scores.shape[1] - n_pos
    ranks = rankdata(scores, axis=1)
    return (ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _sens80_rows(scores: np.ndarray, n_pos: int) -> np.ndarray:
    """``sens_at_spec(.., 0.8)`` of each row laid out as in ``_auc_rows``, without a loop over rows.

    At most k = floor(0.2 * n_neg) negatives may score at or above the threshold, so the best threshold sits
    just above the (k+1)-th highest negative, and the sensitivity is the share of positives above that score.
    """
    neg = scores[:, n_pos:]
    k = math.floor(neg.shape[1] * (1 - 0.8 + 1e-12))
    if k >= neg.shape[1]:
        return np.ones(len(scores))
    cut = -np.partition(-neg, k, axis=1)[:, k]
    return (scores[:, :n_pos] > cut[:, None]).mean(axis=1)


_BOOT_STATS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {"auc": _auc_rows, "sens_at_spec80": _sens80_rows}


def _percentile_ci(values: np.ndarray, level: float) -> list[float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return [round(float(lo), 4), round(float(hi), 4)]


def bootstrap_ci(y: ArrayLike, p: ArrayLike, stat: str = "auc", n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> list[float]:
    """[lo, hi] percentile interval of ``stat`` over stratified resamples: how far the number could move
    on another test set of this size and prevalence."""
    if stat not in _BOOT_STATS:
        raise ValueError(f"unknown stat {stat!r}; valid: {sorted(_BOOT_STATS)}")
    y, (p,) = _check_binary(y, p)
    idx = _stratified_indices(y, n_boot, seed)
    return _percentile_ci(_BOOT_STATS[stat](p[idx], int(y.sum())), level)


def _delong_components(y: np.ndarray, p: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components V10 (per positive) and V01 (per negative), by midranks.

    Sun & Xu (2014): three rankings replace the O(m * n) comparison of every positive with every negative.
    """
    x, z = p[y == 1], p[y == 0]
    m, n = len(x), len(z)
    tz = rankdata(np.r_[x, z])
    v10 = (tz[:m] - rankdata(x)) / n
    v01 = 1.0 - (tz[m:] - rankdata(z)) / m
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    return float(auc), v10, v01


def delong_test(y: ArrayLike, p_a: ArrayLike, p_b: ArrayLike) -> dict[str, float]:
    """DeLong's test of two correlated AUCs on the same images: the pairing removes the between-image noise
    that two separate intervals would count twice."""
    y, (p_a, p_b) = _check_binary(y, p_a, p_b)
    if min(y.sum(), len(y) - y.sum()) < 2:
        raise ValueError(f"DeLong needs >= 2 of each class; got {int(y.sum())} positive of {len(y)}")
    auc_a, v10_a, v01_a = _delong_components(y, p_a)
    auc_b, v10_b, v01_b = _delong_components(y, p_b)
    var = np.var(v10_a - v10_b, ddof=1) / len(v10_a) + np.var(v01_a - v01_b, ddof=1) / len(v01_a)
    delta, se = auc_a - auc_b, math.sqrt(max(float(var), 0.0))
    if se == 0:  # identical predictions: no difference; a nonzero delta with no spread (1 vs 0): certain
        z = 0.0 if delta == 0 else math.copysign(math.inf, delta)
        return {"auc_a": auc_a, "auc_b": auc_b, "delta": delta, "se": 0.0, "z": z,
                "p_value": 1.0 if delta == 0 else 0.0}
    z = delta / se
    return {"auc_a": auc_a, "auc_b": auc_b, "delta": delta, "se": se, "z": z, "p_value": float(2 * norm.sf(abs(z)))}


def paired_comparison(y: ArrayLike, p_a: ArrayLike, p_b: ArrayLike, n_boot: int = 1000,
                      seed: int = 0) -> dict[str, Any]:
    """Model A minus model B on the same images: the AUC difference, its paired bootstrap interval (both models
    scored on the same resamples) and DeLong's p-value."""
    y, (p_a, p_b) = _check_binary(y, p_a, p_b)
    idx, n_pos = _stratified_indices(y, n_boot, seed), int(y.sum())
    deltas = _auc_rows(p_a[idx], n_pos) - _auc_rows(p_b[idx], n_pos)
    d = delong_test(y, p_a, p_b)
    return {"n": int(len(y)), "n_positive": n_pos, "auc_a": round(d["auc_a"], 4), "auc_b": round(d["auc_b"], 4),
            "delta_auc": round(d["delta"], 4), "delta_auc_ci": _percentile_ci(deltas, 0.95),
            "p_delong": float(f"{d['p_value']:.6g}")}


def age_band(age: float | str | None) -> str | None:
    """"<40", "40-60" (both ends included) or ">60"; None when the age is missing."""
    if age is None or (isinstance(age, str) and not age.strip()):
        return None
    try:
        a = float(age)
    except ValueError:
        raise ValueError(f"age must be a number, got {age!r}") from None
    if math.isnan(a):
        return None
    if a < 0:
        raise ValueError(f"age must be >= 0, got {age!r}")
    return "<40" if a < 40 else "40-60" if a <= 60 else ">60"


_SITES = {"face": "head/neck", "scalp": "head/neck", "ear": "head/neck", "neck": "head/neck",
          "back": "trunk", "trunk": "trunk", "abdomen": "trunk", "chest": "trunk",
          "upper extremity": "upper extremity", "hand": "upper extremity",
          "lower extremity": "lower extremity", "foot": "lower extremity", "acral": "acral", "genital": "genital"}


def site_group(localization: str | None) -> str | None:
    """HAM10000 ``localization`` folded into a few body regions, so each subgroup has enough images to read."""
    if localization is None or (isinstance(localization, float) and math.isnan(localization)):
        return None
    key = str(localization).strip().lower()
    if key in ("", "unknown"):
        return None
    return _SITES.get(key, "other")


#: fewer images than this of either class and an AUC (with its bootstrap interval) says little: subgroups below
#: it get no AUC, and ``evaluate`` warns
MIN_PER_CLASS = 10


def small_sample_note(n_positive: int, n: int, labels: tuple[str, str]) -> str:
    """A warning when either class has fewer than MIN_PER_CLASS images, else ''."""
    n_neg = n - n_positive
    if min(n_positive, n_neg) >= MIN_PER_CLASS:
        return ""
    return (f"only {n_positive} {labels[1]} and {n_neg} {labels[0]} images: an AUC and its interval say little "
            f"on so few (at least {MIN_PER_CLASS} of each)")


def _group_key(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return "unknown"
    return str(value)


def _subgroup_row(y: np.ndarray, p: np.ndarray, min_per_class: int, n_boot: int, seed: int,
                  labels: tuple[str, str]) -> dict[str, Any]:
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    row: dict[str, Any] = {"n": int(len(y)), "n_positive": n_pos, "auc": None, "auc_ci": None, "note": ""}
    if min(n_pos, n_neg) < min_per_class:
        row["note"] = (f"too few to read: {n_pos} {labels[1]}, {n_neg} {labels[0]}; "
                       f"needs >= {min_per_class} of each")
        return row
    row.update(auc=round(float(roc_auc_score(y, p)), 4), auc_ci=bootstrap_ci(y, p, "auc", n_boot, seed))
    return row


def subgroup_metrics(y: ArrayLike, p: ArrayLike, groups: Mapping[str, Sequence[str | None]],
                     min_per_class: int = MIN_PER_CLASS, n_boot: int = 1000, seed: int = 0,
                     labels: tuple[str, str] = ("benign", "malignant")) -> dict[str, dict[str, dict[str, Any]]]:
    """AUC with its interval per value of each attribute (sex, age band, site); a subgroup with too few of
    either class gets a note instead of a number, because its AUC would be noise."""
    if min_per_class < 1:
        raise ValueError(f"min_per_class must be >= 1, got {min_per_class}")
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=np.float64)
    if p.shape != y.shape:
        raise ValueError(f"scores of shape {p.shape} do not match labels of shape {y.shape}")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for attr, values in groups.items():
        if len(values) != len(y):
            raise ValueError(f"group {attr!r} has {len(values)} values for {len(y)} labels")
        keys = np.array([_group_key(v) for v in values], dtype=object)
        order = sorted(set(keys) - {"unknown"}) + (["unknown"] if "unknown" in keys else [])
        out[attr] = {k: _subgroup_row(y[keys == k], p[keys == k], min_per_class, n_boot, seed, labels)
                     for k in order}
    return out


def _split_report(logits: torch.Tensor, y: Sequence[int], positive: Sequence[int], labels: tuple[str, str],
                  temp: float) -> dict[str, Any]:
    """Metrics at ``temp`` with ECE and reliability before and after, and intervals for AUC and sens@spec80."""
    before = grouped_probs(logits, positive, 1.0).numpy()
    after = grouped_probs(logits, positive, temp).numpy()
    metrics = binary_metrics(y, after, labels=labels)
    metrics.update(ece_before=ece_score(y, before), ece_after=metrics["ece"], ece_null=ece_null(after),
                   reliability_before=reliability_bins(y, before), reliability=reliability_bins(y, after),
                   auc_ci=bootstrap_ci(y, after, "auc"), sens_at_spec80_ci=bootstrap_ci(y, after, "sens_at_spec80"))
    return metrics


def calibrated_metrics(logits: torch.Tensor, y: Sequence[int], positive: Sequence[int], labels: tuple[str, str],
                       test_logits: torch.Tensor | None = None, test_y: Sequence[int] | None = None
                       ) -> tuple[float, dict[str, Any], dict[str, Any] | None]:
    """Fit the temperature on the validation logits; report there and, given a test split, on it too, so the
    calibration is judged on images the temperature was not fitted to."""
    if (test_logits is None) != (test_y is None):
        given = "test_y" if test_logits is None else "test_logits"
        raise ValueError(f"test_logits and test_y go together; got only {given}")
    temp = fit_temperature(logits, y, positive)
    val = _split_report(logits, y, positive, labels, temp)
    test = None if test_logits is None else _split_report(test_logits, test_y, positive, labels, temp)
    return temp, val, test
