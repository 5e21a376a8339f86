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
    # (R, k): f(base + step / sqrt(d)), every coordinate moved at once (NaN where not asked):
    # it reads the rounding that the d differences share (see :func:`common_mode`)
    f_diag: Optional[np.ndarray] = None

    def __post_init__(self):
        step = np.asarray(self.step, np.float64)
        if step.ndim == 1:
            object.__setattr__(self, "step", np.repeat(step[:, None], self.base.shape[1], 1))
        if self.f_diag is None:
            object.__setattr__(self, "f_diag", np.full(np.shape(self.f_base), np.nan))

    @property
    def size(self) -> int:
        return self.base.shape[0]

    def affine(self, correction: Optional[np.ndarray] = None,
               common: Optional[np.ndarray] = None) -> np.ndarray:
        """``[G_j, e_j]`` per region, ``(R, k, d + 1)``; ``correction`` (R, d, k) is subtracted
        from the probe differences first (see :func:`fidelity.refine.crossing_correction`),
        and ``common`` (R, k), the rounding that all ``d`` differences of a region share
        (:func:`common_mode`), is taken out of them."""
        f_base = self.f_base if common is None else self.f_base + common
        diff = self.differences(correction, f_base)
        g = np.transpose(diff, (0, 2, 1)) / self.step[:, None, :]
        e = f_base - np.einsum("rkd,rd->rk", g, self.base)
        return np.concatenate([g, e[:, :, None]], axis=2)

    def differences(self, correction: Optional[np.ndarray] = None,
                    f_base: Optional[np.ndarray] = None) -> np.ndarray:
        """``(R, d, k)`` each probe's answer minus its region's base answer (``f_base``, by
        default the one measured), less ``correction`` (R, d, k) where given."""
        diff = self.f_probe - (self.f_base if f_base is None else f_base)[:, None, :]
        return diff if correction is None else diff - correction

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

    def select(self, keep: np.ndarray) -> "Regions":
        """The regions ``keep`` (a mask or indices)."""
        return Regions(*(getattr(self, f)[keep] for f in Regions.__dataclass_fields__))

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
                    chunk_rows: int = 1 << 16, diagonal: bool = True) -> tuple[Regions, bool]:
    """Measures the gradient of each region; stops early (second value False) when the budget
    would not cover the next region."""
    base = x0[None, :] + np.asarray(mid)[:, None] * v[None, :]
    line = np.full(base.shape[0], line_idx)
    return measure_points(query, base, step, line, lo, hi, remaining=remaining,
                          chunk_rows=chunk_rows, diagonal=diagonal)


# inputs at least this wide get the diagonal probe (:func:`common_mode`): it reads the
# rounding a region's gradient entries share to ~sqrt(2 / d) of an answer's, for one query in
# d + 2 (on narrower inputs the reading is weak and the query dear)
DIAGONAL_MIN_D = 128


def region_queries(d: int, diagonal: bool = True) -> int:
    """Queries per measured region: ``d + 1``, and the diagonal probe where ``diagonal`` and
    ``d >= DIAGONAL_MIN_D``."""
    return d + 1 + int(diagonal and d >= DIAGONAL_MIN_D)


def common_mode(regions: Regions, correction: Optional[np.ndarray],
                tol: np.ndarray) -> np.ndarray:
    """``(R, k)`` the rounding that every gradient entry of a region shares, read from its
    diagonal probe, in the units of ``f`` (add it to ``f_base``); 0 where there is no diagonal
    probe or where the reading exceeds ``tol`` (``(R,)``: a probe that crossed a hyperplane;
    set it to 0 for regions whose probes are known to cross).

    Entry ``i`` of a gradient is ``(f(p + s_i e_i) - f(p)) / s_i``; its rounding ``eps_i - eps_0``
    has a part ``c`` common to all ``i`` (the roundings of nearby answers are correlated, so
    ``c`` is not ``-eps_0``: a third of it on the digits demo). The least-squares fit takes it
    for independent noise, but it lies along one direction, and the rows of trained 784-wide
    victims have entries of one sign (``|sum_i w_i|`` up to 20), so it sets their output
    weights. The diagonal probe ``f(p + s / sqrt(d))`` answers ``f(p) + G s / sqrt(d)``; the
    differences, summed over ``sqrt(d)``, predict it with ``sqrt(d) c`` more, so ``c`` comes out
    to ``(eps_diag - eps_0) / sqrt(d)`` (the demo: 4.5x smaller)."""
    R, k = regions.f_base.shape
    d = regions.base.shape[1]
    if d < 2:
        return np.zeros((R, k))
    diff = regions.differences(correction)                       # (R, d, k)
    seen = regions.f_diag - regions.f_base
    common = (diff.sum(1) / np.sqrt(d) - seen) / np.sqrt(d)
    ok = np.isfinite(common) & (np.abs(common) <= np.asarray(tol)[:, None])
    return np.where(ok, common, 0.0)


