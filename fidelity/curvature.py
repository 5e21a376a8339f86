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
# at least this share of a segment's deviations are above rounding, and all of those share
# one sign (random noise does so with probability 2^-20 on a 24-point segment)
MIN_SHARE = 0.9


def curvature(t: np.ndarray, y: np.ndarray) -> Optional[str]:
    """Why the answers ``y (n, k)`` at sorted points ``t (n,)`` of one segment curve, or
    ``None`` when they may come from a piecewise-linear function (affine up to noise, or a
    few kinks)."""
    t = np.asarray(t, np.float64)
    y = np.asarray(y, np.float64)
    a = ((t[2:] - t[1:-1]) / (t[2:] - t[:-2]))[:, None]
    dev = y[1:-1] - a * y[:-2] - (1.0 - a) * y[2:]
    level = ABOVE_ROUNDING * EPS * max(float(np.abs(y).max()), 1e-300)
    for j in range(y.shape[1]):
        d = dev[:, j]
        real = np.abs(d) > level
        n = int(real.sum())
        pos = int((d[real] > 0).sum())
        if n >= MIN_SHARE * d.size and pos in (0, n):
            same = n
            return (f"output {j} curves: {same} of {d.size} deviations from linear "
                    f"interpolation share one sign, up to {np.abs(d).max():.2g} (float64 "
                    f"rounding is ~{EPS * np.abs(y).max():.1g})")
    return None
