"""Stage 0: the noise floor of the victim's answers.

A victim that computes in float32, or rounds its answers to n decimals, answers
``f(x) + noise``. The engine's tolerances, steps and weights all follow from how large that noise
is, so it is measured first: along two short segments (one near the origin, one at the far end of
a search line) the victim is affine, so second differences of equally spaced answers are pure
noise (``n_{j-1} - 2 n_j + n_{j+1}``, standard deviation ``sqrt(6) sigma``). A kink inside a
segment spoils at most two of them; a robust quantile ignores it. The two segments differ in
``|f|`` by about the line length, which separates noise relative to ``|f|`` (float32 arithmetic)
from absolute noise (rounding to a fixed number of decimals).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

EPS = float(np.finfo(np.float64).eps)

# relative noise below this (~113 eps) is float64 arithmetic, where the float64 defaults apply
# (their tolerance is 256 eps). The estimate of float64 rounding scatters: random victims of
# the four shapes of Carlini et al., seeds 0-59, read up to 9.6e-15, and random 10-20-20-1 s24
# read 1.21e-14 (an answer of 0.077 near the origin, a sum of terms near 1): at the old level of
# 1.2e-14 it went the noisy way and was refused as too expansive for such answers
FLOAT64_LEVEL = 2.5e-14
SECOND_LOOK = 1e-12   # relative noise between FLOAT64_LEVEL and this is measured on a second
                      # line, and the lower reading kept (fidelity.pipeline._noise_floor)
SPOILED = 4.0         # see _segment_noise


@dataclass(frozen=True)
class NoiseFloor:
    """Measured noise of the answers: standard deviation ``absolute + relative * |f|``.

    ``bits`` is the precision this leaves in the answers, ``-log2(sigma / |f|)`` at the worse
    of a typical answer near the origin and one at the far end of a search line; ``float64`` is
    True when the answers are exact to float64 rounding, where the engine keeps its float64
    settings.
    """

    absolute: float
    relative: float
    scale_near: float     # typical |f| near the origin
    scale_far: float      # typical |f| at the far end of a search line
    bits: float
    float64: bool
    queries: int

    @property
    def ratio(self) -> float:
        """The worse relative noise ``sigma / |f|`` of the two measured ends."""
        return float(2.0 ** -self.bits)

    def sigma(self, scale) -> np.ndarray:
        """Noise standard deviation of an answer of size ``scale``."""
        return self.absolute + self.relative * np.asarray(scale)

    @staticmethod
    def exact() -> "NoiseFloor":
        """The float64 regime, assumed without measuring."""
        return NoiseFloor(0.0, EPS, 1.0, 1.0, 52.0, True, 0)


def _segment_noise(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Noise standard deviation from answers ``y (n, k)`` at points ``t`` of a segment (NaN when
    the answers do not change along it: a flat piece, every unit off, shows no rounding), and
    the typical answer size there.

    Each answer is compared with the interpolation of its two neighbours; for an affine piece
    the difference is pure noise, of standard deviation ``sigma sqrt(1 + a^2 + b^2)`` with
    ``a, b`` the interpolation weights. The points are unevenly spaced on purpose: rounding an
    arithmetic progression to a fixed quantum can repeat the same error at every point.

    Each kink inside the segment spoils the two or three deviations beside it. The 0.75
    quantile ignores one kink; where it is more than :data:`SPOILED` times the median's
    estimate, a quarter of the deviations or more stand far above the rest (three kinks in
    the segment near the origin of random 40-20-10-10-1 s54: float64 answers read as 22-bit
    noise, and the victim refused as too expansive for such answers), and the median is
    taken: it ignores up to ten of the 22.
    """
    moving = np.ptp(y, axis=0) > 0
    if not moving.any():
        return float("nan"), float(np.abs(y).max())
    y = y[:, moving]
    a = ((t[2:] - t[1:-1]) / (t[2:] - t[:-2]))[:, None]
    b = 1.0 - a
    dev = np.abs(y[1:-1] - a * y[:-2] - b * y[2:]) / np.sqrt(1 + a ** 2 + b ** 2)
    # the 0.75 quantile of |N(0, s^2)| is 1.15 s; at most two deviations hold a kink
    sigma = float(np.quantile(dev, 0.75) / 1.15)
    typical = float(np.median(dev) / 0.674)   # the median of |N(0, s^2)| is 0.674 s
    if 0 < SPOILED * typical < sigma:
        sigma = typical
    return sigma, float(np.abs(y).max())


def measure(query: Callable[[np.ndarray], np.ndarray], x_near: np.ndarray, x_far: np.ndarray,
            v: np.ndarray, spacing: float, rng: np.random.Generator,
            points: int = 24) -> NoiseFloor:
    """Measures the noise floor on two segments ``x + t_j v`` with ``t_j`` about ``j spacing``.

    Args:
        query: the counting oracle.
        x_near, x_far: segment starts near the origin and far out (``(d,)`` each).
        v: unit direction of both segments.
        spacing: mean distance between neighbouring points (short enough that a segment rarely
            holds a kink, long enough that the answers change by more than their rounding).
        rng: draws the uneven spacing.
        points: answers per segment.
    """
    t = spacing * (np.arange(points) + rng.uniform(-0.3, 0.3, points))
    pts = np.concatenate([x_near + t[:, None] * v, x_far + t[:, None] * v])
    y = query(pts)
    s_near, f_near = _segment_noise(t, y[:points])
    s_far, f_far = _segment_noise(t, y[points:])
    # sigma = a + r |f|, at least what was seen at either end (each estimate comes from ~20
    # numbers: a line through both could put the absolute part near 0 by chance)
    seen = [sv for sv in (s_near, s_far) if np.isfinite(sv)] or [0.0]
    absolute = min(seen)
    rel = float(max((max(seen) - absolute) / max(f_far, f_near, 1e-300), EPS))
    # the worse of the two ends: absolute noise (rounding) weighs most where |f| is small. An
    # answer that cancels to ~0 near the origin still carries the rounding of its terms, whose
    # size the far end shows: |f| is taken as at least 1e-2 of the far answers (as the search does)
    floor = 1e-2 * f_far
    ratio = max((absolute + rel * f) / max(f, floor, 1e-300) for f in (f_near, f_far))
    exact = ratio <= FLOAT64_LEVEL
    if np.isnan(s_near) != np.isnan(s_far):
        # one end flat: its answers are exactly constant (every unit off there), so no absolute
        # noise shows; the other end's deviations are judged against its own answers' size.
        # (Taken as absolute and held against the flat end's smaller answers, float64 rounding
        # at |f| = 44 read as 45-bit noise: random 6-3-2-2-2 s9695 went the noisy way.)
        s, f = (s_far, f_far) if np.isnan(s_near) else (s_near, f_near)
        if s <= FLOAT64_LEVEL * f:
            exact, ratio = True, min(ratio, s / max(f, 1e-300))
    if exact:
        absolute, rel = 0.0, EPS
    bits = float(-np.log2(max(ratio, EPS)))
    return NoiseFloor(absolute=absolute, relative=rel, scale_near=f_near, scale_far=f_far,
                      bits=bits, float64=bool(exact), queries=2 * points)
