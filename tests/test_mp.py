"""The mpmath rung: mp oracle, mp forward pass, refinement of a float64 extraction."""

from fractions import Fraction

import mpmath
import numpy as np
import pytest

import fidelity as F
from fidelity import mp


def _mpf_array(x, shift=None):
    out = np.empty(np.shape(x), object)
    vals = [mpmath.mpf(v) for v in np.asarray(x, np.float64).reshape(-1).tolist()]
    if shift is not None:
        vals = [v + shift for v in vals]
    out.reshape(-1)[:] = vals
    return out


def _exact(v) -> Fraction:
    s, man, e, _ = v._mpf_              # no mpf(v): that would round to the current precision
    return (-1) ** s * Fraction(int(man)) * Fraction(2) ** int(e)


# ---------------------------------------------------------------------- oracle
def test_oracle_mp_counts_validates_and_keeps_global_precision():
    net = F.ReLUNetwork.random(0, [4, 3, 2])
    before = mpmath.mp.dps
    oracle = F.Oracle(net, precision="mp", dps=40, budget=6)
    y = oracle.query_mp(np.ones((2, 4)))             # float64 rows are converted exactly
    assert y.shape == (2, 2) and y.dtype == object
    assert all(type(v) is mpmath.mpf for v in y.reshape(-1))
    assert oracle.queries == 2 and oracle.paid == 2
    assert oracle(np.ones((3, 4))).dtype == np.float64   # the float64 door is unchanged
    assert oracle.queries == 5
    with pytest.raises(F.QueryBudgetExceeded):
        oracle.query_mp(np.ones((2, 4)))
    assert oracle.queries == 5 and oracle.paid == 5      # refused before sending
    assert mpmath.mp.dps == before


def test_oracle_mp_asks_at_its_precision():
    seen = []

    def victim(x):
        seen.append(mpmath.mp.dps)
        return x.sum(1)

    oracle = F.Oracle(victim, input_dim=3, precision="mp", dps=60)
    third = mpmath.mpf(1) / 3
    y = oracle.query_mp(np.full((1, 3), third, object))
    assert seen == [60] and oracle.output_dim == 1 and y.shape == (1, 1)


@pytest.mark.parametrize("answer", [
    lambda x: np.full((x.shape[0], 2), mpmath.mpf("nan"), object),
    lambda x: np.full((x.shape[0], 2), mpmath.inf, object),
    lambda x: np.zeros((x.shape[0] + 1, 2)),
    lambda x: np.array([["a", "b"]] * x.shape[0], object),
])
def test_oracle_mp_rejects_bad_answers(answer):
    oracle = F.Oracle(answer, input_dim=3, output_dim=2, precision="mp")
    with pytest.raises(F.OracleError):
        oracle.query_mp(np.ones((2, 3)))


def test_oracle_mp_misuse(tmp_path):
    with pytest.raises(ValueError):
        F.Oracle(F.ReLUNetwork.random(0, [3, 2, 1]), precision="quad")
    with pytest.raises(F.OracleError):
        F.Oracle(F.ReLUNetwork.random(0, [3, 2, 1])).query_mp(np.ones((1, 3)))
    with pytest.raises(ValueError, match="journal"):
        F.Oracle(F.ReLUNetwork.random(0, [3, 2, 1]), precision="mp",
                 journal=tmp_path / "j.fj")
    with pytest.raises(ValueError):
        F.Oracle(F.ReLUNetwork.random(0, [3, 2, 1]), precision="mp").query_mp(np.ones((1, 4)))


# ---------------------------------------------------------------------- mp forward pass
def test_network_mp_agrees_with_float64_and_exact_arithmetic():
    net = F.ReLUNetwork.random(0, [10, 8, 3])
    x = np.random.default_rng(1).normal(size=(6, 10))
    with mpmath.workdps(50):
        y = net(_mpf_array(x))                      # float64 weights, mpf inputs: mpmath
        assert y.dtype == object and y.shape == (6, 3)
        np.testing.assert_allclose(y.astype(np.float64), net(x), rtol=1e-15, atol=1e-15)
        xs = _mpf_array(x, shift=mpmath.mpf(1) / 3)  # inputs with no float64 representation
        ys = net(xs)
    w = [[[Fraction(float(v)) for v in row] for row in m] for m in net.weights]
    b = [[Fraction(float(v)) for v in vec] for vec in net.biases]
    for r in range(xs.shape[0]):
        xr = [_exact(v) for v in xs[r]]
        hid = [max(sum(p * q for p, q in zip(row, xr)) + c, 0) for row, c in zip(w[0], b[0])]
        out = [sum(p * q for p, q in zip(row, hid)) + c for row, c in zip(w[1], b[1])]
        for j in range(3):
            assert abs(_exact(ys[r, j]) - out[j]) <= Fraction(1, 10 ** 48) * max(1, abs(out[j]))


def test_network_with_mpf_weights_evaluates_float64_and_mpf_inputs():
    net = F.ReLUNetwork.random(2, [5, 4, 2])
    with mpmath.workdps(50):
        net_mp = F.ReLUNetwork([_mpf_array(w) for w in net.weights],
                               [_mpf_array(b) for b in net.biases])
        x = np.random.default_rng(0).normal(size=(7, 5))
        y = net_mp(x)
        assert y.dtype == object
        np.testing.assert_allclose(y.astype(np.float64), net(x), rtol=1e-15, atol=1e-15)
        assert np.all(net_mp(_mpf_array(x)) == net(_mpf_array(x)))


