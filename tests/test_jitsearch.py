"""The in-jit kink search against the host-driven one through a counting oracle.

Both paths evaluate the victim on the same batch shapes and round their float64 arithmetic the
same way, so the kinks, flags and row counts are compared exactly (positions also to 1e-9
relative, the bar that matters downstream).
"""

import numpy as np
import pytest

import fidelity as F
from fidelity import search
from fidelity.errors import OracleError
from fidelity.jitsearch import search_lines_jit


def _setup(sizes, n_lines, seed, dtype=np.float64):
    net = F.ReLUNetwork.random(seed, sizes, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    d = sizes[0]
    x0 = rng.normal(size=(n_lines, d))
    v = rng.normal(size=(n_lines, d))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    t_max = 100 * np.sqrt(d)
    delta = 1e-6 * t_max   # what the pipeline uses
    kw = dict(delta=delta, min_delta=delta * 1e-6, noise_factor=256, max_rounds=200)
    return net, x0, v, t_max, kw


def _host(net, x0, v, t_max, budget=None, **kw):
    oracle = F.Oracle(net, budget=budget)
    try:
        lines = search.search_lines(oracle, x0, v, t_max, **kw)
    except F.QueryBudgetExceeded:
        lines = None
    return lines, oracle.queries


def _assert_same(host, jit, t_max):
    assert len(host) == len(jit)
    for a, b in zip(host, jit):
        assert a.t.size == b.t.size
        np.testing.assert_allclose(b.t, a.t, rtol=1e-9, atol=1e-9 * t_max)
        np.testing.assert_array_equal(b.verified, a.verified)
        assert b.unresolved == a.unresolved
        np.testing.assert_allclose(b.slopes, a.slopes, rtol=1e-9, atol=0, equal_nan=True)
        # same batch shapes, same rounding: in fact bit for bit
        np.testing.assert_array_equal(b.t, a.t)


@pytest.mark.parametrize("sizes,n_lines,seed", [
    ([10, 8, 1], 4, 1), ([64, 16, 10], 4, 2), ([64, 16, 10], 1, 3), ([784, 32, 10], 4, 4)])
def test_same_kinks_and_rows_as_host(sizes, n_lines, seed):
    net, x0, v, t_max, kw = _setup(sizes, n_lines, seed)
    host, queries = _host(net, x0, v, t_max, **kw)
    jit, rows, complete = search_lines_jit(net, x0, v, t_max, **kw)
    assert complete
    _assert_same(host, jit, t_max)
    assert rows == queries
    assert sum(line.t.size for line in jit) >= 0.8 * n_lines * sizes[1]


def test_float32_victim():
    net, x0, v, t_max, kw = _setup([10, 8, 1], 4, 5, dtype=np.float32)
    kw["noise_factor"] = 2.0 ** 30   # float32 answers: trust them to ~2^-23 relative
    host, queries = _host(net, x0, v, t_max, **kw)
    jit, rows, complete = search_lines_jit(net, x0, v, t_max, **kw)
    assert complete and rows == queries
    _assert_same(host, jit, t_max)


def test_budget_stops_before_the_batch_that_would_pass_it():
    net, x0, v, t_max, kw = _setup([10, 8, 1], 4, 1)
    _, full = _host(net, x0, v, t_max, **kw)
    for budget in (0, 3, 16, 17, full // 3, full // 2 + 1, full - 1, full):
        host, queries = _host(net, x0, v, t_max, budget=budget, **kw)
        jit, rows, complete = search_lines_jit(net, x0, v, t_max, row_budget=budget, **kw)
        assert complete == (host is not None)
        assert rows == queries <= budget
    assert complete and rows == full


def test_capacity_grows_to_the_same_result():
    net, x0, v, t_max, kw = _setup([10, 8, 1], 4, 1)
    host, queries = _host(net, x0, v, t_max, **kw)
    jit, rows, complete = search_lines_jit(net, x0, v, t_max, capacity=16, **kw)
    assert complete and rows == queries
    _assert_same(host, jit, t_max)


def test_capacity_limit_reports_unresolved():
    net, x0, v, t_max, kw = _setup([10, 8, 1], 4, 1)
    jit, rows, complete = search_lines_jit(net, x0, v, t_max, capacity=16, max_capacity=16,
                                           **kw)
    assert complete
    assert sum(line.unresolved for line in jit) > 0
    # what was found before the stop is real: every kink is a true one
    w, b = net.weights[0], net.biases[0]
    for line in jit:
        truth = -(w @ line.x0 + b) / (w @ line.v)
        assert all(np.abs(truth - t).min() < 1e-6 * t_max for t in line.t)


def test_max_rounds_and_max_open_as_host():
    net, x0, v, t_max, kw = _setup([10, 8, 1], 4, 1)
    for extra in (dict(max_rounds=5), dict(max_open=7)):
        args = dict(kw, **extra)
        host, queries = _host(net, x0, v, t_max, **args)
        jit, rows, complete = search_lines_jit(net, x0, v, t_max, **args)
        assert complete and rows == queries
        assert sum(line.unresolved for line in jit) > 0
        _assert_same(host, jit, t_max)


def test_nonfinite_answers_and_misuse():
    net, x0, v, t_max, kw = _setup([10, 8, 1], 4, 1)
    big = F.ReLUNetwork([w * 1e200 for w in net.weights], [b * 1e200 for b in net.biases])
    with pytest.raises(OracleError):
        search_lines_jit(big, x0, v, t_max, **kw)
    with pytest.raises(ValueError):
        search_lines_jit(net, x0[:, :5], v, t_max, **kw)
    with pytest.raises(ValueError):
        search_lines_jit(lambda x: x, x0, v, t_max, **kw)


SCRIPT = r"""
import json, jax, numpy as np, fidelity as F
from fidelity.jitsearch import search_lines_jit
with jax.enable_x64(True):
    net = F.ReLUNetwork.random(2, [64, 16, 10])
    rng = np.random.default_rng(7)
    x0 = rng.normal(size=(3, 64)); v = rng.normal(size=(3, 64))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    t_max = 800.0
    lines, rows, complete = search_lines_jit(net, x0, v, t_max, delta=8e-4, min_delta=8e-10,
                                             noise_factor=256, max_rounds=200)
    print(json.dumps(dict(devices=jax.device_count(), rows=rows, complete=complete,
                          t=[line.t.tolist() for line in lines],
                          ok=[line.verified.tolist() for line in lines])))
"""


def test_four_devices_same_kinks_same_rows(run_on_devices):
    one, four = run_on_devices(SCRIPT, 1), run_on_devices(SCRIPT, 4)
    assert one["devices"] == 1 and four["devices"] == 4
    assert one["complete"] and four["complete"]
    assert four["rows"] == one["rows"]
    assert four["ok"] == one["ok"]
    for a, b in zip(one["t"], four["t"]):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-9 * 800.0)


def test_extract_with_jit_search_matches_host_search():
    victim = F.ReLUNetwork.random(3, [64, 16, 10])
    host = F.extract(F.Oracle(victim), seed=0, jit_search=False)
    oracle = F.Oracle(victim)
    jitted = F.extract(oracle, seed=0, jit_search=True)
    assert jitted.queries == host.queries == oracle.queries == oracle.paid
    assert jitted.stage_queries == host.stage_queries
    np.testing.assert_array_equal(jitted.network.weights[0], host.network.weights[0])


def test_opaque_victim_and_the_smallest_starting_capacity_give_the_host_kinks():
    # the search sees the victim only as apply(params, x): here a closure over a dict of
    # parameters it cannot interpret; it starts with slots for 1 kink per line and grows them
    # (the default capacity is every other test's)
    from fidelity.network import forward
    from fidelity.oracle import JaxFunction
    net, x0, v, t_max, kw = _setup([64, 24, 10], 2, 6)
    opaque = JaxFunction(apply=lambda p, x: forward(p["a"], p["b"], x),
                         params={"a": net.weights, "b": net.biases}, dtype=np.dtype(np.float64),
                         input_dim=64, output_dim=10)
    host, queries = _host(net, x0, v, t_max, **kw)
    jit, rows, complete = search_lines_jit(opaque, x0, v, t_max, capacity=1, **kw)
    assert complete and rows == queries
    _assert_same(host, jit, t_max)


def test_the_oracle_hands_over_an_opaque_function_only():
    net = F.ReLUNetwork.random(0, [6, 4, 2])
    fn = F.Oracle(net).jax_function()
    assert (fn.input_dim, fn.output_dim) == (6, 2)
    assert not hasattr(fn, "weights") and not hasattr(fn, "sizes")
    assert F.Oracle(net, chunk_size=8).jax_function() is None     # chunks must be honoured
    assert F.Oracle(lambda x: net(x), input_dim=6).jax_function() is None
