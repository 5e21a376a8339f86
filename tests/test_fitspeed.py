"""The structured least-squares fit of :func:`fidelity.recover.fit_rows` against dense solves.

The fit never forms its ``(R k) x (h + k)`` design; these tests form it, weight it and solve it
with ``np.linalg.lstsq``, on small random problems whose weights span several decades (as the
engine's do), and require agreement to about 1e-12.
"""

import numpy as np
import pytest

from fidelity import recover


def _problem(seed, n_reg=60, h=7, k=3, d=5, noise=1e-9):
    """Masks, coefficients, weights and region maps of the unsigned model plus a little noise."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(size=(n_reg, h)) < 0.5
    m[np.arange(h), np.arange(h)] = True             # every unit is active somewhere
    coef = rng.normal(size=(h, k))
    rows = rng.normal(size=(h, d + 1))
    aff0 = rng.normal(size=(k, d + 1))
    aff = np.einsum("rl,lj,lq->rjq", m, coef, rows) + aff0[None]
    aff = aff + noise * rng.normal(size=aff.shape)
    weight = 10.0 ** rng.uniform(0, 4, n_reg)
    bias_scale = 1.0 + 50 * rng.uniform(size=n_reg)
    return aff, weight, m, coef, bias_scale


def _design(m, coef, om):
    n_reg, h = m.shape
    k = coef.shape[1]
    d = np.concatenate([m[:, None, :] * coef.T[None], np.broadcast_to(np.eye(k), (n_reg, k, k))],
                       axis=2)
    return (d * om[:, None, None]).reshape(n_reg * k, h + k)


def _dense_rows(aff, weight, m, coef, bias_scale=None):
    """Rows and affine term from dense weighted LS, with rows normalised as fit_rows does."""
    n_reg, k, dp1 = aff.shape
    h = m.shape[1]
    sol = np.linalg.lstsq(_design(m, coef, weight),
                          (aff * weight[:, None, None]).reshape(n_reg * k, dp1), rcond=None)[0]
    if bias_scale is not None:
        ob = weight / bias_scale
        sol[:, -1] = np.linalg.lstsq(_design(m, coef, ob),
                                     (aff[:, :, -1] * ob[:, None]).reshape(-1), rcond=None)[0]
    norm = np.linalg.norm(sol[:h, :-1], axis=1)
    return sol[:h] / norm[:, None], sol[h:], coef * norm[:, None]


def _dense_coef(aff, weight, m, rows, aff0):
    """Coefficients given rows, one output at a time, by dense weighted LS."""
    n_reg, k, dp1 = aff.shape
    design = (m[:, None, :] * rows.T[None] * weight[:, None, None]).reshape(n_reg * dp1, -1)
    out = [np.linalg.lstsq(design, ((aff[:, j] - aff0[j]) * weight[:, None]).reshape(-1),
                           rcond=None)[0] for j in range(k)]
    return np.stack(out, 1)


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_bias_scale", [False, True])
def test_structured_fit_matches_dense_lstsq(seed, with_bias_scale):
    aff, weight, m, coef, bias_scale = _problem(seed)
    bs = bias_scale if with_bias_scale else None
    rows, new_coef, aff0, resid, sigma = recover.fit_rows(aff, weight, m, coef, bias_scale=bs,
                                                          iters=1)
    want_rows, want_aff0, scaled_coef = _dense_rows(aff, weight, m, coef, bs)
    assert _rel(rows, want_rows) < 1e-12
    assert _rel(aff0, want_aff0) < 1e-12
    assert _rel(new_coef, _dense_coef(aff, weight, m, want_rows, want_aff0)) < 1e-12
    # standard errors: the dense covariance of the same design, scaled like the rows
    design = _design(m, coef, weight)
    sol = np.linalg.lstsq(design, (aff * weight[:, None, None]).reshape(-1, aff.shape[2]),
                          rcond=None)[0]
    cov = np.diag(np.linalg.inv(design.T @ design))[:m.shape[1]]
    np.testing.assert_allclose(sigma[:, 0], np.sqrt(cov) / np.linalg.norm(sol[:m.shape[1], :-1],
                                                                         axis=1), rtol=1e-9)
    # the residual: the model with the returned rows and coefficients
    model = np.einsum("rl,lj,lq->rjq", m, new_coef, rows) + aff0[None]
    want = np.abs((aff - model) * weight[:, None, None]).max((1, 2))
    # (a difference of nearly equal numbers: good to the rounding of the weighted data)
    np.testing.assert_allclose(resid, want, atol=1e-12 * np.abs(aff * weight[:, None, None]).max())


def test_alternating_fit_matches_dense_alternation():
    aff, weight, m, coef, _ = _problem(3)
    rows, new_coef, aff0, _, _ = recover.fit_rows(aff, weight, m, coef, iters=3)
    c = coef
    for _ in range(3):
        r, a0, c = _dense_rows(aff, weight, m, c)
        c = _dense_coef(aff, weight, m, r, a0)
    assert _rel(rows, r) < 1e-11 and _rel(aff0, a0) < 1e-11 and _rel(new_coef, c) < 1e-11


@pytest.mark.parametrize("offset", [1e-3, 1e-9])
def test_warm_start_gives_the_cold_answer(offset):
    aff, weight, m, coef, bias_scale = _problem(4)
    rows0, coef0, *_ = recover.fit_rows(aff, weight, m, coef, iters=2)
    rng = np.random.default_rng(0)
    start = rows0 * (1 + offset * rng.normal(size=rows0.shape))
    for bs in (None, bias_scale):
        cold = recover.fit_rows(aff, weight, m, coef0, bias_scale=bs, iters=1)
        warm = recover.fit_rows(aff, weight, m, coef0, bias_scale=bs, iters=1, rows=start,
                                residual=False)
        assert warm[3] is None
        for a, b in zip(warm[:3], cold[:3]):
            assert _rel(a, b) < 1e-12
        np.testing.assert_allclose(warm[4], cold[4], rtol=1e-9)
        np.testing.assert_allclose(
            recover.region_residual(aff, weight, m, *warm[:3]), cold[3],
            atol=1e-12 * np.abs(aff * weight[:, None, None]).max())


def test_unit_never_active_falls_back_to_the_dense_solve():
    aff, weight, m, coef, _ = _problem(5)
    m[:, 2] = False                                  # singular normal matrix
    rows, new_coef, aff0, resid, sigma = recover.fit_rows(aff, weight, m, coef, iters=1)
    assert np.all(np.isfinite(rows)) and np.all(np.isfinite(aff0))
    keep = np.arange(m.shape[1]) != 2
    want_rows, want_aff0, _ = _dense_rows(aff, weight, m[:, keep], coef[keep])
    assert _rel(rows[keep], want_rows) < 1e-11 and _rel(aff0, want_aff0) < 1e-11


def test_probe_points_are_the_base_and_one_coordinate_step_each():
    rng = np.random.default_rng(0)
    base, step = rng.normal(size=(5, 4)), rng.uniform(0.1, 1, size=(5, 4))
    seen = []

    def query(x):
        seen.append(x.copy())
        return x.sum(1, keepdims=True)

    regions, complete = recover.measure_points(query, base, step, np.zeros(5), np.zeros(5),
                                               np.zeros(5), remaining=None, chunk_rows=12)
    pts = np.concatenate(seen).reshape(5, 5, 4)
    assert complete and len(seen) == 3              # two regions per chunk of 12 rows
    np.testing.assert_array_equal(pts[:, 0], base)
    np.testing.assert_array_equal(pts[:, 1:], base[:, None, :] + step[:, :, None] * np.eye(4))
    np.testing.assert_array_equal(regions.f_probe[:, :, 0], pts[:, 1:].sum(2))


def test_ill_conditioned_fit_refines_to_the_dense_answer():
    # two units with the same mask but in one faint region and nearly parallel coefficients:
    # cond(design) ~ 1e5, so the normal equations alone lose ~10 digits and refinement on the
    # data's residual must win them back (to the dense solve's own cond * eps)
    aff, weight, m, coef, _ = _problem(6, noise=1e-12)
    m[:, 1] = m[:, 0]
    m[0, 1] = not m[0, 0]
    weight[0] = 1e-2 * weight.min()
    coef[1] = coef[0] + 1e-4 * np.random.default_rng(1).normal(size=coef.shape[1])
    rows, new_coef, aff0, _, _ = recover.fit_rows(aff, weight, m, coef, iters=1)
    want_rows, want_aff0, _ = _dense_rows(aff, weight, m, coef)
    assert _rel(rows, want_rows) < 1e-10
    assert np.abs(aff0 - want_aff0).max() < 1e-10 * np.abs(aff).max()
