"""Where a model's units switch: the geometric questions the stages ask of the current model.

Stages never compute a boundary themselves; they ask the model's :class:`Geometry`:

* :meth:`~Geometry.kinks`: where does each unit switch along the line ``x0 + t v``?
* :meth:`~Geometry.safe_steps`: which coordinate steps from ``p`` cross no boundary?
* :meth:`~Geometry.boundary_point`: a point on unit ``i``'s boundary, and how far one may move
  along its normal before meeting another boundary.

A one-hidden-layer model answers them with hyperplanes (:class:`Hyperplanes`); a deeper model
can answer the same questions with boundaries that bend, and the stages stay as they are.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


def step_rms(steps: np.ndarray) -> np.ndarray:
    """The one step with the same RMS rounding noise as coordinate ``steps`` (last axis): the
    harmonic-quadratic mean ``1 / sqrt(mean(s^-2))`` (the smallest steps dominate)."""
    return 1.0 / np.sqrt(np.mean(np.asarray(steps) ** -2.0, axis=-1))


class Geometry(Protocol):
    """The questions a model answers about its units' boundaries."""

    def kinks(self, x0: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``(h,)`` where each unit switches on the line ``x0 + t v`` (inf/NaN: never)."""

    def safe_steps(self, p: np.ndarray, cap: float) -> np.ndarray:
        """``(d,)`` signed coordinate steps from ``p`` that cross no boundary, at most ``cap``."""

    def boundary_point(self, i: int, xr: np.ndarray, cap: float) -> tuple[np.ndarray, float]:
        """A point of unit ``i``'s boundary near ``xr``, and half the distance along its normal
        to the nearest other boundary (at most ``cap``)."""


class Hyperplanes:
    """The geometry of a one-hidden-layer model: unit ``i`` switches on ``w_i . x + b_i = 0``.

    Args:
        w: ``(h, d)`` rows; :meth:`boundary_point` takes them to have unit norm.
        b: ``(h,)`` biases.
    """

    def __init__(self, w: np.ndarray, b: np.ndarray):
        self.w, self.b = w, b

    @classmethod
    def of_rows(cls, rows: np.ndarray) -> "Hyperplanes":
        """From ``(h, d + 1)`` rows ``[w, b]``."""
        return cls(rows[:, :-1], rows[:, -1])

    def select(self, units) -> "Hyperplanes":
        """The geometry of ``units`` alone (in that order)."""
        units = np.asarray(units, int)
        return Hyperplanes(self.w[units], self.b[units])

    def without(self, units) -> "Hyperplanes":
        """The same geometry with ``units`` left out."""
        return self.select(np.setdiff1d(np.arange(self.w.shape[0]), np.asarray(units, int)))

    def kinks(self, x0: np.ndarray, v: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return -(self.w @ x0 + self.b) / (self.w @ v)

    def safe_steps(self, p: np.ndarray, cap: float, frac: float = 0.5) -> np.ndarray:
        """Per coordinate the side with the farther hyperplane (either, when both are beyond
        ``cap / frac``), ``frac`` of the way to it, at most ``cap``.

        Coordinate ``i`` meets plane ``m`` at ``-z_m / w_mi``; only planes with
        ``|z_m| < (cap / frac) max_i |w_mi|`` can come nearer than ``cap / frac`` (at
        784-1024-10 a sixth of them), and the nearest one on each side is
        ``1 / max_m (-+ w_mi / z_m)``.
        """
        w = self.w
        if not w.shape[0]:
            return np.full(p.shape[0], cap)
        z = w @ p + self.b
        near = (np.abs(z) < (cap / frac) * np.abs(w).max(1)) & (z != 0)
        q = w[near] / z[near, None]                      # (c, d): -1 / (where e_i meets m)
        with np.errstate(divide="ignore"):
            fwd = 1.0 / np.maximum(-q, 0.0).max(0, initial=0.0)
            back = 1.0 / np.maximum(q, 0.0).max(0, initial=0.0)
        return np.where(fwd >= back, 1.0, -1.0) * np.minimum(frac * np.maximum(fwd, back), cap)

    def boundary_point(self, i: int, xr: np.ndarray, cap: float) -> tuple[np.ndarray, float]:
        w, b = self.w, self.b
        xs = xr - (w[i] @ xr + b[i]) * w[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            along = np.abs((w @ xs + b) / (w @ w[i]))
        along[i] = np.inf
        return xs, 0.5 * min(np.nanmin(along), cap)