def measure_points(query: Callable[[np.ndarray], np.ndarray], base: np.ndarray,
                   step: np.ndarray, line: np.ndarray, lo, hi, *, remaining: Optional[int],
                   chunk_rows: int = 1 << 16, diagonal: bool = True) -> tuple[Regions, bool]:
    """Gradients at given base points (:func:`region_queries` each: ``d + 1``, and the diagonal
    probe on wide inputs unless ``diagonal`` is False), as :class:`Regions`; stops early
    (second value False) when the budget would not cover the next point."""
    n, d = base.shape
    per = region_queries(d, diagonal)
    diagonal = per == d + 2
    n_ok = n if remaining is None else min(n, remaining // per)
    base = base[:n_ok]
    step = np.asarray(step, np.float64)[:n_ok]
    if step.ndim == 1:
        step = np.repeat(step[:, None], d, 1)
    f_base, f_probe, f_diag = [], [], []
    chunk = max(1, chunk_rows // per)
    coord = np.arange(d)
    for start in range(0, n_ok, chunk):
        b = base[start:start + chunk]
        s = step[start:start + chunk]
        pts = np.empty((b.shape[0], per, d))            # the base, then probe i moves entry i
        pts[:] = b[:, None, :]                          # (8x faster than np.repeat here)
        pts[:, coord + 1, coord] += s
        if diagonal:
            pts[:, d + 1] += s / np.sqrt(d)
        y = query(pts.reshape(-1, d)).reshape(b.shape[0], per, -1)
        f_base.append(y[:, 0])
        f_probe.append(y[:, 1:d + 1])
        f_diag.append(y[:, d + 1] if diagonal else np.full_like(y[:, 0], np.nan))
    k = f_base[0].shape[1] if f_base else 0
    regions = Regions(
        base=base, step=step.copy(),
        f_base=np.concatenate(f_base) if f_base else np.zeros((0, k)),
        f_probe=np.concatenate(f_probe) if f_probe else np.zeros((0, d, k)),
        line=np.asarray(line)[:n_ok].copy(), t_lo=np.asarray(lo)[:n_ok].copy(),
        t_hi=np.asarray(hi)[:n_ok].copy(),
        f_diag=np.concatenate(f_diag) if f_diag else np.zeros((0, k)))
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
             bias_scale: Optional[np.ndarray] = None, iters: int = 3, *,
             rows: Optional[np.ndarray] = None, refine_steps: int = 3, residual: bool = True,
             stats: Optional[dict] = None, factors: Optional[dict] = None):
    """Weighted least squares for rows and coefficients in the unsigned model.

    First the *relaxed* model, in which unit ``l`` contributes a free ``(k, d + 1)`` matrix
    ``P_l`` instead of the rank-one ``c_l r_l``: it is linear, its normal matrix
    ``[M, 1]^T W^2 [M, 1]`` of size ``h + 1`` is shared by all ``k (d + 1)`` columns, and one
    factorisation (see :func:`_relaxed_solve`, refined on the data's residual) gives its exact
    least-squares answer; each
    ``P_l`` is then split into ``c_l r_l`` by its top singular pair (for ``k = 1`` this is the
    unsigned model's own least-squares answer; for ``k > 1`` it agrees with it to first order in
    the noise). Then ``iters`` alternations of a row solve (coefficients fixed) and a coefficient
    solve (rows fixed) start from it. Alone, the alternation converges slowly when many units
    are active together: on 784-128-10 twelve of them left rows 1e-10 off even from exact
    data, where the relaxed solve gives 2e-15. From the relaxed answer one alternation is
    enough, and it brings in the rank-one structure, which the relaxed model lacks where two
    units are active in nearly the same regions (twin hyperplanes that only their different
    coefficients tell apart; with exactly the same regions the relaxed solve is singular and
    the alternation starts from ``coef``, as it did before the relaxed solve existed).

    The alternation never forms its design. Region ``r`` contributes the ``k`` design rows
    ``[diag(m_r) coef, I_k]^T``, so the normal matrix is ``(M^T W^2 M) * (coef coef^T)``
    bordered by ``(M^T w^2) coef`` and ``(sum w^2) I_k``: one ``(h, R) x (R, h)`` product per call,
    then ``O(h^2 k)`` per solve, and a Cholesky factor of size ``h + k`` after column
    equilibration. Normal equations square the condition number, so each solve is refined on the
    residual of the data ``aff - model`` (not of the normal equations): the corrected
    semi-normal equations of Bjorck (*Numerical Methods for Least Squares Problems*, SIAM 1996),
    which recover the accuracy of a QR solve once ``cond^2 eps << 1``. An
    ill-conditioned or singular system falls back to the dense QR / SVD solve.

    The data enter through ``R k (d + 1) h`` products only: the moments ``M^T W^2 aff`` (cold
    start) or one residual and its moments per refinement step. With ``rows`` from the previous
    pass of a fixed-point refinement the start is already close, one step suffices, and the
    coefficient solve reuses that step's moments: two such products per call.

    Args:
        aff: ``(R, k, d + 1)`` region affine maps.
        weight: ``(R,)`` per-region weights: inverse noise of the gradient entries.
        m: ``(R, h)`` region masks.
        coef: ``(h, k)`` initial output coefficients.
        bias_scale: ``(R,)`` how much noisier each region's intercept is than its gradient
            entries (``e = f(p) - G p`` carries ``|p|`` times the gradient noise); the bias
            column is solved with weights ``weight / bias_scale``, so that biases come from the
            regions nearest the origin.
        iters: alternations of the row solve and the coefficient solve.
        rows: ``(h, d + 1)`` rows matching ``coef``: their orientation is kept, and (when the
            relaxed solve is singular and ``iters == 1``) the alternation starts from them.
        refine_steps: bound on refinement steps per row solve; steps stop once the next
            correction would fall below rounding.
        residual: also return the weighted residual per region (one more ``R k (d + 1) h``
            product; :func:`region_residual` computes it later); ``None`` in its place otherwise.
        stats: when given, ``stats["rank_two"]`` is set to ``(h,)``: each unit's relaxed
            matrix ``P_l``'s second singular value over its noise level (``k > 1``; ``None``
            when the relaxed solve was not used). One unit carrying two neurons whose rows this
            precision cannot separate but whose output weights differ has a rank-two ``P_l``.
        factors: a dict kept between calls whose masks and weights are the same (the error
            estimates' bootstrap refits the same design to new data): the relaxed solve's
            factors are stored in it and reused.

    Returns:
        rows ``(h, d + 1)`` with unit-norm ``w`` parts, coefficients ``(h, k)``, the affine term
        ``(k, d + 1)``, the weighted residual per region ``(R,)`` (or ``None``), and the standard
        errors ``(h, 3)`` of each normalised row's ``w`` entries, its bias and its coefficients
        (LS covariance: the larger of the relaxed model's and the alternation's, which takes the
        coefficients as known and so underestimates when ``k > 1``).
    """
    h = m.shape[1]
    mf = m.astype(np.float64)
    relaxed = _relaxed_fit(aff, weight, mf, coef if rows is None else None, rows, bias_scale,
                           refine_steps, factors)
    if stats is not None:
        stats["rank_two"] = None if relaxed is None else relaxed[4]
    if relaxed is not None:
        rows, coef, _, sigma_relaxed, _ = relaxed
    warm = rows is not None and iters == 1
    full = _Moments(mf, weight ** 2, aff, cold=not warm)
    bias = None if bias_scale is None else _Moments(mf, (weight / bias_scale) ** 2,
                                                    aff[:, :, -1:], cold=True)
    for it in range(iters):
        steps = refine_steps if it == iters - 1 else 0
        sol, chol = full.solve(coef, max(steps, 1) if warm else steps,
                               start=rows if warm else None, judge_last=bias is None)
        # (the bias column alone: its steps are cheap, and its weights make it the worse
        # conditioned of the two)
        sol_b, chol_b = (sol, chol) if bias is None else bias.solve(coef, 4 * steps)
        if bias is not None:
            sol[:, -1] = sol_b[:, 0]
        new_rows, aff0 = sol[:h], sol[h:]
        norm = np.linalg.norm(new_rows[:, :-1], axis=1)
        norm = np.where(norm > 0, norm, 1.0)
        new_rows = new_rows / norm[:, None]
        coef = coef * norm[:, None]
        # coefficients given rows: normal equations (R R^T) * (M^T W^2 M), one output at a time,
        # right-hand side sum_r w_r^2 m_r <aff_r - aff0, row> from the moments already formed
        gram, rhs_c = _coef_normal(full, bias, new_rows, aff0)
        try:
            coef = np.linalg.solve(gram, rhs_c)
        except np.linalg.LinAlgError:
            coef, *_ = np.linalg.lstsq(gram, rhs_c, rcond=None)
    rows = new_rows
    resid = region_residual(aff, weight, m, rows, coef, aff0) if residual else None
    try:   # coefficients: the normal matrix of their last solve
        sig_c = np.sqrt(np.maximum(np.diag(np.linalg.inv(gram)), 0.0))
    except np.linalg.LinAlgError:
        sig_c = np.full(h, np.inf)
    sig_w = chol.std_errors(h) / norm
    sig_b = sig_w if bias is None else chol_b.std_errors(h) / norm
    sigma = np.stack([sig_w, sig_b, sig_c], 1)
    if relaxed is not None:
        sigma = np.maximum(sigma, sigma_relaxed)
    return rows, coef, aff0, resid, sigma


def _coef_normal(full: "_Moments", bias: Optional["_Moments"], rows: np.ndarray,
                 aff0: np.ndarray):
    """Normal matrix ``(h, h)`` and right-hand sides ``(h, k)`` of the coefficients given
    ``rows``. With ``bias`` moments (the bias column's own weights, see :func:`fit_rows`) the
    intercepts enter with those weights, as in the row solve: an intercept ``f(p) - G p``
    carries ``|p|`` times the gradient's noise, and at the gradient's weights the intercepts
    of far regions set the coefficients (the digits demo: 9.4e-11 coefficient error, 1.7e-11
    with the intercepts weighted by their noise; refitted on the victim's exact rows, 9.4e-11
    and 8.6e-12)."""
    if bias is None:
        return ((rows @ rows.T) * full.mwm,
                full.project(rows) - full.msum[:, None] * (rows @ aff0.T))
    grad = rows.copy()
    grad[:, -1] = 0.0
    b = rows[:, -1:]
    gram = (grad @ grad.T) * full.mwm + (b @ b.T) * bias.mwm
    rhs = (full.project(grad) - full.msum[:, None] * (grad @ aff0.T)
           + bias.project(b) - bias.msum[:, None] * (b @ aff0[:, -1:].T))
    return gram, rhs


def _relaxed_fit(aff: np.ndarray, weight: np.ndarray, mf: np.ndarray,
                 coef: Optional[np.ndarray], rows: Optional[np.ndarray],
                 bias_scale: Optional[np.ndarray], steps: int, factors: Optional[dict] = None):
    """The relaxed fit of :func:`fit_rows`: ``(rows, coef, aff0, sigma, rank_two)``, or ``None``
    when its normal matrix is singular or too ill-conditioned for refinement.

    Each split ``P_l = c_l r_l`` keeps the orientation of ``rows`` (or of ``coef`` when no rows
    are given): the masks say which side of each hyperplane is "on", and the row must agree.
    """
    n_reg, k, q = aff.shape
    h = mf.shape[1]
    design = np.concatenate([mf, np.ones((n_reg, 1))], axis=1)
    full = _relaxed_solve(design, weight ** 2, aff.reshape(n_reg, k * q), steps, factors, "full")
    if full is None:
        return None
    sol, chol = full
    sol = sol.reshape(h + 1, k, q)
    chol_b = chol
    if bias_scale is not None:   # the bias column with its own weights (see fit_rows)
        bias = _relaxed_solve(design, (weight / bias_scale) ** 2, aff[:, :, -1], 4 * steps,
                              factors, "bias")
        if bias is None:
            return None
        sol[:, :, -1], chol_b = bias
    mats, aff0 = sol[:h], sol[h]
    _, sv, vt = np.linalg.svd(mats[:, :, :-1], full_matrices=False)
    w = vt[:, 0, :]                                               # (h, d) unit normals
    new_coef = np.einsum("lkd,ld->lk", mats[:, :, :-1], w)
    ref = (np.einsum("ld,ld->l", w, rows[:, :-1]) if rows is not None
           else np.einsum("lk,lk->l", new_coef, coef))
    flip = np.where(ref < 0, -1.0, 1.0)
    w, new_coef = w * flip[:, None], new_coef * flip[:, None]
    size2 = np.maximum(np.einsum("lk,lk->l", new_coef, new_coef), 1e-300)
    b = np.einsum("lk,lk->l", new_coef, mats[:, :, -1]) / size2
    size = np.sqrt(size2)
    # standard errors: each entry of P_l has the variance diag(N^-1)_l (unit-noise weights);
    # a row entry is that over |c_l|
    sig_p = chol.std_errors(h)
    sig_b = chol_b.std_errors(h) / size
    sigma = np.stack([sig_p / size, sig_b, sig_p], 1)
    # a unit's P_l is rank one; its second singular value over what noise of standard error
    # sig_p gives a k x d matrix (sqrt(d) + sqrt(k) of it) says whether it is not
    rank_two = (sv[:, 1] / np.maximum(sig_p * (np.sqrt(q - 1) + np.sqrt(k)), 1e-300)
                if k > 1 and q > 2 else np.zeros(h))
    return np.concatenate([w, b[:, None]], axis=1), new_coef, aff0, sigma, rank_two


def _relaxed_solve(design: np.ndarray, w2: np.ndarray, data: np.ndarray, steps: int,
                   factors: Optional[dict] = None, key: str = ""):
    """Weighted least squares ``design @ X ~ data``, refined on the data's residual (as
    :meth:`_Moments.solve`); ``(X, factor)`` with the equilibrated Cholesky factor of the normal
    matrix, or ``None`` when that factor is unusable (singular or too ill-conditioned) or
    refinement does not reach rounding.

    The data have ``k (d + 1)`` columns and the design ``h + 1``, so the solve is the product
    ``K @ data`` with ``K = R^-1 Q^T W`` from the QR factors of the weighted design ``W D``
    (``R`` x ``h + 1``, cheap): its first answer is good to ``cond eps`` instead of the normal
    equations' ``cond^2 eps``, which saves a refinement step over the wide data (at
    784-1024-10: 3e-13 instead of 3e-7 before refinement, one step instead of two). The
    Cholesky factor still judges the conditioning and gives the standard errors.
    """
    if factors is not None and key in factors:
        chol, gain = factors[key]
    else:
        normal = design.T @ (design * w2[:, None])
        chol = _Cholesky.of(normal)
        if chol is None or design.shape[0] < design.shape[1]:
            return None
        root = np.sqrt(w2)
        q, r = np.linalg.qr(design * root[:, None])
        gain = scipy.linalg.solve_triangular(r, q.T * root[None, :])      # (h + 1, R)
        if factors is not None:
            factors[key] = (chol, gain)
    sol = gain @ data
    last = None
    for _ in range(max(steps, 1)):
        delta = gain @ (data - design @ sol)
        size, scale = np.abs(delta).max(), np.abs(sol).max()
        sol = sol + delta
        if _refined(size, scale, last, chol.rate):
            return sol, chol
        last = size
    return None


def _refined(size: float, scale: float, last: Optional[float], rate: float) -> bool:
    """True once the next refinement correction would fall below rounding: each step shrinks
    the error by at least ``rate`` (the factor's estimate) and at least by the shrinkage seen
    from the ``last`` correction to this one, ``size`` (``scale``: the solution's size)."""
    seen = size / max(scale, 1e-300) if last is None else size / max(last, 1e-300)
    rate = max(rate, seen if np.isfinite(seen) else 0.0)
    return rate * size <= EPS * max(scale, 1e-300)


def region_residual(aff: np.ndarray, weight: np.ndarray, m: np.ndarray, rows: np.ndarray,
                    coef: np.ndarray, aff0: np.ndarray) -> np.ndarray:
    """``(R,)`` largest weighted residual ``weight |aff - model|`` of each region."""
    return _region_max(_weighted_residual(aff, weight, m.astype(np.float64), rows, coef, aff0))


def _weighted_residual(aff, weight, mf, rows, coef, aff0) -> np.ndarray:
    return (aff - _model(mf, coef, rows, aff0)) * weight[:, None, None]


def _region_max(res: np.ndarray) -> np.ndarray:
    """``(R,)`` the largest entry of each region's weighted residual ``(R, k, q)``."""
    return np.abs(res).max((1, 2)) if res.size else np.zeros(res.shape[0])


def residual_and_coef_error(aff: np.ndarray, weight: np.ndarray, m: np.ndarray,
                            rows: np.ndarray, coef: np.ndarray, aff0: np.ndarray,
                            bias_scale: Optional[np.ndarray] = None):
    """``(R,)`` largest weighted residual of each region (:func:`region_residual`), and
    ``(h,)`` standard errors of the coefficients given the rows that take each region's noise
    from its own residual.

    The least-squares errors of :func:`fit_rows` take the weights (inverse noise) as exact.
    Where they are not, a coefficient read from the few regions in which its unit is on
    inherits their miscalibration: on the digits demo, unit 31 is on in one region of 35,
    whose gradient entries' weighted residual is several times the weights' noise, and its
    coefficient error was 69 times its least-squares figure. The sandwich
    ``G^-1 (S * M^T W^2 V M) G^-1`` (``G = S * M^T W^2 M``, ``S`` the rows' Gram matrix, ``V``
    the mean square of each region's weighted residual) is the covariance of the same solve
    under that noise (White's heteroskedasticity-consistent estimator, pooled per region).
    With ``bias_scale`` (the coefficient solve of :func:`fit_rows` then weights the intercepts
    by ``weight / bias_scale``) the gradient entries and the intercepts are pooled apart, each
    with its own weights.
    """
    h = rows.shape[0]
    mf = m.astype(np.float64)
    res = _weighted_residual(aff, weight, mf, rows, coef, aff0)
    out = _region_max(res)
    if h == 0:
        return out, np.zeros(0)
    w2 = weight ** 2
    if bias_scale is None:
        parts = [(rows, w2, (res ** 2).mean((1, 2)))]
    else:
        grad = rows.copy()
        grad[:, -1] = 0.0
        parts = [(grad, w2, (res[:, :, :-1] ** 2).mean((1, 2))),
                 (rows[:, -1:], w2 / bias_scale ** 2,
                  ((res[:, :, -1] / bias_scale[:, None]) ** 2).mean(1))]
    bread, meat = np.zeros((h, h)), np.zeros((h, h))
    for r, w2p, v in parts:
        gram = r @ r.T
        bread += gram * (mf.T @ (mf * w2p[:, None]))
        meat += gram * (mf.T @ (mf * (w2p * v)[:, None]))
    try:
        inv = np.linalg.inv(bread)
    except np.linalg.LinAlgError:
        return out, np.full(h, np.inf)
    return out, np.sqrt(np.maximum(np.einsum("ij,jl,il->i", inv, meat, inv), 0.0))


def _model(mf: np.ndarray, coef: np.ndarray, rows: np.ndarray, aff0: np.ndarray) -> np.ndarray:
    """``(R, k, q)`` affine maps of the unsigned model, ``coef^T diag(m_r) rows + aff0``."""
    h, k = coef.shape
    q = rows.shape[1]
    scaled = (coef[:, :, None] * rows[:, None, :]).reshape(h, k * q)
    out = (mf @ scaled).reshape(-1, k, q)
    out += aff0[None]
    return out


class _Moments:
    """Weighted moments of the unsigned model's data for one weight vector ``w2 = weight^2``.

    ``mwm = M^T W^2 M`` ``(h, h)``, ``msum = M^T w2``, ``wsum = sum w2`` and ``g0 = w2^T aff``
    ``(k, q)`` are cheap; the data moments ``g = M^T W^2 aff`` ``(h, k, q)`` (an ``R k q h``
    product) are formed for a cold start only. A warm solve keeps instead the moments of its last
    residual and the solution they were taken at, which give ``<row_l, g_lj>`` just as well
    (private helper of :func:`fit_rows`).
    """

    def __init__(self, mf: np.ndarray, w2: np.ndarray, aff: np.ndarray, cold: bool):
        n_reg, k, q = aff.shape
        self.mf, self.w2, self.aff = mf, w2, aff
        self.mw = mf * w2[:, None]
        self.mwm = mf.T @ self.mw
        self.msum = self.mw.sum(0)
        self.wsum = float(w2.sum())
        self.g0 = (w2 @ aff.reshape(n_reg, k * q)).reshape(k, q)
        self.g = self._moments(aff) if cold else None
        self.at = None     # (coef, rows, aff0, moments of the residual there)

    def _moments(self, data: np.ndarray) -> np.ndarray:
        n_reg, k, q = data.shape
        return (self.mw.T @ data.reshape(n_reg, k * q)).reshape(-1, k, q)

    def normal(self, coef: np.ndarray) -> np.ndarray:
        """``(h + k, h + k)`` normal matrix ``D^T W^2 D`` of the design for ``coef``."""
        k = coef.shape[1]
        border = self.msum[:, None] * coef
        return np.block([[self.mwm * (coef @ coef.T), border],
                         [border.T, self.wsum * np.eye(k)]])

    def project(self, rows: np.ndarray) -> np.ndarray:
        """``(h, k)``: ``<rows_l, g_lj>``, from ``g`` or from the last residual's moments
        (``g = g_res + M^T W^2 model``, and the model's part only needs ``h x h`` products)."""
        if self.g is not None:
            return np.einsum("lq,ljq->lj", rows, self.g)
        coef, at_rows, at_aff0, g_res = self.at
        return (np.einsum("lq,ljq->lj", rows, g_res)
                + (self.mwm * (rows @ at_rows.T)) @ coef
                + self.msum[:, None] * (rows @ at_aff0.T))

    def _rhs(self, coef: np.ndarray, g: np.ndarray, g0: np.ndarray) -> np.ndarray:
        return np.concatenate([np.einsum("lj,ljq->lq", coef, g), g0])

    def solve(self, coef: np.ndarray, steps: int, start: Optional[np.ndarray] = None,
              judge_last: bool = True):
        """Rows and affine term ``(h + k, q)`` for ``coef``, and the factorisation used.

        Starts from ``start`` rows (their best affine term is closed-form) or from the
        normal equations, then refines at most ``steps`` times, and falls back to the dense
        solve when the corrections do not fall below rounding by then; ``judge_last=False``
        leaves the last column (solved elsewhere) out of that test.
        """
        normal = self.normal(coef)
        chol = _Cholesky.of(normal)
        if chol is None:     # singular or too ill-conditioned for refinement to converge
            return self._dense_solve(coef, normal)
        h = coef.shape[0]
        if start is None:
            sol = chol.solve(self._rhs(coef, self.g, self.g0))
            last = None      # the first correction measures the solve's own error
        else:
            aff0 = (self.g0 - (self.msum[:, None] * coef).T @ start) / self.wsum
            sol = np.concatenate([start, aff0])
            last = np.inf    # the first correction is the distance from the start
        cols = slice(None) if judge_last else slice(0, -1)
        for i in range(steps):   # refinement on the residual of the data, not of the normals
            res = _model(self.mf, coef, sol[:h], sol[h:])
            np.subtract(self.aff, res, out=res)
            g_res = self._moments(res)
            if self.g is None:
                self.at = (coef, sol[:h], sol[h:], g_res)
            n_reg, k, q = res.shape
            g0_res = (self.w2 @ res.reshape(n_reg, k * q)).reshape(k, q)
            delta = chol.solve(self._rhs(coef, g_res, g0_res))
            size, scale = np.abs(delta[:, cols]).max(), np.abs(sol[:, cols]).max()
            sol = sol + delta
            if _refined(size, scale, last, chol.rate):
                return sol, chol
            last = size
        if steps:            # refinement too slow for the steps allowed
            return self._dense_solve(coef, normal)
        return sol, chol

    def _dense_solve(self, coef: np.ndarray, normal: np.ndarray):
        h = coef.shape[0]
        sol = self._dense(coef)
        if self.g is None:   # the coefficient solve needs moments at some solution
            res = self.aff - _model(self.mf, coef, sol[:h], sol[h:])
            self.at = (coef, sol[:h], sol[h:], self._moments(res))
        return sol, _Cholesky(None, normal)

    def _dense(self, coef: np.ndarray) -> np.ndarray:
        n_reg, k, q = self.aff.shape
        om = np.sqrt(self.w2)[:, None, None]
        design = np.concatenate([self.mf[:, None, :] * coef.T[None],
                                 np.broadcast_to(np.eye(k)[None], (n_reg, k, k))], axis=2)
        return _lstsq((design * om).reshape(n_reg * k, -1), (self.aff * om).reshape(n_reg * k, q))


class _Cholesky:
    """Cholesky factor of an equilibrated normal matrix (``factor`` None: not usable).

    ``rate`` estimates how much each refinement step shrinks the error, ``eps cond``, with the
    condition number bounded below by the squared ratio of the factor's pivots.
    """

    def __init__(self, factor, normal: np.ndarray, scale: Optional[np.ndarray] = None):
        self.factor, self.normal, self.scale = factor, normal, scale
        self.rate = 1.0
        if factor is not None:
            piv = np.diag(factor)
            self.rate = min(1.0, 16 * EPS * (piv.max() / piv.min()) ** 2)

    @staticmethod
    def of(normal: np.ndarray, min_ratio: float = 3e-7) -> Optional["_Cholesky"]:
        """Factors ``normal``; ``None`` when it is singular or its equilibrated condition number
        exceeds about ``min_ratio ** -2`` (refinement converges only well below ``1 / eps``)."""
        diag = np.diag(normal)
        if not diag.size or not np.all(np.isfinite(normal)) or not np.all(diag > 0):
            return None
        scale = 1.0 / np.sqrt(diag)
        try:
            lower = np.linalg.cholesky(normal * scale[:, None] * scale[None, :])
        except np.linalg.LinAlgError:
            return None
        piv = np.diag(lower)
        if piv.min() <= min_ratio * piv.max():
            return None
        return _Cholesky(lower, normal, scale)

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        y = scipy.linalg.solve_triangular(self.factor, rhs * self.scale[:, None], lower=True)
        return scipy.linalg.solve_triangular(self.factor, y, lower=True, trans="T") \
            * self.scale[:, None]

    def std_errors(self, h: int) -> np.ndarray:
        """Standard errors of the first ``h`` unknowns (unit-noise weighted LS)."""
        if self.factor is None:
            try:
                cov = np.diag(np.linalg.inv(self.normal))[:h]
            except np.linalg.LinAlgError:
                return np.full(h, np.inf)
        else:   # diag(N^-1) = scale^2 * column sums of squares of L^-1
            inv = scipy.linalg.solve_triangular(self.factor, np.eye(self.factor.shape[0]),
                                                lower=True)
            cov = (self.scale ** 2 * np.einsum("ij,ij->j", inv, inv))[:h]
        return np.sqrt(np.maximum(cov, 0.0))


def _lstsq(a: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Least squares by Householder QR (many right-hand sides at once); SVD if rank-deficient."""
    if a.shape[0] >= a.shape[1]:
        q, r = np.linalg.qr(a)
        diag = np.abs(np.diag(r))
        if diag.size and diag.min() > 1e-13 * diag.max():
            return scipy.linalg.solve_triangular(r, q.T @ rhs)
    return np.linalg.lstsq(a, rhs, rcond=None)[0]
