"""Stage 4 (float64): refine recovered rows without new queries.

A coordinate probe ``p + s e_i`` that crosses some hyperplane corrupts entry ``i`` of its region's
gradient. Given the current network, the part of each answered probe that comes from crossings
is computable; subtracting it and refitting converges to the exact gradients (the correction's
error is the network's error times the overshoot, so each pass shrinks it).
"""

from __future__ import annotations

import numpy as np

from .recover import Regions


def crossing_correction(regions: Regions, w: np.ndarray, b: np.ndarray,
                        a2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    w_inf = np.abs(w).max(1)                                 # (h,)
    z_all = regions.base @ w.T + b                           # (R, h)
    s_max = np.abs(regions.step).max(1)                      # (R,)
    s_rms = np.sqrt(np.mean(regions.step ** -2.0, axis=1))
    p_norm = 1 + np.linalg.norm(regions.base, axis=1)
    # a probe of region r can only cross unit m when |z_m| < max_i |s_ri w_mi|
    near = np.abs(z_all) < s_max[:, None] * w_inf[None, :]
    for r in np.flatnonzero(near.any(1)):
        cand = np.flatnonzero(near[r])
        z = z_all[r, cand]                                   # (c,)
        dz = regions.step[r][:, None] * w[cand].T            # (d, c)
        zq = z[None, :] + dz
        on = z > 0
        cross = (zq > 0) != on[None, :]
        if not cross.any():
            continue
        extra = np.maximum(zq, 0) - np.maximum(z, 0)[None, :] - on[None, :] * dz
        out[r] = np.where(cross, extra, 0.0) @ a2[:, cand].T
        exposure[r] = (cross @ a_size[cand]).max() * p_norm[r] * s_rms[r]
    return out, exposure


def diagonal_crosses(regions: Regions, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(R,)`` True where a region's diagonal probe ``p + s / sqrt(d)`` (see
    :func:`fidelity.recover.common_mode`) crosses one of the hyperplanes ``(w, b)``. Its
    crossing term cannot be subtracted as the coordinate probes' are: that term is ~1e-2 of
    ``f`` and the rows ~1e-10 relative, which leaves 1e-12, against the ~1e-14 to be read (the
    digits demo: 7 of 35 diagonal probes cross)."""
    n_reg, d = regions.base.shape
    if w.shape[0] == 0 or n_reg == 0:
        return np.zeros(n_reg, bool)
    z = regions.base @ w.T + b
    zq = z + (regions.step / np.sqrt(d)) @ w.T
    return ((z > 0) != (zq > 0)).any(1)
