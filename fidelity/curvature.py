"""Is the victim piecewise linear at all? A smooth activation (softplus, GELU) has no kink.

On a short segment a ReLU network is affine (or has a kink or two): each answer minus the
interpolation of its two neighbours is rounding noise, of random sign. A smooth victim curves:
on a segment too short for its curvature to change sign, those deviations all share one sign,
and they lie far above float64 rounding. The noise floor's 48 answers (two segments) are read
this way, so the test costs no query; a victim that curves is refused up front instead of
having its curvature taken for noise or for thousands of kinks.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .noise import EPS

# deviations this many times float64 rounding of the answers' size count as real
ABOVE_ROUNDING = 1e4
# at least this share of a segment's deviations are above rounding
MIN_SHARE = 0.9
# the curvature they imply changes sign at most this often along the segment (an inflection
# point; noise changes sign at about half of the steps: 1 change or none has probability
# ~1e-5 on a 24-point segment)
MAX_SIGN_CHANGES = 1
# and it changes smoothly: the median relative change between neighbours is below this (about
# 0.6 for noise)
MAX_ROUGHNESS = 0.25


def curvature(t: np.ndarray, y: np.ndarray) -> Optional[str]:
    """Why the answers ``y (n, k)`` at sorted points ``t (n,)`` of one segment curve, or
    ``None`` when they may come from a piecewise-linear function (affine up to noise, or a
    few kinks).

    Each inner answer's deviation from the chord of its neighbours is, for a function of
    second derivative ``c``, ``-c/2`` times the product of the two gaps: the implied ``c`` of a
    smooth victim is real (far above rounding), keeps its sign (but at an inflection) and
    changes little from one point to the next; noise gives none of the three, a kink spoils
    two deviations only.
    """
    t = np.asarray(t, np.float64)
    y = np.asarray(y, np.float64)
    g1, g2 = t[1:-1] - t[:-2], t[2:] - t[1:-1]
    a = (g2 / (g1 + g2))[:, None]
    dev = y[1:-1] - a * y[:-2] - (1.0 - a) * y[2:]
    level = ABOVE_ROUNDING * EPS * max(float(np.abs(y).max()), 1e-300)
    for j in range(y.shape[1]):
        c = -2.0 * dev[:, j] / (g1 * g2)
        if (np.abs(dev[:, j]) > level).sum() < MIN_SHARE * c.size:
            continue
        changes = int((np.sign(c[1:]) != np.sign(c[:-1])).sum())
        rough = float(np.median(np.abs(np.diff(c)) / np.maximum(np.abs(c[1:]),
                                                                 np.abs(c[:-1]))))
        if changes <= MAX_SIGN_CHANGES and rough < MAX_ROUGHNESS:
            return (f"output {j} curves: second differences of {c.size} answers imply a "
                    f"smoothly varying second derivative (up to {np.abs(c).max():.2g}, "
                    f"{changes} sign change(s), median relative change {rough:.2g}) far above "
                    f"float64 rounding")
    return None
