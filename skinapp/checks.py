"""The bounds every engine entry point enforces, so neither the CLI nor a page can pass nonsense through.

Each check returns the value as the type the engine uses, or raises ValueError naming the bad value and the
valid range; the CLI prints it as one line and exits 2, the app shows it as a message.
"""
from __future__ import annotations

import math


def temperature(t: float) -> float:
    """Finite and > 0: T divides the log-odds, so 0, negative or NaN would be silent nonsense."""
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"temperature {t!r} must be a finite number > 0") from None
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature {t} must be a finite number > 0")
    return t


def threshold(x: float) -> float:
    """Strictly between 0 and 1: at 0 or 1 every photo gets one label."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"threshold {x!r} must be a number between 0 and 1 (exclusive)") from None
    if not 0.0 < x < 1.0:  # also false for NaN
        raise ValueError(f"threshold {x} must be between 0 and 1 (exclusive)")
    return x


#: the most threads or timed runs a command accepts: far above any machine's cores, far below what overflows
MAX_COUNT = 100_000


def positive_int(name: str, v: int) -> int:
    """A count (threads, runs) of at least one, and not absurd (2**40 threads overflowed inside PyTorch)."""
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_COUNT:
        raise ValueError(f"{name} {v!r} must be a whole number from 1 to {MAX_COUNT:,}")
    return v


def band(width: float) -> float:
    """The 'uncertain' half-width around the threshold: 0 (none) up to below 0.5."""
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not 0 <= width < 0.5:  # also NaN
        raise ValueError(f"uncertain band {width!r} must be a number from 0 up to (not including) 0.5")
    return float(width)
