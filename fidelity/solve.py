"""Stage 3: signs of the rows and the second layer.

A row recovered from a kink is known up to sign: ``c relu(z) = c relu(-z) + c z``. In the
unsigned model the rows of the wrong sign leave an affine term ``L = -sum_l rho_l c_l w_l^T``
(``rho_l`` is 1 for a flipped row, 0 otherwise). Solving for ``rho`` by least squares needs the
``k d``-vectors ``vec(c_l w_l^T)`` to be independent (always so for ``h <= d``, often for larger
``h`` when ``k > 1``). A ``rho`` far from 0 and 1 is not noise but a pair of units sharing one
hyperplane with opposite orientations; it is returned as two units. The second layer is then the
least-squares fit of the answers already paid for on the features ``relu(W x + b)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import UnsupportedArchitecture


@dataclass(frozen=True)
class Signs:
    flip: np.ndarray       # (h,) rho rounded: True where the row must be negated
    rho: np.ndarray        # (h,) raw least-squares values
    split: np.ndarray      # (h,) True where the unit is a pair on one hyperplane
    condition: float       # condition number of the sign system


# the sign system is taken as singular above this condition number
MAX_CONDITION = 1e10


def try_signs(rows: np.ndarray, coef: np.ndarray, affine_term: np.ndarray,
              *, tol: float = 1e-3) -> tuple[Optional[Signs], str]:
    """The signs of ``rows``, or ``(None, why)`` when the sign system is singular."""
    h = rows.shape[0]
    d = rows.shape[1] - 1
    if h == 0:
        return Signs(np.zeros(0, bool), np.zeros(0), np.zeros(0, bool), 1.0), ""
    lin = affine_term[:, :d]                                  # (k, d)
    cols = (coef[:, :, None] * rows[:, None, :d]).reshape(h, -1).T   # (k d, h)
    # the condition of the equilibrated columns: output weights over six decades are no
    # ill-conditioning of the signs (each rho_i is solved at its unit's own size); only
    # nearly dependent directions are
    norms = np.linalg.norm(cols, axis=0)
    sv = np.linalg.svd(cols / np.where(norms > 0, norms, 1.0), compute_uv=False)
    cond = float(sv[0] / sv[-1]) if sv[-1] > 0 else np.inf
    if cols.shape[0] < h or cond > MAX_CONDITION:
        return None, (
            f"cannot resolve the signs of {h} hidden units from {cols.shape[0]} equations "
            f"(condition {cond:.3g}); the layer is too expansive for exact recovery "
            "(h must not exceed k*d, and rows must be independent)")
    rho, *_ = np.linalg.lstsq(cols, -lin.ravel(), rcond=None)
    flip = np.abs(rho - 1) <= tol
    keep = np.abs(rho) <= tol
    split = ~(flip | keep)
    return Signs(flip=flip, rho=rho, split=split, condition=cond), ""


def resolve_signs(rows: np.ndarray, coef: np.ndarray, affine_term: np.ndarray,
                  *, tol: float = 1e-3) -> Signs:
    """The signs of ``rows`` (see the module doc).

    Raises:
        UnsupportedArchitecture: the sign system is singular (an expansive layer).
    """
    signs, why = try_signs(rows, coef, affine_term, tol=tol)
    if signs is None:
        raise UnsupportedArchitecture(why)
    return signs


def signed_units(rows: np.ndarray, coef: np.ndarray, signs: Signs):
    """First-layer rows ``(h', d + 1)`` and the index of the unsigned unit each comes from."""
    out, src = [], []
    for i in range(rows.shape[0]):
        if signs.split[i]:
            out += [rows[i], -rows[i]]
            src += [i, i]
        else:
            out.append(-rows[i] if signs.flip[i] else rows[i])
            src.append(i)
    d1 = rows.shape[1]
    return (np.array(out).reshape(-1, d1), np.array(src, dtype=int))


def output_layer(rows: np.ndarray, coef: np.ndarray, affine_term: np.ndarray, signs: Signs):
    """Output layer ``A2 (k, h')``, ``b2 (k,)`` of the units of :func:`signed_units`, read off the
    unsigned fit without new queries.

    ``c relu(r x) = (1 - rho) c relu(r x) + rho c relu(-r x) + rho c r x``: a unit keeps
    ``(1 - rho) c``, its mirror gets ``rho c`` (``rho`` rounded to 0 or 1 unless the unit is a
    split pair), and the bias collects ``u + sum_l rho_l c_l b_l``.
    """
    rho = np.where(signs.split, signs.rho, signs.flip.astype(np.float64))
    cols = []
    for i in range(rows.shape[0]):
        if signs.split[i]:
            cols += [(1 - rho[i]) * coef[i], rho[i] * coef[i]]
        else:
            cols.append(coef[i])
    a2 = np.array(cols).reshape(-1, affine_term.shape[0]).T
    b2 = affine_term[:, -1] + (rho[:, None] * coef * rows[:, -1:]).sum(0)
    return a2, b2


def fit_output_layer(rows: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Least squares for ``A2, b2`` given first-layer rows, on answered points ``x`` -> ``y``.

    Returns ``A2 (k, h)``, ``b2 (k,)`` and the max abs residual on the fitted points.
    """
    feats = np.maximum(x @ rows[:, :-1].T + rows[:, -1], 0.0)
    design = np.concatenate([feats, np.ones((x.shape[0], 1))], 1)
    colnorm = np.linalg.norm(design, axis=0)
    colnorm = np.where(colnorm > 0, colnorm, 1.0)
    sol, *_ = np.linalg.lstsq(design / colnorm, y, rcond=None)
    sol = sol / colnorm[:, None]
    resid = float(np.abs(design @ sol - y).max()) if y.size else 0.0
    return sol[:-1].T, sol[-1], resid
