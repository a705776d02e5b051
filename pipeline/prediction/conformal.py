"""Split conformal prediction sets at slide level (Vovk et al. 2005; Angelopoulos & Bates,
"A gentle introduction to conformal prediction", 2021).

Calibration slides (held out from fitting) give nonconformity scores s_i = 1 − p(true class).
For a new slide the set is every class c with 1 − p(c) ≤ q̂, where q̂ is the
⌈(n + 1)(1 − α)⌉-th smallest score: on exchangeable data the set holds the true class with
probability at least 1 − α. With too few calibration slides for the asked coverage, q̂ is
infinite and the set holds every class (said as a reason, never hidden).
"""

from __future__ import annotations

import math

import numpy as np


def threshold(scores: list[float], coverage: float) -> float | None:
    """q̂ for ``coverage`` = 1 − α, or None when n calibration scores cannot give it."""
    n = len(scores)
    rank = math.ceil((n + 1) * coverage - 1e-9)  # guard 0.9 * 10 = 9.000000000000002
    if n == 0 or rank > n:
        return None
    return float(np.sort(np.asarray(scores, float))[rank - 1])


def min_slides(coverage: float) -> int:
    """The fewest calibration slides that can give ``coverage``."""
    n = 1
    while math.ceil((n + 1) * coverage - 1e-9) > n:
        n += 1
    return n


def prediction_set(probs: dict[str, float], q_hat: float | None) -> list[str]:
    """Classes whose nonconformity is within ``q_hat`` (all classes when it is None),
    most probable first."""
    ordered = sorted(probs, key=lambda c: -probs[c])
    if q_hat is None:
        return ordered
    return [c for c in ordered if 1 - probs[c] <= q_hat + 1e-12]


def set_reason(chosen: list[str], coverage: float, q_hat: float | None, n: int) -> str | None:
    """Why a prediction set does not settle the call, or None when it holds one class."""
    if q_hat is None:
        return (
            f"{n} calibration slides cannot give {coverage:.0%} coverage "
            f"(needs at least {min_slides(coverage)}): every class is possible"
        )
    if len(chosen) != 1:
        held = ", ".join(chosen) or "no class"
        return f"the {coverage:.0%} prediction set holds {len(chosen)} classes ({held})"
    return None
