"""Stages 2-4 over all the evidence: rows by least squares, crossing refinement, signs, output.

Every region measured so far is fitted at once (:func:`fidelity.recover.fit_rows`); probes that
crossed another hyperplane are corrected with the current model and the fit repeated until rows
stop moving (:mod:`fidelity.refine`); then the signs and the output layer are read off the fit
(:mod:`fidelity.solve`). A model whose rows are stale (the jumps changed since it was fitted)
restarts from the rows measured at the kinks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import recover, refine, solve, twins
from .context import Run
from .errors import UnsupportedArchitecture
from .measure import common_mode_tol
from .model import Model
from .network import ReLUNetwork
from .recover import Regions


@dataclass(frozen=True)
class FitConfig:
    """Tuning of the fit.

    Attributes:
        refine_iters: bound on crossing-correction passes of a final fit (fits before the
            polish, which only have to pass the check lines, take half).
        refine_stop: stop refining when no normalised row moves more than this (or than a
            tenth of its own standard error).
        sign_tol: ``|rho - round(rho)|`` below which a row's sign is decided (float64 answers).
        crossing_rel_error: assumed relative error of the rows used for crossing corrections
            (weights regions by how many large crossings their probes make).
    """

    refine_iters: int = 12
    refine_stop: float = 1e-11
    sign_tol: float = 1e-3
    crossing_rel_error: float = 1e-10

    def __post_init__(self):
        if not isinstance(self.refine_iters, int) or self.refine_iters < 0:
            raise ValueError(f"refine_iters must be an int >= 0, got {self.refine_iters!r}")
        for name in ("refine_stop", "sign_tol", "crossing_rel_error"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)!r}")
        if self.sign_tol >= 0.5:
            raise ValueError("sign_tol must be below 0.5 (rho is rounded to 0 or 1)")


def fit(run: Run, cfg: FitConfig, final: bool = False) -> None:
    """Fits the model to every region (``run.model`` is replaced).

    Fits before the polish only have to pass the check lines: they refine at most
    ``refine_iters // 2`` passes and solve the biases with the gradients' weights. When the
    sign system is singular (parallel twins, a spurious unit), :func:`fidelity.twins.
    resolve_singular` drops a jump and the fit restarts; at most once per jump.

    Raises:
        UnsupportedArchitecture: the signs cannot be resolved (an expansive layer).
    """
    for _ in range(len(run.evidence.jumps) + 1):
        model, failure = _fit_once(run, cfg, final)
        if model is not None:
            run.model = model
            return
        rows, coef, message = failure
        if not twins.resolve_singular(run, rows, coef):
            raise UnsupportedArchitecture(message)
    raise UnsupportedArchitecture("the sign system stayed singular after every unit was dropped")


def weights(run: Run, regions: Regions, exposure: Optional[np.ndarray]) -> np.ndarray:
    """Inverse noise per region: rounding of the answers, plus the crossing terms' error.

    (A float64 answer is rounded to the size of the terms it sums, ``sum_j |a_j| relu(z_j)``,
    3-4x |f| at trained 784-1024-10. Weights from that size calibrate the LS errors 4x better
    there, but did not make rows more precise, and they turned the ``parallel`` twins of
    ``benchmarks/precision.py`` from 'unverified' into a verified network with 37 units for
    32; so the weights keep |f|.)
    """
    noise = 2 * run.nf.sigma(regions.scale()) / regions.step_rms()
    if exposure is not None:
        noise = noise + run.crossing_rel_error * exposure
    return 1.0 / noise


def _crossings(run: Run, regions: Regions, rows: np.ndarray, coef: np.ndarray):
    """For unsigned ``rows`` and ``coef``: the probes' crossing terms ``(R, d, k)``, the regions
    with a probe that crosses a hyperplane ``(R,)`` (their shared rounding is not read: a
    crossing term is known to the rows' precision, ~1e-10 relative, not to the ~1e-14 of ``f``
    that the reading is about), and the regions' weights."""
    correction, exposure = refine.crossing_correction(regions, rows[:, :-1], rows[:, -1], coef.T)
    crosses = (exposure > 0) | refine.diagonal_crosses(regions, rows[:, :-1], rows[:, -1])
    return correction, crosses, weights(run, regions, exposure)


def _affine(run: Run, regions: Regions, correction, crosses: np.ndarray):
    """``(aff, common)``: the regions' gradients and intercepts as the fit takes them, with
    the crossing terms ``correction`` subtracted and the shared rounding ``common`` (R, k)
    that the diagonal probes read taken out, except where a probe ``crosses`` a hyperplane."""
    common = recover.common_mode(regions, correction,
                                 np.where(crosses, 0.0, common_mode_tol(run, regions)))
    return regions.affine(correction, common), common


