"""The least-squares fit of :func:`fidelity.recover.fit_rows` against dense solves.

The fit never forms its design; these tests form it (the relaxed model's ``[M, 1]``, or the
alternation's ``(R k) x (h + k)``), weight it and solve it with ``np.linalg.lstsq``, on small
random problems whose weights span several decades (as the engine's do), and require agreement
to about 1e-12.
"""

import numpy as np
import pytest

from fidelity import recover


def _problem(seed, n_reg=60, h=7, k=3, d=5, noise=1e-9, edit=None):
    """Masks, coefficients, weights and region maps of the unsigned model plus a little noise
    (``edit(m)`` changes the masks before the data are made)."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(size=(n_reg, h)) < 0.5
    m[np.arange(h), np.arange(h)] = True             # every unit is active somewhere
    if edit is not None:
        edit(m)
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


def _dense_coef(aff, weight, m, rows, aff0, bias_scale=None):
    """Coefficients given rows, one output at a time, by dense weighted LS (with
    ``bias_scale``, the intercept column weighted by ``weight / bias_scale``)."""
    n_reg, k, dp1 = aff.shape
    om = np.repeat(weight[:, None], dp1, 1)
    if bias_scale is not None:
        om[:, -1] /= bias_scale
    design = (m[:, None, :] * rows.T[None] * om[:, :, None]).reshape(n_reg * dp1, -1)
    out = [np.linalg.lstsq(design, ((aff[:, j] - aff0[j]) * om).reshape(-1),
                           rcond=None)[0] for j in range(k)]
    return np.stack(out, 1)


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def _dense_relaxed(aff, weight, m, bias_scale=None):
    """``(h + 1, k, d + 1)``: the relaxed model (a free matrix per unit, then the affine term)
    by dense weighted LS, one column of the data at a time."""
    n_reg, k, q = aff.shape
    design = np.concatenate([m, np.ones((n_reg, 1))], axis=1).astype(float)
    sol = np.linalg.lstsq(design * weight[:, None],
                          aff.reshape(n_reg, k * q) * weight[:, None], rcond=None)[0]
    sol = sol.reshape(-1, k, q)
    if bias_scale is not None:
        ob = weight / bias_scale
        sol[:, :, -1] = np.linalg.lstsq(design * ob[:, None], aff[:, :, -1] * ob[:, None],
                                        rcond=None)[0]
    return sol, design


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_bias_scale", [False, True])
def test_relaxed_fit_matches_dense_lstsq(seed, with_bias_scale):
    aff, weight, m, coef, bias_scale = _problem(seed)
    bs = bias_scale if with_bias_scale else None
    rows, new_coef, aff0, sigma, _ = recover._relaxed_fit(aff, weight, m.astype(float), coef, None,
                                                       bs, 3)
    h = m.shape[1]
    sol, design = _dense_relaxed(aff, weight, m, bs)
    assert _rel(aff0, sol[h]) < 1e-12
    for l in range(h):
        # the row is the top right singular vector of the unit's matrix, oriented by coef
        _, _, vt = np.linalg.svd(sol[l, :, :-1])
        w = vt[0] * np.sign(vt[0] @ rows[l, :-1])
        assert np.abs(rows[l, :-1] - w).max() < 1e-11
        assert np.abs(new_coef[l] - sol[l, :, :-1] @ w).max() < 1e-11 * np.abs(sol[l]).max()
        c = new_coef[l]
        assert abs(rows[l, -1] - c @ sol[l, :, -1] / (c @ c)) < 1e-11 * np.abs(sol[l]).max()
    assert np.all(np.einsum("lk,lk->l", new_coef, coef) > 0)   # the masks' orientation kept
    # standard errors: the dense covariance of the relaxed design
    cov = np.diag(np.linalg.inv((design * weight[:, None] ** 2).T @ design))[:h]
    np.testing.assert_allclose(sigma[:, 2], np.sqrt(cov), rtol=1e-9)
    np.testing.assert_allclose(sigma[:, 0], np.sqrt(cov) / np.linalg.norm(new_coef, axis=1),
                               rtol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_bias_scale", [False, True])
def test_fit_is_one_alternation_from_the_relaxed_answer(seed, with_bias_scale):
    aff, weight, m, coef, bias_scale = _problem(seed)
    bs = bias_scale if with_bias_scale else None
    rows, new_coef, aff0, resid, sigma = recover.fit_rows(aff, weight, m, coef, bias_scale=bs,
                                                          iters=1)
    _, start, _, sigma_relaxed, _ = recover._relaxed_fit(aff, weight, m.astype(float), coef, None,
                                                      bs, 3)
    want_rows, want_aff0, scaled_coef = _dense_rows(aff, weight, m, start, bs)
    assert _rel(rows, want_rows) < 1e-12
    assert _rel(aff0, want_aff0) < 1e-12
    assert _rel(new_coef, _dense_coef(aff, weight, m, want_rows, want_aff0, bs)) < 1e-12
    # standard errors: the larger of the relaxed ones and the dense covariance of the rows
    # given the coefficients (which leaves out the coefficients' own uncertainty)
    design = _design(m, start, weight)
    sol = np.linalg.lstsq(design, (aff * weight[:, None, None]).reshape(-1, aff.shape[2]),
                          rcond=None)[0]
    cov = np.diag(np.linalg.inv(design.T @ design))[:m.shape[1]]
    given = np.sqrt(cov) / np.linalg.norm(sol[:m.shape[1], :-1], axis=1)
    np.testing.assert_allclose(sigma[:, 0], np.maximum(given, sigma_relaxed[:, 0]), rtol=1e-9)
    # the residual: the model with the returned rows and coefficients
    model = np.einsum("rl,lj,lq->rjq", m, new_coef, rows) + aff0[None]
    want = np.abs((aff - model) * weight[:, None, None]).max((1, 2))
    # (a difference of nearly equal numbers: good to the rounding of the weighted data)
    np.testing.assert_allclose(resid, want, atol=1e-12 * np.abs(aff * weight[:, None, None]).max())


def test_exact_data_gives_exact_rows_with_many_units_active_together():
    # the alternation of row and coefficient solves converges slowly when many units are
    # active in the same regions (784-128-10: 1e-10 after twelve passes on exact data); the
    # relaxed solve is exact in one step
    rng = np.random.default_rng(7)
    n_reg, h, k, d = 300, 60, 10, 30
    m = rng.uniform(size=(n_reg, h)) < 0.5
    coef = rng.normal(size=(h, k))
    rows = rng.normal(size=(h, d + 1))
    rows /= np.linalg.norm(rows[:, :-1], axis=1)[:, None]
    aff0 = rng.normal(size=(k, d + 1))
    aff = np.einsum("rl,lj,lq->rjq", m, coef, rows) + aff0[None]
    weight = 10.0 ** rng.uniform(0, 3, n_reg)
    start = coef * (1 + 0.1 * rng.normal(size=coef.shape))    # a rough start, as from jumps
    got_rows, got_coef, got_aff0, _, _ = recover.fit_rows(aff, weight, m, start,
                                                          bias_scale=1 + rng.uniform(size=n_reg))
    assert np.abs(got_rows - rows).max() < 1e-12
    assert np.abs(got_coef - coef).max() < 1e-12 * np.abs(coef).max()
    assert np.abs(got_aff0 - aff0).max() < 1e-12 * np.abs(aff0).max()


def test_orientation_follows_the_given_rows_or_coefficients():
    aff, weight, m, coef, _ = _problem(3)
    rows, new_coef, *_ = recover.fit_rows(aff, weight, m, coef)
    flipped, flipped_coef, *_ = recover.fit_rows(aff, weight, m, -coef)
    np.testing.assert_allclose(flipped, -rows, atol=1e-13)
    np.testing.assert_allclose(flipped_coef, -new_coef, atol=1e-13)
    again, again_coef, *_ = recover.fit_rows(aff, weight, m, coef, rows=-rows)
    np.testing.assert_allclose(again, -rows, atol=1e-13)


def test_twins_with_one_mask_fall_back_to_the_alternation():
    # two units active in exactly the same regions: the relaxed model sees only their sum, the
    # alternation still tells them apart by their coefficients (and matches a dense alternation)
    aff, weight, m, coef, _ = _problem(3, edit=lambda m: m.__setitem__((slice(None), 1),
                                                                       m[:, 0]))
    rows, new_coef, aff0, _, _ = recover.fit_rows(aff, weight, m, coef, iters=3)
    c = coef
    for _ in range(3):
        r, a0, c = _dense_rows(aff, weight, m, c)
        c = _dense_coef(aff, weight, m, r, a0)
    assert _rel(rows, r) < 1e-11 and _rel(aff0, a0) < 1e-11 and _rel(new_coef, c) < 1e-11


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
    # two units with the same mask but in a few faint regions: cond(design) ~ 1e4-1e5, so the
    # normal equations alone lose ~9 digits and refinement on the data's residual must win
    # them back (to the dense solve's own cond * eps)
    def edit(m):
        m[:, 1] = m[:, 0]
        m[:3, 1] = ~m[:3, 0]

    aff, weight, m, coef, _ = _problem(6, noise=1e-12, edit=edit)
    weight[:3] = 3e-2 * weight.min()
    rows, new_coef, aff0, _, _ = recover.fit_rows(aff, weight, m, coef)
    sol, _ = _dense_relaxed(aff, weight, m)
    assert np.abs(aff0 - sol[-1]).max() < 1e-10 * np.abs(aff).max()
    model = np.einsum("lk,lq->lkq", new_coef, rows)
    # (rank-one parts of the dense answer: compare the split units' matrices on the w part)
    for l in range(m.shape[1]):
        u, sv, vt = np.linalg.svd(sol[l, :, :-1])
        best = sv[0] * np.outer(u[:, 0], vt[0])
        assert np.abs(model[l, :, :-1] - best).max() < 1e-9 * np.abs(sol[l]).max()


def test_coefficient_errors_follow_each_regions_own_noise():
    # the weights claim one noise level, but a few regions are 30x noisier (as the digits
    # demo's far regions were): the coefficients' spread over noise draws is what
    # residual_and_coef_error reports, where the least-squares figure misses it
    rng = np.random.default_rng(4)
    n_reg, h, k, d = 40, 5, 3, 6
    m = rng.uniform(size=(n_reg, h)) < 0.5
    m[np.arange(h), np.arange(h)] = True
    m[:, 0] = False
    m[3, 0] = True                                    # unit 0 is on in region 3 only
    coef, rows, aff0 = rng.normal(size=(h, k)), rng.normal(size=(h, d + 1)), rng.normal(size=(k, d + 1))
    rows /= np.linalg.norm(rows[:, :-1], axis=1)[:, None]
    weight = 10.0 ** rng.uniform(0, 2, n_reg)
    bias_scale = 1.0 + 20 * rng.uniform(size=n_reg)
    level = np.ones(n_reg)
    level[[3, 7, 11]] = 30.0
    sd = np.repeat((level / weight)[:, None], d + 1, 1)
    sd[:, -1] *= bias_scale
    clean = np.einsum("rl,lj,lq->rjq", m, coef, rows) + aff0[None]
    fits, reported = [], []
    for _ in range(300):
        aff = clean + sd[:, None, :] * rng.normal(size=clean.shape)
        fits.append(_dense_coef(aff, weight, m, rows, aff0, bias_scale))
        reported.append(recover.residual_and_coef_error(aff, weight, m, rows, coef, aff0,
                                                        bias_scale)[1])
    spread = np.std(np.array(fits), 0).mean(1)            # (h,) over draws, outputs pooled
    ratio = np.mean(reported, 0) / spread
    assert np.all((ratio > 0.7) & (ratio < 1.4)), ratio
    grad = rows.copy()
    grad[:, -1] = 0.0
    bread = ((grad @ grad.T) * (m.T @ (m * weight[:, None] ** 2))
             + np.outer(rows[:, -1], rows[:, -1]) * (m.T @ (m * (weight / bias_scale)[:, None] ** 2)))
    least_squares = np.sqrt(np.diag(np.linalg.inv(bread)))
    assert spread[0] / least_squares[0] > 10           # the weights' own figure misses unit 0
