"""How precise each unit of the current model is: error estimates from the fit and the regions.

Used to choose which units to measure again (:mod:`fidelity.polish`), to tell twins from
neighbours (:mod:`fidelity.twins`) and to report ``NeuronInfo.error_estimate``.
"""

from __future__ import annotations

import numpy as np

from .context import Run

# a region lies beside a kink when one of its bounds is within this many t_max of it
BESIDE = 1e-12
# the reported estimate: this many times the expected largest of the unit's normalised
# parameters' standard errors (measured: the actual errors of 10-8-1, 20-6-2, 64-16-10,
# 784-32-1, 784-32-10 and the digits demo were 0.2x to 5.5x the unscaled figure, overall)
REPORT_FACTOR = 10.0


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


def reported_error(run: Run) -> np.ndarray:
    """``(h,)`` the error estimate reported per unit (float64 answers), in the units of
    :func:`fidelity.evaluate`'s parameter error (row ``[w, b]`` of unit norm, output weights
    scaled to match, absolute).

    ``REPORT_FACTOR * max(z_row max(s_w, s_b), z_coef s_c sqrt(1 + b^2))``: the least-squares
    standard errors of the unit's normalised row entries and of its bias (unless a located
    kink pins it), and the standard error of its output coefficients with each region's noise
    taken from its residual (``Model.coef_se``, when larger than the least-squares figure);
    ``z_row = sqrt(2 ln(2 (d + 1)))`` and ``z_coef = max(1, sqrt(2 ln(2 k)))``, the expected
    largest of that many standard normal deviates (the error is a maximum over entries; the
    row has ``d + 1`` of them, the output weights ``k``: one ``z`` over all ``d + k + 1``
    overstated the output weights' part 1.5x-3x). Unlike
    :func:`unit_error` (which decides what the polish measures again, and is kept conservative,
    1e3x to 1e8x the actual errors), this one is meant to be read: it bounded the actual error
    on every float64 victim measured, within 100x overall (README, *Error estimates*).
    """
    model = run.model
    h = model.size
    if model.sigma is None or h == 0:
        return np.zeros(h)
    anchored = np.array([i in model.anchors for i in range(h)])
    b = model.rows[:, -1] / np.maximum(np.linalg.norm(model.rows[:, :-1], axis=1), 1e-300)
    s_c = model.sigma[:, 2]
    if model.coef_se is not None and model.coef_se.shape == s_c.shape:
        s_c = np.maximum(s_c, model.coef_se)
    row = np.maximum(model.sigma[:, 0], np.where(anchored, 0.0, model.sigma[:, 1]))
    k = model.coef.shape[1] if model.coef.ndim == 2 else 1
    z_row = np.sqrt(2.0 * np.log(2.0 * (run.d + 1)))
    z_coef = max(1.0, np.sqrt(2.0 * np.log(2.0 * k)))
    return REPORT_FACTOR * np.maximum(z_row * row, z_coef * s_c * np.sqrt(1.0 + b ** 2))