def final_inputs(run: Run):
    """The data of the current model's last fit, read again: ``(aff, weight, masks,
    bias_scale)`` as :func:`fidelity.recover.fit_rows` takes them, and ``(R, k)`` where the
    gradients' shared rounding was read and taken out (for error estimates); None when the
    model was not fitted from the current jumps (a regression's, or none)."""
    model, ev = run.model, run.evidence
    if (model.stale(ev.version) or model.sigma is None or model.rows.shape[0] != len(ev.jumps)
            or not model.rows.shape[0]):
        return None
    regions = ev.all_regions()
    correction, crosses, weight = _crossings(run, regions, model.rows, model.coef)
    aff, common = _affine(run, regions, correction, crosses)
    m = recover.masks(model.rows, regions, np.array([j.line for j in ev.jumps], int),
                      np.array([j.t for j in ev.jumps]))
    return aff, weight, m, 1.0 + np.linalg.norm(regions.base, axis=1), common != 0


def _fit_once(run: Run, cfg: FitConfig, final: bool):
    """``(model, None)``, or ``(None, (rows, coef, message))`` when the signs are singular."""
    ev, old = run.evidence, run.model
    regions = ev.all_regions()
    weight = weights(run, regions, None)
    bias_scale = 1.0 + np.linalg.norm(regions.base, axis=1) if final else None
    passes = cfg.refine_iters if final else cfg.refine_iters // 2
    correction = None
    crosses = np.zeros(regions.size, bool)
    anchors = old.anchors
    sigma = old.sigma
    if not ev.jumps:
        rows, coef = np.zeros((0, run.d + 1)), np.zeros((0, regions.f_base.shape[1]))
    elif old.stale(ev.version):
        rows = ev.jump_rows()
        coef = np.array([j.coef for j in ev.jumps])
        # kinks located for another set of units (one was missing, or indices shifted) may
        # belong to a unit they were not meant for: they pin no bias any more
        anchors = {}
        crosses = refine.diagonal_crosses(regions, rows[:, :-1], rows[:, -1])
    else:   # same units as the current model: start from its crossing terms
        rows, coef = old.rows, old.coef
        correction, crosses, weight = _crossings(run, regions, rows, coef)
    unit_line = np.array([j.line for j in ev.jumps], int)
    unit_t = np.array([j.t for j in ev.jumps])
    row_change = np.full(rows.shape[0], np.nan)
    m = np.zeros((regions.size, 0), bool)
    resid = np.zeros(regions.size)
    aff0 = None
    coef_se = None
    stats = {}
    for it in range(passes + 1):
        if not rows.shape[0]:
            break
        prev = rows.copy()
        aff, _ = _affine(run, regions, correction, crosses)
        m = recover.masks(rows, regions, unit_line, unit_t)
        fit_in = (aff, weight, m)   # later passes start from the rows of the one before
        rows, coef, aff0, _, sigma = recover.fit_rows(
            *fit_in, coef, bias_scale=bias_scale, iters=1, rows=rows if it else None,
            residual=False, stats=stats)
        fitted = (rows.copy(), coef, aff0)
        for i, x in anchors.items():   # a located kink pins the bias near the origin
            rows[i, -1] = -rows[i, :-1] @ x
        if it:
            row_change = np.abs(rows - prev).max(1)
            settled = np.maximum(cfg.refine_stop, 0.1 * sigma[:, 0])
            if np.all(row_change <= settled):
                break
        # the crossing terms are the same in the unsigned model: refine before signs
        used_weight = weight
        used = 0.0 if correction is None else correction   # None: no crossing term
        correction, crosses, weight = _crossings(run, regions, rows, coef)
        if np.all(correction == used) and np.array_equal(weight, used_weight):
            # the crossing terms and weights came out as this pass used them (no probe
            # crosses a hyperplane, or the model did not move): the next pass would solve
            # the same data (784-1024-10: one pass of ~2.5 s saved per fit)
            row_change = np.zeros(rows.shape[0])
            break
    if aff0 is None:                    # no unit: the victim is affine everywhere
        aff0 = regions.affine().mean(0)
    else:                               # residual of the last solve (before anchoring)
        resid, coef_se = recover.residual_and_coef_error(*fit_in, *fitted, bias_scale)
    signs, message = solve.try_signs(rows, coef, aff0, tol=run.tol.sign_tol)
    if signs is None:
        return None, (rows, coef, message)
    w1, unit_src = solve.signed_units(rows, coef, signs)
    fit_resid = np.array([resid[m[:, i]].max() if m[:, i].any() else 0.0
                          for i in range(rows.shape[0])])
    a2, b2 = solve.output_layer(rows, coef, aff0, signs)
    if ev.anchor_y is not None:    # answers near the origin pin the output bias
        feats = np.maximum(ev.anchor_x @ w1[:, :-1].T + w1[:, -1], 0.0)
        b2 = np.mean(ev.anchor_y - feats @ a2.T, axis=0)
    model = Model(rows=rows, coef=coef, sigma=sigma, coef_se=coef_se,
                  rank_two=stats.get("rank_two"), signs=signs,
                  network=ReLUNetwork([w1[:, :-1], a2], [w1[:, -1], b2]), unit_src=unit_src,
                  row_change=row_change, fit_resid=fit_resid, anchors=anchors,
                  rows_from=ev.version, network_from=ev.version)
    return model, None


def with_anchors(model: Model, anchors: dict) -> Model:
    """The model with ``anchors`` (unit -> a located point of its hyperplane)."""
    return dataclasses.replace(model, anchors=anchors)
