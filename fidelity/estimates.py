"""How precise each unit of the current model is: error estimates from the fit and the regions.

The conservative ones (:func:`ls_error`, :func:`unit_error`) choose which units to measure
again (:mod:`fidelity.polish`) and tell twins from neighbours (:mod:`fidelity.twins`); the
reported one (:func:`reported_error`, ``NeuronInfo.error_estimate``) is a bootstrap of the last
fit, calibrated to bound the actual error within 100x.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import recover
from .context import Run

# a region lies beside a kink when one of its bounds is within this many t_max of it
BESIDE = 1e-12
# the reported estimate: this many times the bootstrap's expected largest change of a unit's
# entries (:func:`reported_error`)
REPORT_FACTOR = 4.5


def ls_error(run: Run, with_bias: bool = False) -> np.ndarray:
    """``(h,)`` LS standard error of each unit's normalised row and coefficients, and of its
    bias unless a located kink pins it (``with_bias``)."""
    model = run.model
    h = model.size
    if model.sigma is None or h == 0:
        return np.zeros(h)
    est = np.maximum(model.sigma[:, 0], model.sigma[:, 2])
    if with_bias:
        fitted = np.array([i not in model.anchors for i in range(h)])
        est = np.maximum(est, np.where(fitted, model.sigma[:, 1], 0.0))
    return est


def unit_error(run: Run, by_size: bool = True) -> np.ndarray:
    """``(h,)`` rough error of each unit's normalised row and coefficients.

    The LS standard errors, and ``run.crossing_rel_error * step_cap / s`` with ``s`` the smallest
    step of the two regions beside the unit's kink: a kink squeezed next to another leaves a
    tiny region whose probes cross both, an error the covariance does not see. That error comes
    from the other units' crossing terms, so it is scaled by the largest unit's output
    coefficient over this unit's: a unit with small output weights has a small jump to read its
    row from (784-128-1 seed 0: units at 3e-4 and 3e-3 of the largest were left unpolished at
    2.9e-8 while larger units with smaller errors were polished). ``by_size=False`` leaves that
    factor out (the twin tests ask how well a kink's own region was measured, not how large the
    unit is).
    """
    model = run.model
    h = model.size
    est = ls_error(run)
    if h == 0 or model.sigma is None:
        return est
    regions = run.evidence.all_regions()
    steps = regions.step_rms()
    tol = BESIDE * run.t_max
    ratio = np.ones(h)
    if by_size and model.coef.shape[0] == h:
        size = np.linalg.norm(model.coef, axis=1)
        ratio = size.max() / np.maximum(size, 1e-300 * size.max())
    for i, j in enumerate(run.evidence.jumps[:h]):
        beside = (regions.line == j.line) & ((np.abs(regions.t_hi - j.t) <= tol)
                                             | (np.abs(regions.t_lo - j.t) <= tol))
        if beside.any():
            est[i] = max(est[i], run.crossing_rel_error * run.step_cap * ratio[i]
                         / steps[beside].min())
    return est


def reported_error(run: Run, inputs, *, replicates: int = 0,
                   rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """``(h,)`` the error estimate reported per unit (float64 answers), in the units of
    :func:`fidelity.evaluate`'s parameter error (row ``[w, b]`` of unit norm, output weights
    scaled to match, absolute), by a parametric bootstrap of the last fit.

    ``inputs`` is that fit's data (:func:`fidelity.fit.final_inputs`). Each replicate adds to
    it the rounding noise the answers carry and fits again as the engine did (the relaxed
    solve, one alternation, the located kinks pinning the biases). A unit's changes over
    ``replicates`` (0: :func:`replicates_for`) give the RMS change of its ``w`` entries, of
    its bias and of its output weights (each pooled over its entries and the replicates, so
    that a few replicates are enough); the estimate is ``REPORT_FACTOR`` times the largest of
    ``z_d rms_w``, ``rms_b`` and ``z_k rms_c``, ``z_n = sqrt(2 ln(2 n))`` the expected largest
    of ``n`` normal deviates (the error is a maximum over entries).

    The noise of an answer is that of a sum of its terms ``a_j relu(z_j)``: their root sum of
    squares times (active units)^``ACTIVE``, at the answers' relative noise
    (``NoiseFloor.sigma`` of that size; against 9 victims the gradient entries' actual errors
    were 0.27x-0.52x of it at the median per victim; sizes read from ``|f|`` were off by
    0.35x-17x). The part all of a region's entries share is ``SHARED`` of it, or, where the
    diagonal probe read it, what the reading left. What the least-squares errors of one solve
    do not see, the bootstrap does: the alternation moving rows where coefficients are
    uncertain (trained 784-128-10: rows 8x to 76x their least-squares error), and row errors
    carried into the output weights by units active together (up to 30x).
    """
    model = run.model
    h = model.size
    if model.sigma is None or h == 0 or model.network is None:
        return np.zeros(h)
    aff, weight, m, bias_scale, read = inputs
    regions = run.evidence.all_regions()
    rng = np.random.default_rng(0) if rng is None else rng
    n = replicates or replicates_for(aff.shape, h)
    net = model.network
    w1, b1 = np.asarray(net.weights[0]), np.asarray(net.biases[0])
    size = np.abs(np.asarray(net.weights[1])).max(0)
    terms = np.maximum(regions.base @ w1.T + b1, 0.0) * size
    rounded = np.sqrt((terms ** 2).sum(1)) * np.maximum((terms > 0).sum(1), 1) ** ACTIVE
    sigma = run.nf.sigma(rounded)                                             # (R,)
    factors = {}
    base = _refit(aff, weight, m, model, bias_scale, factors)
    R, k, q = aff.shape
    # each unit's changes: mean squares over the replicates of its w entries, bias, outputs
    ms_w, ms_b, ms_c = np.zeros(h), np.zeros(h), np.zeros(h)
    # the rounding all entries of a region share: what its diagonal probe left, or SHARED of
    # an answer's where it was not read
    shared = sigma[:, None] * np.where(read, np.sqrt(2.0 / (q - 1)), SHARED)    # (R, k)
    for _ in range(n):
        g = ((rng.standard_normal((R, k, q - 1)) * sigma[:, None, None]
              + (shared * rng.standard_normal((R, k)))[:, :, None])
             / regions.step[:, None, :])
        e = sigma[:, None] * rng.standard_normal((R, k)) - np.einsum("rkd,rd->rk", g,
                                                                      regions.base)
        noisy = aff + np.concatenate([g, e[:, :, None]], axis=2)
        dw, db, dc = _unit_change(base, _refit(noisy, weight, m, model, bias_scale, factors))
        ms_w += (dw ** 2).mean(1) / n
        ms_b += db ** 2 / n
        ms_c += (dc ** 2).mean(1) / n
    # pooled over a unit's entries (stable with few replicates), then the expected largest
    # of that many: z = sqrt(2 ln(2 n))
    z = lambda count: np.sqrt(2.0 * np.log(2.0 * count))      # noqa: E731
    return REPORT_FACTOR * np.sqrt(np.maximum.reduce([z(q - 1) ** 2 * ms_w, ms_b,
                                                      z(max(k, 1)) ** 2 * ms_c]))


# the bootstrap's replicates: this many, fewer where one fit costs more than BIG_FIT products
REPLICATES = 6
BIG_FIT = 3e9
# an answer's rounding grows as its terms' root sum of squares times (active units)^ACTIVE
# (measured on 9 victims, h 5-256: the gradient entries' errors over eps times that size had
# medians 0.27-0.52 per victim; 0.36-1.27 without the second factor)
ACTIVE = 0.2
# the rounding that all of a region's gradient entries share, over an answer's (measured:
# 0.26-0.35 of it on 7-5-3, 10-8-1, 52-15-3, where the entries' own was 0.36-0.52)
SHARED = 0.5


def replicates_for(shape: tuple, h: int) -> int:
    """Bootstrap replicates for a fit of data ``shape`` ``(R, k, d + 1)`` with ``h`` units:
    ``REPLICATES``, 3 for the widest (784-1024-10: a fit takes ~2.5 s)."""
    return REPLICATES if np.prod(shape) * h <= BIG_FIT else 3


def _refit(aff: np.ndarray, weight: np.ndarray, m: np.ndarray, model,
           bias_scale: np.ndarray, factors: dict) -> tuple[np.ndarray, np.ndarray]:
    """Rows (biases pinned where the model's are) and coefficients of one fit of ``aff``, as
    the engine's last pass makes it (``factors``: the design's, shared by the replicates)."""
    rows, coef, *_ = recover.fit_rows(aff, weight, m, model.coef, bias_scale=bias_scale,
                                      iters=1, rows=model.rows, residual=False, factors=factors)
    for i, x in model.anchors.items():
        rows[i, -1] = -rows[i, :-1] @ x
    return rows, coef


def _unit_change(a: tuple, b: tuple):
    """Each unit's change from fit ``a`` to fit ``b`` in :func:`fidelity.evaluate`'s units
    (row ``[w, b]`` of unit norm, output weights scaled to match): ``(h, d)`` of its ``w``,
    ``(h,)`` of its bias, ``(h, k)`` of its output weights."""
    (ra, ca), (rb, cb) = a, b
    na, nb = np.linalg.norm(ra, axis=1), np.linalg.norm(rb, axis=1)
    row = ra / na[:, None] - rb / nb[:, None]
    return row[:, :-1], row[:, -1], ca * na[:, None] - cb * nb[:, None]
