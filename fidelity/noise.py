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

# relative noise below this (~54 eps: the estimate of float64 rounding scatters up to ~20 eps) is
# float64 arithmetic, where the float64 defaults apply (their tolerance is 256 eps)
FLOAT64_LEVEL = 1.2e-14


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


def _segment_noise(y: np.ndarray) -> tuple[float, float]:
    """Noise standard deviation from answers ``(n, k)`` at equally spaced points of a segment,
    and the typical answer size there."""
    d2 = np.abs(y[:-2] - 2 * y[1:-1] + y[2:]) / np.sqrt(6.0)       # (n - 2, k)
    # the 0.75 quantile of |N(0, s^2)| is 1.15 s; at most two second differences hold a kink
    sigma = float(np.quantile(d2, 0.75) / 1.15)
    scale = float(np.abs(y).max())
    return sigma, scale


def measure(query: Callable[[np.ndarray], np.ndarray], x_near: np.ndarray, x_far: np.ndarray,
            v: np.ndarray, spacing: float, points: int = 24) -> NoiseFloor:
    """Measures the noise floor on two segments ``x + j spacing v``, ``j < points``.

    Args:
        query: the counting oracle.
        x_near, x_far: segment starts near the origin and far out (``(d,)`` each).
        v: unit direction of both segments.
        spacing: distance between neighbouring points (short enough that a segment rarely
            holds a kink, long enough that the answers change by more than their rounding).
        points: answers per segment.
    """
    j = np.arange(points)[:, None]
    pts = np.concatenate([x_near + j * spacing * v, x_far + j * spacing * v])
    y = query(pts)
    s_near, f_near = _segment_noise(y[:points])
    s_far, f_far = _segment_noise(y[points:])
    # sigma = a + r |f| through the two segments (noise never shrinks as |f| grows)
    rel = max(s_far - s_near, 0.0) / max(f_far - f_near, 1e-300) if f_far > f_near else 0.0
    absolute = max(s_near - rel * f_near, 0.0)
    rel = float(max(rel, EPS))
    # the worse of the two ends: absolute noise (rounding) weighs most where |f| is small. An
    # answer that cancels to ~0 near the origin still carries the rounding of its terms, whose
    # size the far end shows: |f| is taken as at least 1e-2 of the far answers (as the search does)
    floor = 1e-2 * f_far
    ratio = max((absolute + rel * f) / max(f, floor, 1e-300) for f in (f_near, f_far))
    exact = ratio <= FLOAT64_LEVEL
    if exact:
        absolute, rel = 0.0, EPS
    bits = float(-np.log2(max(ratio, EPS)))
    return NoiseFloor(absolute=absolute, relative=rel, scale_near=f_near, scale_far=f_far,
                      bits=bits, float64=bool(exact), queries=2 * points)
