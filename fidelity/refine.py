"""Stage 4 (float64): refine recovered rows without new queries.

A coordinate probe ``p + s e_i`` that crosses some hyperplane corrupts entry ``i`` of its region's
gradient. Given the current network, the part of each answered probe that comes from crossings
is computable; subtracting it and refitting converges to the exact gradients (the correction's
error is the network's error times the overshoot, so each pass shrinks it).
"""

from __future__ import annotations

import numpy as np

from .recover import Regions


def crossing_correction(regions: Regions, w: np.ndarray, b: np.ndarray, a2: np.ndarray,
                        max_elems: int = 1 << 23) -> tuple[np.ndarray, np.ndarray]:
    """Crossing terms of the probes, and how exposed each region is to their errors.

    Returns:
        ``(R, d, k)``: per probe, ``N(q) - N(p) - s * grad N(p) e_i`` for network
        ``(w, b, a2)``: zero for probes that stay in their region, the crossing terms otherwise;
        ``(R,)``: ``(1 + |p|) max_i sum_m |a_m| [probe i crosses m] / s_rms``, the gradient error a
        relative error of one in the crossed units' rows would leave (scale it by their
        precision).
    """
    n_reg, d = regions.base.shape
    h = w.shape[0]
    k = a2.shape[0]
    out = np.zeros((n_reg, d, k))
    exposure = np.zeros(n_reg)
    if h == 0 or n_reg == 0:
        return out, exposure
    a_size = np.abs(a2).max(0)                               # (h,)
    chunk = max(1, max_elems // max(1, d * h))
    wt = w.T  # (d, h)
    for start in range(0, n_reg, chunk):
        base = regions.base[start:start + chunk]
        s = regions.step[start:start + chunk]
        z = base @ wt + b                                    # (r, h)
        dz = s[:, :, None] * wt[None]                        # (r, d, h)
        zq = z[:, None, :] + dz
        cross = (zq > 0) != (z > 0)[:, None, :]
        if not cross.any():
            continue
        extra = np.maximum(zq, 0) - np.maximum(z, 0)[:, None, :] - (z > 0)[:, None, :] * dz
        out[start:start + chunk] = np.where(cross, extra, 0.0) @ a2.T
        exposure[start:start + chunk] = ((cross @ a_size).max(1)
                                         * (1 + np.linalg.norm(base, axis=1))
                                         * np.sqrt(np.mean(s ** -2.0, axis=1)))
    return out, exposure
