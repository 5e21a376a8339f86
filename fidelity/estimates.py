"""How precise each unit of the current model is: error estimates from the fit and the regions.

Used to choose which units to measure again (:mod:`fidelity.polish`), to tell twins from
neighbours (:mod:`fidelity.twins`) and to report ``NeuronInfo.error_estimate``.
"""

from __future__ import annotations

import numpy as np

from .context import Run

# a region lies beside a kink when one of its bounds is within this many t_max of it
BESIDE = 1e-12


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
