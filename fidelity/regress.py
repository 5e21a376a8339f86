"""Stage 5 for noisy answers: Gauss-Newton regression of the whole network on fresh answers.

Finite differences amplify the answers' noise by ``1 / step``, and a float32 victim leaves only
~7 digits to amplify. Once the hidden units are known (rows good to ~1e-3, signs resolved), every
parameter is fitted at once to answers at random points instead: ``f(x) = A relu(W x + b) + c`` is
piecewise linear in ``W, b`` and linear in ``A, c``, so Gauss-Newton steps (the activation pattern
re-read at every step) converge to the weighted least-squares network. The steps are solved by
conjugate gradients on the normal equations, with Jacobian products from ``jax.jvp`` / ``jax.vjp``
and a Jacobi preconditioner computed in closed form; each step is one jitted call.

Each answer weighs ``1 / sigma(|f|)`` (the measured noise floor), so the fit is as precise as the
answers allow: with ``n k`` answers for ``P`` parameters the error is about ``sigma sqrt(P / (n k))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import compiling
from .network import ReLUNetwork


@dataclass(frozen=True)
class RegressionInfo:
    steps: int               # Gauss-Newton steps taken
    start_rms: float         # weighted RMS residual before (1 = at the noise floor)
    final_rms: float         # and after
    unit_error: np.ndarray   # (h,) error estimate of each unit's normalised row (calibrated
                             # diagonal estimate: see gauss_newton)


def _forward(p, x):
    w, b, a, c = p
    return jnp.maximum(x @ w.T + b, 0.0) @ a.T + c


@partial(compiling.jit, static_argnames=("cg_iters",))
def _gn_step(p, x, y, inv_sigma, damping, cg_iters):
    """One damped Gauss-Newton step: ``(J^T J + damping D) delta = -J^T r`` by preconditioned CG."""
    def resid(q):
        return (_forward(q, x) - y) * inv_sigma[:, None]

    r, jvp = jax.linearize(resid, p)
    vjp = jax.linear_transpose(jvp, p)
    g = vjp(r)[0]
    # Jacobi preconditioner: the diagonal of J^T J in closed form
    w, b, a, _ = p
    z = x @ w.T + b
    on = (z > 0).astype(x.dtype) * inv_sigma[:, None] ** 2           # (n, h)
    a2 = (a ** 2).sum(0)                                             # (h,)
    dw = a2[:, None] * (on.T @ (x ** 2))                             # (h, d)
    db = a2 * on.sum(0)
    da = jnp.broadcast_to(((jnp.maximum(z, 0.0) ** 2) * inv_sigma[:, None] ** 2).sum(0),
                          a.shape)
    dc = jnp.full(y.shape[1], (inv_sigma ** 2).sum())
    diag = (dw, db, da, dc)
    # a unit active at no point has a zero block: floor each block's diagonal at a tiny fraction
    # of its largest entry, so that the preconditioner and the damping stay finite
    diag = tuple(jnp.maximum(dd, 1e-12 * jnp.max(dd) + 1e-300) for dd in diag)

    def normal(v):
        jv = jvp(v)
        jtjv = vjp(jv)[0]
        return tuple(t + damping * dd * vv for t, dd, vv in zip(jtjv, diag, v))

    def precond(v):
        return tuple(vv / ((1 + damping) * dd) for vv, dd in zip(v, diag))

    rhs = tuple(-gg for gg in g)
    delta, _ = jax.scipy.sparse.linalg.cg(normal, rhs, M=precond, maxiter=cg_iters)
    return delta, jnp.sqrt(jnp.mean(r ** 2)), diag


@compiling.jit
def _rms(p, x, y, inv_sigma):
    return jnp.sqrt(jnp.mean(((_forward(p, x) - y) * inv_sigma[:, None]) ** 2))


def gauss_newton(net: ReLUNetwork, x: np.ndarray, y: np.ndarray, sigma: np.ndarray, *,
                 steps: int = 8, cg_iters: int = 100, damping: float = 1e-9,
                 stop: float = 1e-3, retries: int = 4) -> tuple[ReLUNetwork, RegressionInfo]:
    """Fits all parameters of a one-hidden-layer ``net`` to answers ``y`` at ``x``.

    Args:
        net: the starting network (rows and signs right, values approximate).
        x, y: ``(n, d)`` inputs and ``(n, k)`` answers.
        sigma: ``(n,)`` noise standard deviation of each answer.
        steps: bound on Gauss-Newton steps.
        cg_iters: bound on conjugate-gradient iterations per step.
        damping: Levenberg-Marquardt damping relative to the diagonal (it also pins the
            per-unit scaling symmetry, which leaves ``J^T J`` singular).
        stop: stop when a step lowers the weighted RMS residual by less than this fraction.
            A residual below 1 (the noise floor) is no reason to stop: with ``n`` answers
            and ``P`` parameters the optimum lies near ``sqrt(1 - P / n)``, and a float32
            64-16-10 stopped after one step at 0.85 left rows 2-4x less precise than the
            error estimate assumes.
        retries: bound on steps refused (the residual grew) and retried with 100x the damping.

    Returns:
        The fitted network and a :class:`RegressionInfo`.
    """
    if len(net.weights) != 2:
        raise ValueError("gauss_newton fits one-hidden-layer networks")
    with jax.enable_x64(True):
        p = tuple(jnp.asarray(a, jnp.float64) for a in (net.weights[0], net.biases[0],
                                                         net.weights[1], net.biases[1]))
        xj, yj = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
        inv = jnp.asarray(1.0 / np.asarray(sigma, np.float64))
        start = float(_rms(p, xj, yj, inv))
        current, taken, diag, lam = start, 0, None, damping
        for _ in range(steps + retries):
            delta, _, diag = _gn_step(p, xj, yj, inv, lam, cg_iters)
            trial = tuple(a + s for a, s in zip(p, delta))
            new = float(_rms(trial, xj, yj, inv))
            if not np.isfinite(new) or new >= current:
                if lam >= damping * 1e8:
                    break
                lam *= 100.0              # Levenberg-Marquardt: a shorter, safer step
                continue
            lam = max(damping, lam / 100.0)
            p, taken = trial, taken + 1
            gain = (current - new) / current
            current = new
            if taken >= steps or gain < stop:   # converged (the floor itself is no stop)
                break
        w, b, a, c = (np.asarray(t) for t in p)
        if diag is None:
            _, _, diag = _gn_step(p, xj, yj, inv, damping, 1)
        dw, db = np.asarray(diag[0]), np.asarray(diag[1])
    norm = np.linalg.norm(w, axis=1)
    safe = np.where(norm > 0, norm, 1.0)
    # residual RMS above 1 means the noise floor was underestimated: scale the errors up. The
    # diagonal estimate is one entry's standard error, ignoring the correlations between units;
    # the largest of ~d entries and those correlations made actual errors 6-21x larger on the
    # float32 victims we measured (64-16-10, 784-32-10): hence the factor 20.
    inflate = 20.0 * max(current, 1.0)
    err_w = inflate / np.sqrt(np.maximum(dw, 1e-300)).min(1) / safe
    err_b = inflate / np.sqrt(np.maximum(db, 1e-300)) / safe
    info = RegressionInfo(steps=taken, start_rms=start, final_rms=current,
                          unit_error=np.maximum(err_w, err_b))
    return ReLUNetwork([w, a], [b, c]), info
