"""Stage 2: first-layer rows, up to sign and scale, from finite-difference gradients of regions.

Between consecutive kinks on a line the victim is affine, ``f(x) = G x + e``. One gradient per
linear region (``d + 1`` queries) serves both neighbouring kinks: across kink ``i`` the affine map
jumps by the rank-one ``c_i [w_i, b_i]``. Finite differences of a piecewise-linear function have
no truncation error, so the step is as large as the region allows and the only error is rounding.

Initial rows come from the jumps; then all regions of all lines are fitted at once by weighted
least squares in the *unsigned* model ``[G_j, e_j] = sum_l c_l m_l(p_j) r_l + [L, u]`` where
``m_l`` is the side of hyperplane ``r_l`` that the base point is on and ``[L, u]`` absorbs the
affine term left by rows of the wrong sign (resolved in :mod:`fidelity.solve`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import scipy.linalg

from .errors import QueryBudgetExceeded
from .search import EPS


@dataclass(frozen=True)
class Regions:
    """Finite-difference measurements of linear regions (``R`` regions, input ``d``, output ``k``)."""

    base: np.ndarray      # (R, d) base points
    step: np.ndarray      # (R, d) signed step of each coordinate probe ((R,) is broadcast)
    f_base: np.ndarray    # (R, k)
    f_probe: np.ndarray   # (R, d, k): f(base + step e_i)
    line: np.ndarray      # (R,) index of the line the region lies on
    t_lo: np.ndarray      # (R,) region bounds along its line
    t_hi: np.ndarray

    def __post_init__(self):
        step = np.asarray(self.step, np.float64)
        if step.ndim == 1:
            object.__setattr__(self, "step", np.repeat(step[:, None], self.base.shape[1], 1))

    @property
    def size(self) -> int:
        return self.base.shape[0]

    def affine(self, correction: Optional[np.ndarray] = None) -> np.ndarray:
        """``[G_j, e_j]`` per region, ``(R, k, d + 1)``; ``correction`` (R, d, k) is subtracted
        from the probe differences first (see :func:`fidelity.refine.crossing_correction`)."""
        diff = self.f_probe - self.f_base[:, None, :]
        if correction is not None:
            diff = diff - correction
        g = np.transpose(diff, (0, 2, 1)) / self.step[:, None, :]
        e = self.f_base - np.einsum("rkd,rd->rk", g, self.base)
        return np.concatenate([g, e[:, :, None]], axis=2)

    def scale(self) -> np.ndarray:
        """``(R,)`` largest answer magnitude per region (sets its rounding-noise level)."""
        return np.maximum(np.abs(self.f_base).max(1), np.abs(self.f_probe).max((1, 2)))

    def step_rms(self) -> np.ndarray:
        """``(R,)`` the one step that would give each region's RMS rounding noise."""
        return 1.0 / np.sqrt(np.mean(self.step ** -2.0, axis=1))

    def weights(self) -> np.ndarray:
        """Least-squares weight per region: inverse of its rounding-noise level."""
        return self.step_rms() / np.maximum(self.scale(), 1e-300)

    def replace(self, sel: np.ndarray, other: "Regions") -> "Regions":
        """A copy with regions ``sel`` replaced by ``other`` (same order)."""
        fields = {}
        for f in Regions.__dataclass_fields__:
            arr = getattr(self, f).copy()
            arr[sel] = getattr(other, f)
            fields[f] = arr
        return Regions(**fields)

    @staticmethod
    def concat(parts: list["Regions"]) -> "Regions":
        return Regions(*(np.concatenate([getattr(p, f) for p in parts])
                         for f in Regions.__dataclass_fields__))


def plan_regions(kinks_t: np.ndarray, t_max: float, step_frac: float, step_max: float):
    """Region bounds, midpoints and steps on one line with sorted kinks ``kinks_t``."""
    bounds = np.concatenate([[-t_max], kinks_t, [t_max]])
    lo, hi = bounds[:-1], bounds[1:]
    mid = 0.5 * (lo + hi)
    step = np.minimum(step_frac * 0.5 * (hi - lo), step_max)
    return lo, hi, mid, step


