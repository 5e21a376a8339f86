"""The hidden layers recovered so far, and the bent geometry they answer.

Layer ``l`` computes ``z_l = W_l h_{l-1} + b_l`` with ``h_0 = x`` and ``h_l = relu(z_l)``. Every
layer but the last is *signed* (its rows are oriented so that the unit is on where ``z > 0``); the
last may still be *pending*: its rows are known up to the sign of each, which is all its kinks
need (``z = 0`` either way). A layer-1 boundary is a hyperplane; a deeper unit's bends wherever
an earlier unit switches. Along a line every ``z_l`` is piecewise linear in ``t`` with breaks at
the earlier layers' kinks, so the kinks of all known units follow layer by layer, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .network import ReLUNetwork


CROSSED_BLOCK = 1 << 22   # numbers of one layer's outputs Layered.crossed holds at once


@dataclass(frozen=True)
class Layered:
    """Known hidden layers ``(W_l, b_l)``, all signed but possibly the last."""

    weights: tuple
    biases: tuple

    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def widths(self) -> tuple:
        return tuple(w.shape[0] for w in self.weights)

    def appended(self, w: np.ndarray, b: np.ndarray) -> "Layered":
        return Layered(self.weights + (w,), self.biases + (b,))

    def signed(self, signs: np.ndarray) -> "Layered":
        """The last layer's rows multiplied by ``signs`` (+-1 each)."""
        s = np.asarray(signs, np.float64)
        return Layered(self.weights[:-1] + (self.weights[-1] * s[:, None],),
                       self.biases[:-1] + (self.biases[-1] * s,))

    def preacts(self, x: np.ndarray, upto: Optional[int] = None) -> list:
        """``[z_1, ..., z_L]`` at the rows of ``x`` (each ``(n, h_l)``), or ``[z_1, ...,
        z_upto]`` (the same numbers; the later layers are not computed)."""
        h, out = np.atleast_2d(x), []
        for w, b in zip(self.weights[:upto], self.biases[:upto]):
            z = h @ w.T + b
            out.append(z)
            h = np.maximum(z, 0.0)
        return out

    def jacobian(self, p: np.ndarray, layer: int) -> np.ndarray:
        """``(h_layer, d)`` the derivative of ``z_layer`` (1-based) at the point ``p``."""
        zs = self.preacts(p[None], layer - 1)
        jac = self.weights[0]
        for l in range(1, layer):
            jac = self.weights[l] @ (jac * (zs[l - 1][0] > 0)[:, None])
        return jac

    def kinks(self, x0: np.ndarray, v: np.ndarray, t_max: float):
        """Where the known units switch on ``x0 + t v``, ``|t| < t_max``: ``(t, layer, unit)``
        sorted by ``t`` (``layer`` 1-based)."""
        pts = np.array([-t_max, t_max])
        ts, layers, units = [np.zeros(0)], [np.zeros(0, int)], [np.zeros(0, int)]
        for l in range(self.depth):
            t, iu, _ = crossings(pts, self.preacts(x0 + pts[:, None] * v, l + 1)[l])
            ts.append(t)
            layers.append(np.full(t.size, l + 1))
            units.append(iu)
            pts = np.sort(np.concatenate([pts, t]))
        t, layer, unit = (np.concatenate(a) for a in (ts, layers, units))
        order = np.argsort(t)
        return t[order], layer[order], unit[order]

    def crossed(self, x0: np.ndarray, v: np.ndarray, t_max: float, unit: int,
                near: float = 1e-9) -> np.ndarray:
        """Which of many lines ``x0 + t v`` (``(n, d)`` each), ``|t| < t_max``, the last
        layer's ``unit`` may cross: it crosses between two of the earlier layers' kinks, or
        comes within ``near`` of 0 relative to its largest value there. All lines at once,
        layer by layer (each line's points padded with inf), ``z_1`` taken as ``W x0 + b +
        t W v``: the rounding is not :meth:`kinks`'s, so a line it passes is to be read
        with :meth:`kinks`; a line it rules out has no crossing there. Lines go in blocks of
        about :data:`CROSSED_BLOCK` numbers per layer's outputs, with each line's points
        guessed at twice the units."""
        n = x0.shape[0]
        block = max(1, CROSSED_BLOCK // (max(self.widths) * (2 + 2 * sum(self.widths))))
        if n > block:
            return np.concatenate([self.crossed(x0[i:i + block], v[i:i + block], t_max, unit,
                                                near) for i in range(0, n, block)])
        a, c = x0 @ self.weights[0].T + self.biases[0], v @ self.weights[0].T
        pts = np.tile(np.array([-t_max, t_max]), (n, 1))
        for l in range(self.depth):
            ok = np.isfinite(pts)
            z = a[:, None, :] + np.where(ok, pts, 0.0)[:, :, None] * c[:, None, :]
            for w, b in zip(self.weights[1:l + 1], self.biases[1:l + 1]):
                z = np.maximum(z, 0.0) @ w.T + b
            if l == self.depth - 1:
                z = np.where(ok, z[:, :, unit], np.nan)
                big = np.nanmax(np.abs(z), 1)
                return ((z[:, :-1] * z[:, 1:] < 0).any(1)
                        | (np.nanmin(np.abs(z), 1) <= near * big))
            pair = np.zeros(pts.shape, bool)              # the lines' points one after
            pair[:, :-1] = ok[:, :-1] & ok[:, 1:]          # another, pairs on one line
            t, _, at = crossings(pts.ravel(), z.reshape(-1, z.shape[2]), pair.ravel()[:-1])
            if not t.size:
                continue
            r = at // pts.shape[1]
            rank = np.arange(r.size) - np.searchsorted(r, r)        # r is sorted (nonzero)
            more = np.full((n, int(rank.max()) + 1), np.inf)
            more[r, rank] = t
            pts = np.sort(np.concatenate([pts, more], 1), 1)
        return np.zeros(n, bool)

    def network(self, out_w: np.ndarray, out_b: np.ndarray) -> ReLUNetwork:
        """The ReLU network of these layers (all signed) and the output layer."""
        return ReLUNetwork(list(self.weights) + [out_w], list(self.biases) + [out_b])


def crossings(pts: np.ndarray, z: np.ndarray, pair: Optional[np.ndarray] = None) -> tuple:
    """``(t, unit, piece)``: where each column of ``z``, linear between the sorted ``pts`` it is
    given at, changes sign, and the index of the point before. ``pair``: which consecutive
    points to look between (all when None; several lines' points one after another keep only
    the pairs on one line)."""
    za, zb = z[:-1], z[1:]
    ia, iu = np.nonzero((za * zb < 0) if pair is None else (za * zb < 0) & pair[:, None])
    frac = za[ia, iu] / (za[ia, iu] - zb[ia, iu])
    return pts[ia] + frac * (pts[ia + 1] - pts[ia]), iu, ia
