"""What a probability means at the user's threshold: the verdict wording and the operating point behind it.

Plain Python (no Streamlit) so the Analyse and Compare pages, the CLI and the PDF report say the same thing.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .registry import ModelCard


class OperatingPoint(NamedTuple):
    sensitivity: float
    specificity: float
    split: str  # "test" or "validation": the card's reported split
    n: int | None


def _card_threshold(card: ModelCard, threshold: float, temperature: float | None) -> float:
    """The same cut on the log-odds, as a probability at the card's own temperature (where its ROC was drawn)."""
    if temperature is None or not 0 < threshold < 1:
        return threshold
    log_odds = math.log(threshold / (1 - threshold)) * temperature / card.temperature
    return 1 / (1 + math.exp(-max(-700.0, min(700.0, log_odds))))


def operating_point(card: ModelCard, threshold: float, temperature: float | None = None) -> OperatingPoint | None:
    """Sensitivity/specificity at a threshold (and temperature), read off the ROC of the card's reported split."""
    split, m = card.reported
    roc = m.get("roc") or {}
    thr, tpr, fpr = roc.get("thresholds"), roc.get("tpr"), roc.get("fpr")
    if not thr:
        return None
    cut = _card_threshold(card, threshold, temperature)
    ok = [i for i, t in enumerate(thr) if t >= cut]
    i = ok[-1] if ok else 0
    sens, spec = float(tpr[i]), float(1 - fpr[i])
    if not (math.isfinite(sens) and math.isfinite(spec)):  # a split without one class: no rate to show
        return None
    return OperatingPoint(sens, spec, split, m.get("n"))


UNCERTAIN = "Uncertain — too close to the threshold to call"


def verdict(card: ModelCard, p: float, threshold: float, band: float) -> tuple[str, str]:
    """(headline, colour): an explicit 'uncertain' zone stops near-threshold scores reading as answers. The
    negative side is blue, not green: a green 'benign' reads as all clear, which no score here can give."""
    neg, pos = card.task_labels
    if abs(p - threshold) < band:
        return UNCERTAIN, "orange"
    if p >= threshold:
        return f"Leans {pos}", "red"
    return f"Leans {neg}", "blue"


def one_in(rate: float, things: str) -> str:
    """A share of ``things`` as a clinician says it: 'about 1 in 5 ...' below 25%, a percentage from there
    ('1 in 2' would stand for anything from 40% to 67%), and 'no', 'all' or 'over 99%' at the ends. The switch is
    at 1 in 4 exactly: at 30% a rate of 29% read 'about 1 in 3', more than the '30%' said of a larger one."""
    if not math.isfinite(rate):
        raise ValueError(f"a share must be a number between 0 and 1, not {rate!r}")
    if rate <= 0:
        return f"no {things}"
    if rate >= 1:
        return f"all {things}"
    if rate >= 0.995:  # not '100%' while some were not
        return f"over 99% of {things}"
    if rate >= 0.25:
        return f"{rate:.0%} of {things}"
    return f"about 1 in {int(1 / rate + 0.5)} {things}"


def plain_rates(op: OperatingPoint, labels: tuple[str, str]) -> str:
    """Sensitivity and specificity in words: what the model missed and what it flagged wrongly."""
    neg, pos = labels
    return (f"it missed {one_in(1 - op.sensitivity, f'{pos} photos')} and flagged "
            f"{one_in(1 - op.specificity, f'{neg} photos')} as {pos}")


def negative_caveat(card: ModelCard, threshold: float, temperature: float | None = None, band: float = 0.0) -> str:
    """What a negative lean does not mean, with the share of positives that leaned the same way: those that
    scored below the band's lower edge (where a negative lean starts), not below the threshold, at this
    temperature."""
    neg, pos = card.task_labels
    text = f"Leaning {neg} does not rule out {_noun(pos)}"
    cut = threshold - band
    op = operating_point(card, cut, temperature) if cut > 0 else None
    if op is None:
        return text + "."
    where = ("its locked test split" if op.split == "test" else
             "its validation split (optimistic: the split it was tuned on)")
    missed = 1 - op.sensitivity
    if missed <= 0:  # 'no malignant photos ... scored below, as this one did' read as a contradiction
        return f"{text}, although no {pos} photo in {where} scored below {_p_text(cut)} at this temperature."
    return (f"{text}: {one_in(missed, f'{pos} photos')} in {where} scored below {_p_text(cut)} at this temperature, "
            f"as this one did.")


def _p_text(p: float) -> str:
    """A probability as the pages print it, without rounding a small one to 0.00."""
    return f"{p:.2f}" if p >= 0.01 else f"{p:.2g}"


def uncertain_caveat(card: ModelCard) -> str:
    """What an uncertain verdict means: unresolved, which does not rule the positive label out either."""
    return (f"Too close to the threshold for the model to lean either way; this does not rule out "
            f"{_noun(card.task_labels[1])}: treat it as unresolved.")


#: diagnoses a head counts as malignant that a dermatologist would call pre-malignant
PREMALIGNANT = {"actinic_keratosis"}


def temperatures(t: float, calibrated: float) -> tuple[str, str]:
    """A used and a calibrated T as text: two decimals, or four significant digits where two decimals would
    print a moved T as the calibrated one ('T = 1.45 is not calibrated (the calibrated T is 1.45)')."""
    if f"{t:.2f}" != f"{calibrated:.2f}" or t == calibrated:
        return f"{t:.2f}", f"{calibrated:.2f}"
    return f"{t:.4g}", f"{calibrated:.4g}"


def score_note(card: ModelCard, temperature: float | None = None) -> str:
    """What the score is and is not: fitted on validation photos with their own share of positives (not a
    patient's risk), calibrated only at the card's T, and which diagnoses its positive label stands for."""
    pos = card.task_labels[1]
    t = card.temperature if temperature is None else temperature
    n, n_pos = card.metrics.get("n"), card.metrics.get("n_positive")
    share = (f"validation photos of which {n_pos / n:.0%} are {pos}" if _num(n) and _num(n_pos) and n > 0
             else "its validation photos")
    risk = f"{share}, not a clinic's share: it is not this patient's risk."
    if t == card.temperature:
        head = f"The score P({pos}) is calibrated on {risk}"
    else:
        used, calibrated = temperatures(t, card.temperature)
        head = (f"The score P({pos}) at T = {used} is not calibrated (the calibrated T is {calibrated}); even "
                f"calibrated, it is fitted to {risk}")
    names = sorted((n for n, g in zip(card.label_names, card.groups) if g == pos), key=lambda n: n in PREMALIGNANT)
    if not names or [n.casefold() for n in names] == [pos.casefold()]:  # a two-output head: nothing to spell out
        return head
    words = [n.replace("_", " ") + (f" (pre-malignant, counted as {pos} in training)" if n in PREMALIGNANT else "")
             for n in names]
    listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"{head} {pos.capitalize()} here means {listed}."


NOUNS = {"malignant": "malignancy"}  # a label as the thing a lean does not rule out


def _noun(label: str) -> str:
    return NOUNS.get(label, label)


def auc_text(card: ModelCard) -> str:
    """'test AUC 0.912 [0.88, 0.94]' when the card has a locked test split, else the validation AUC, marked."""
    auc, ci = card.test_metrics.get("auc"), card.test_metrics.get("auc_ci")
    if _num(auc):
        return f"test AUC {auc:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    val = card.metrics.get("auc")
    why = "no test AUC" if card.test_metrics else "no test split"
    return f"val AUC {val:.3f} ({why})" if _num(val) else "AUC –"


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