def measure_regions(query: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, v: np.ndarray,
                    line_idx: int, lo, hi, mid, step, *, remaining: Optional[int],
                    chunk_rows: int = 1 << 16) -> tuple[Regions, bool]:
    """Measures the gradient of each region; stops early (second value False) when the budget
    would not cover the next region."""
    base = x0[None, :] + np.asarray(mid)[:, None] * v[None, :]
    line = np.full(base.shape[0], line_idx)
    return measure_points(query, base, step, line, lo, hi, remaining=remaining,
                          chunk_rows=chunk_rows)


def measure_points(query: Callable[[np.ndarray], np.ndarray], base: np.ndarray,
                   step: np.ndarray, line: np.ndarray, lo, hi, *, remaining: Optional[int],
                   chunk_rows: int = 1 << 16) -> tuple[Regions, bool]:
    """Gradients at given base points (``d + 1`` queries each), as :class:`Regions`; stops early
    (second value False) when the budget would not cover the next point."""
    n, d = base.shape
    per = d + 1
    n_ok = n if remaining is None else min(n, remaining // per)
    base = base[:n_ok]
    step = np.asarray(step, np.float64)[:n_ok]
    if step.ndim == 1:
        step = np.repeat(step[:, None], d, 1)
    f_base, f_probe = [], []
    chunk = max(1, chunk_rows // per)
    eye = np.eye(d)
    for start in range(0, n_ok, chunk):
        b = base[start:start + chunk]
        s = step[start:start + chunk]
        pts = np.concatenate([b[:, None, :], b[:, None, :] + s[:, :, None] * eye[None]], 1)
        y = query(pts.reshape(-1, d)).reshape(b.shape[0], per, -1)
        f_base.append(y[:, 0])
        f_probe.append(y[:, 1:])
    k = f_base[0].shape[1] if f_base else 0
    regions = Regions(
        base=base, step=step.copy(),
        f_base=np.concatenate(f_base) if f_base else np.zeros((0, k)),
        f_probe=np.concatenate(f_probe) if f_probe else np.zeros((0, d, k)),
        line=np.asarray(line)[:n_ok].copy(), t_lo=np.asarray(lo)[:n_ok].copy(),
        t_hi=np.asarray(hi)[:n_ok].copy())
    return regions, n_ok == n


@dataclass(frozen=True)
class Jump:
    row: np.ndarray      # (d + 1,) [w, b] with |w| = 1
    coef: np.ndarray     # (k,)
    rank_ratio: float    # second / first singular value of the jump (0 for an exact rank one)
    line: int
    t: float


def jumps_to_rows(aff_left: np.ndarray, aff_right: np.ndarray, v: np.ndarray,
                  line: int, t: np.ndarray, noise: np.ndarray) -> list[Jump]:
    """Rows from the jumps ``aff_right - aff_left`` (each ``(n, k, d + 1)``) across kinks.

    The row is oriented so that its unit normal points along ``v`` (the unit turns on moving
    right); jumps at the rounding-noise level are dropped as spurious kinks.
    """
    out = []
    d = v.shape[0]
    for i in range(aff_left.shape[0]):
        jump = aff_right[i] - aff_left[i]
        if np.abs(jump[:, :d]).max() <= noise[i]:
            continue
        _, sv, vt = np.linalg.svd(jump, full_matrices=False)
        r = vt[0]
        norm = np.linalg.norm(r[:d])
        r = r / norm
        if r[:d] @ v < 0:
            r = -r
        coef = jump @ r / (r @ r)
        ratio = float(sv[1] / sv[0]) if sv.size > 1 else 0.0
        out.append(Jump(row=r, coef=coef, rank_ratio=ratio, line=line, t=float(t[i])))
    return out


def masks(rows: np.ndarray, regions: Regions, unit_line: np.ndarray,
          unit_t: np.ndarray) -> np.ndarray:
    """``(R, h)`` booleans: which side of each hyperplane the region base points lie on.

    On the line where a unit's kink was found the side is known without its row (right of the
    kink is the "on" side, by the orientation of :func:`jumps_to_rows`); a row still carrying
    crossing errors must not be trusted for those regions.
    """
    m = regions.base @ rows[:, :-1].T + rows[:, -1] > 0
    mid = 0.5 * (regions.t_lo + regions.t_hi)
    same = regions.line[:, None] == unit_line[None, :]
    return np.where(same, mid[:, None] > unit_t[None, :], m)


def fit_rows(aff: np.ndarray, weight: np.ndarray, m: np.ndarray, coef: np.ndarray,
             bias_scale: Optional[np.ndarray] = None, iters: int = 3):
    """Weighted least squares for rows and coefficients in the unsigned model.

    Args:
        aff: ``(R, k, d + 1)`` region affine maps.
        weight: ``(R,)`` per-region weights: inverse noise of the gradient entries.
        m: ``(R, h)`` region masks.
        coef: ``(h, k)`` initial output coefficients.
        bias_scale: ``(R,)`` how much noisier each region's intercept is than its gradient
            entries (``e = f(p) - G p`` carries ``|p|`` times the gradient noise); the bias
            column is solved with weights ``weight / bias_scale``, so that biases come from the
            regions nearest the origin.

    Returns:
        rows ``(h, d + 1)`` with unit-norm ``w`` parts, coefficients ``(h, k)``, the affine term
        ``(k, d + 1)``, the weighted residual per region ``(R,)``, and the standard errors
        ``(h, 3)`` of each normalised row's ``w`` entries, its bias and its coefficients (LS
        covariance).
    """
    n_reg, k, dp1 = aff.shape
    h = m.shape[1]
    om = weight[:, None]
    ob = om if bias_scale is None else om / bias_scale[:, None]
    rhs = (aff * om[:, :, None]).reshape(n_reg * k, dp1)
    rhs_b = (aff[:, :, -1] * ob).reshape(n_reg * k)
    eye_k = np.eye(k)
    mf = m.astype(np.float64)
    for _ in range(iters):
        design = np.concatenate([
            (mf[:, None, :] * coef.T[None, :, :]),           # (R, k, h)
            np.broadcast_to(eye_k[None], (n_reg, k, k)),
        ], axis=2)
        dw = (design * om[:, :, None]).reshape(n_reg * k, h + k)
        db = dw if bias_scale is None else (design * ob[:, :, None]).reshape(n_reg * k, h + k)
        sol = _lstsq(dw, rhs)
        if bias_scale is not None:
            sol[:, -1] = _lstsq(db, rhs_b[:, None])[:, 0]
        rows, aff0 = sol[:h], sol[h:]
        norm = np.linalg.norm(rows[:, :-1], axis=1)
        norm = np.where(norm > 0, norm, 1.0)
        rows = rows / norm[:, None]
        coef = coef * norm[:, None]
        # coefficients given rows: normal equations (R R^T) * (M^T W^2 M), one output at a time
        gram = (rows @ rows.T) * (mf.T @ (mf * om ** 2))
        resid = aff - aff0[None]                               # (R, k, d + 1)
        proj = (resid.reshape(-1, dp1) @ rows.T).reshape(n_reg, k, h)   # one GEMM
        rhs_c = np.einsum("rh,rkh->hk", mf * om ** 2, proj, optimize=True)
        try:
            coef = np.linalg.solve(gram, rhs_c)
        except np.linalg.LinAlgError:
            coef, *_ = np.linalg.lstsq(gram, rhs_c, rcond=None)
    model = ((mf[:, None, :] * coef.T[None]).reshape(-1, h) @ rows).reshape(n_reg, k, dp1) \
        + aff0[None]
    resid = np.abs((aff - model) * weight[:, None, None]).max((1, 2))
    try:   # coefficients: the normal matrix of their last solve
        sig_c = np.sqrt(np.maximum(np.diag(np.linalg.inv(gram)), 0.0))
    except np.linalg.LinAlgError:
        sig_c = np.full(h, np.inf)
    sig_w = _std_errors(dw, h) / norm
    sig_b = sig_w if bias_scale is None else _std_errors(db, h) / norm
    sigma = np.stack([sig_w, sig_b, sig_c], 1)
    return rows, coef, aff0, resid, sigma


def _lstsq(a: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Least squares by Householder QR (many right-hand sides at once); SVD if rank-deficient."""
    if a.shape[0] >= a.shape[1]:
        q, r = np.linalg.qr(a)
        diag = np.abs(np.diag(r))
        if diag.size and diag.min() > 1e-13 * diag.max():
            return scipy.linalg.solve_triangular(r, q.T @ rhs)
    return np.linalg.lstsq(a, rhs, rcond=None)[0]


def _std_errors(design: np.ndarray, h: int) -> np.ndarray:
    """Standard errors of the first ``h`` unknowns of a unit-noise weighted LS design."""
    try:
        cov = np.diag(np.linalg.inv(design.T @ design))[:h]
    except np.linalg.LinAlgError:
        return np.full(h, np.inf)
    return np.sqrt(np.maximum(cov, 0.0))
