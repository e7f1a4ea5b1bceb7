"""Binary metrics a clinician asks about, ECE, and temperature calibration (Guo et al. 2017)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve


def grouped_probs(logits: torch.Tensor, positive: Sequence[int], temperature: float = 1.0) -> torch.Tensor:
    """P(positive) = sum of softmax(logits / T) over the output classes that belong to the positive label."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = torch.softmax(logits.float() / temperature, dim=1)
    return p[:, list(positive)].sum(dim=1).clamp(0.0, 1.0)


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
    """Highest sensitivity whose specificity is at least ``spec``, and the threshold that gives it."""
    fpr, tpr, thr = roc_curve(y, p_pos)
    ok = fpr <= 1 - spec + 1e-12
    i = int(np.argmax(np.where(ok, tpr, -1)))
    return float(tpr[i]), float(min(thr[i], 1.0))


def binary_metrics(y: Sequence[int], p_pos: Sequence[float], threshold: float = 0.5,
                   labels: tuple[str, str] = ("benign", "malignant"), roc_points: int = 101) -> dict[str, Any]:
    y = np.asarray(y).astype(int)
    p = np.asarray(p_pos, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError(f"metrics need both classes in the labels; found only {labels[int(y[0])] if len(y) else 'none'}")
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    sens, spec = tp / max(tp + fn, 1), tn / max(tn + fp, 1)
    s80, t80 = sens_at_spec(y, p, 0.8)
    fpr, tpr, thr = roc_curve(y, p)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(roc_points, len(fpr))).round().astype(int))
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
        "roc": {"fpr": fpr[keep].round(5).tolist(), "tpr": tpr[keep].round(5).tolist(),
                "thresholds": np.minimum(thr[keep], 1.0).round(5).tolist()},
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


def calibrated_metrics(logits: torch.Tensor, y: Sequence[int], positive: Sequence[int],
                       labels: tuple[str, str]) -> tuple[float, dict[str, Any]]:
    """Fit the temperature on held-out logits; metrics at it, with ECE and reliability before and after."""
    before = grouped_probs(logits, positive, 1.0).numpy()
    temp = fit_temperature(logits, y, positive)
    after = grouped_probs(logits, positive, temp).numpy()
    metrics = binary_metrics(y, after, labels=labels)
    metrics.update(ece_before=ece_score(y, before), ece_after=metrics["ece"], ece_null=ece_null(after),
                   reliability_before=reliability_bins(y, before), reliability=reliability_bins(y, after))
    return temp, metrics