# ---------------------------------------------------------------------- refinement
@pytest.fixture(scope="module", params=[(0, (10, 8, 1)), (1, (64, 16, 10))],
            ids=["10-8-1", "64-16-10"])
def extracted(request):
    import jax
    seed, sizes = request.param
    victim = F.ReLUNetwork.random(seed, list(sizes))
    oracle = F.Oracle(victim, precision="mp")
    with jax.enable_x64(True):
        result = F.extract(oracle, precision="float64")
    assert result.status == "ok"
    return victim, oracle, result


def test_refine_reaches_fifty_digits(extracted):
    victim, oracle, result = extracted
    before = mpmath.mp.dps
    spent = oracle.queries
    refined = mp.refine(result, oracle, dps=50)
    assert mpmath.mp.dps == before
    report = F.evaluate(victim, refined.network, num_samples=1000)
    assert report.matched == victim.sizes[1] and report.param_error < 1e-40
    assert report.max_rel_error < 1e-14
    w = refined.network.weights[0]
    assert w.dtype == object and type(w[0, 0]) is mpmath.mpf
    assert refined.stage_queries["mp"] == oracle.queries - spent == refined.queries - spent
    assert refined.stage_queries["mp"] <= 2 * victim.num_params   # ~one row per parameter
    assert all(n.error_estimate < 1e-40 for n in refined.neurons)
    assert refined.notes[-1].startswith("mp: refined")


def test_refine_only_the_named_units(extracted):
    victim, oracle, result = extracted
    refined = mp.refine(result, oracle, dps=50, units=[1])
    net64, net = result.network, refined.network
    for i in range(net64.weights[0].shape[0]):
        same = np.all(net.weights[0][i] == net64.weights[0][i])
        assert same == (i != 1)
    # unit 1 alone: its normalised parameters are exact to ~50 digits
    with mpmath.workdps(80):
        pairs, *_ = F.metrics.match_units(victim, net64)
        vi = next(p[0] for p in pairs if p[1] == 1)
        row_v = [mpmath.mpf(v) for v in list(victim.weights[0][vi]) + [victim.biases[0][vi]]]
        row_e = list(net.weights[0][1]) + [net.biases[0][1]]
        nv = mpmath.sqrt(mpmath.fsum(v * v for v in row_v))
        ne = mpmath.sqrt(mpmath.fsum(v * v for v in row_e))
        assert max(abs(p / nv - q / ne) for p, q in zip(row_v, row_e)) < 1e-40
    assert refined.neurons[1].error_estimate < 1e-40
    assert refined.neurons[0].error_estimate == result.neurons[0].error_estimate


def test_refine_budget_gives_partial_result():
    import jax
    victim = F.ReLUNetwork.random(0, [10, 8, 1])
    oracle = F.Oracle(victim, precision="mp")
    with jax.enable_x64(True):
        result = F.extract(oracle, precision="float64")
    oracle.budget = oracle.queries + 40
    with pytest.raises(F.QueryBudgetExceeded) as info:
        mp.refine(result, oracle, dps=50, chunk_regions=2)
    partial = info.value.result
    assert partial.status == "partial" and partial.queries <= oracle.budget
    assert partial.network.weights[0].dtype == object
    assert "refined" in partial.notes[-1]


def test_refine_misuse():
    import jax
    victim = F.ReLUNetwork.random(0, [4, 3, 1])
    oracle = F.Oracle(victim)
    with jax.enable_x64(True):
        result = F.extract(oracle, precision="float64")
    with pytest.raises(ValueError, match="precision='mp'"):
        mp.refine(result, oracle)
    with pytest.raises(ValueError):
        mp.refine(result, F.Oracle(victim, precision="mp"), units=[7])


def test_extract_precision_mp_end_to_end():
    victim = F.ReLUNetwork.random(0, [10, 8, 1])
    oracle = F.Oracle(victim, precision="mp")
    before = mpmath.mp.dps
    result = F.extract(oracle, precision="mp", dps=50)
    assert result.status == "ok" and result.queries == oracle.queries
    assert isinstance(result.network.weights[0][0, 0], mpmath.mpf)
    assert F.evaluate(victim, result.network, num_samples=1000).param_error < 1e-40
    assert mpmath.mp.dps == before
    with pytest.raises(ValueError, match="precision='mp'"):
        F.extract(F.Oracle(victim), precision="mp")


def test_extract_auto_escalates_only_flagged_units():
    victim = F.ReLUNetwork.random(0, [10, 8, 1])
    # float64 oracle: nothing to escalate to
    plain = F.extract(F.Oracle(victim), polish_tol=0.0)
    assert plain.network.weights[0].dtype == np.float64
    # mp oracle, every unit flagged (polish_tol=0): all refined in mp
    result = F.extract(F.Oracle(victim, precision="mp"), polish_tol=0.0)
    assert any("flagged as imprecise" in n for n in result.notes)
    assert F.evaluate(victim, result.network, num_samples=1000).param_error < 1e-40
