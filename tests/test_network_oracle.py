import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fidelity as F
from fidelity import network


def test_network_shapes_save_load(tmp_path):
    net = F.ReLUNetwork.random(3, [6, 5, 2])
    assert net.sizes == (6, 5, 2)
    assert net.num_params == 6 * 5 + 5 + 5 * 2 + 2
    x = np.random.default_rng(0).normal(size=(7, 6))
    y = net(x)
    assert y.shape == (7, 2)
    ref = np.maximum(x @ net.weights[0].T + net.biases[0], 0) @ net.weights[1].T + net.biases[1]
    np.testing.assert_allclose(y, ref, rtol=1e-14, atol=1e-14)
    net.save(tmp_path / "n.npz")
    back = F.ReLUNetwork.load(tmp_path / "n.npz")
    np.testing.assert_array_equal(back(x), y)


def test_padded_rows_are_few_shapes_that_fit_the_batch():
    rows = [network.padded_rows(n) for n in range(1, 5000)]
    assert sorted(set(rows)) == [1, 2, 4, 8, 32, 128, 512, 2048, 8192]
    assert all(n <= r and (n <= 8 or r < 4 * n) for n, r in enumerate(rows, 1))
    assert all(network.padded_rows(r) == r for r in set(rows))      # a bucket is its own
    assert [network.padded_rows(n, 4) for n in (1, 3, 9)] == [4, 4, 32]


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), sizes=st.lists(st.integers(1, 40), min_size=2, max_size=5),
       f32=st.booleans(), n=st.integers(5, 600))
def test_a_rows_answer_is_the_same_in_any_batch_of_five_rows_or_more(seed, sizes, f32, n):
    # padded_rows steps 4x past 8 rows, and a large batch goes in chunks: neither may change
    # an answer, or the queries of every extraction would move with the padding
    net = F.ReLUNetwork.random(seed, sizes, dtype=np.float32 if f32 else np.float64)
    x = np.random.default_rng(seed).normal(size=(n, sizes[0])) * 10
    whole = net(x)
    for m in sorted({5, 9, 33, n // 2, n}):
        if m >= 5:
            np.testing.assert_array_equal(net(x[:m]), whole[:m])
    old = network.CHUNK_ROWS
    try:
        network.CHUNK_ROWS = 16      # chunks of 16, the last of 1-16 rows padded to 8 or 32
        for m in sorted({17, 18, 19, 20, 36, n}):
            if m <= n:
                np.testing.assert_array_equal(net(x[:m]), whole[:m])
    finally:
        network.CHUNK_ROWS = old


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), sizes=st.lists(st.integers(1, 60), min_size=2, max_size=5),
       f32=st.booleans(), n=st.sampled_from([1, 3, 20, 300]))
def test_the_quicker_cpu_compilation_gives_the_answers_of_plain_jit(seed, sizes, f32, n):
    # compiling.jit compiles with other loop emitters: an answer that moved would move every
    # extraction's queries
    import jax
    net = F.ReLUNetwork.random(seed, sizes, dtype=np.float32 if f32 else np.float64)
    x = np.zeros((network.padded_rows(n), sizes[0]), net.dtype)
    x[:n] = np.random.default_rng(seed).normal(size=(n, sizes[0])) * 10
    with jax.enable_x64(not f32):
        plain = np.asarray(jax.jit(network.forward.__wrapped__)(net.weights, net.biases, x))
    np.testing.assert_array_equal(net(x[:n]), plain[:n])


def test_compiling_jit_falls_back_where_options_are_refused_or_the_call_is_traced(monkeypatch):
    import jax
    import jax.numpy as jnp
    from fidelity import compiling
    double = compiling.jit(lambda a: jnp.maximum(2.0 * a, 0.0))
    assert float(jax.jit(lambda a: double(a) + 1.0)(jnp.float64(3.0))) == 7.0   # nested
    monkeypatch.setattr(compiling, "CPU_OPTIONS", {"xla_no_such_option_anywhere": True})
    monkeypatch.setattr(compiling, "_REFUSED", [])
    triple = compiling.jit(lambda a: 3.0 * a)
    assert float(triple(jnp.float64(2.0))) == 6.0 and compiling._REFUSED == [True]
    assert float(triple(jnp.float64(1.0))) == 3.0


def test_network_rejects_bad_shapes():
    with pytest.raises(ValueError):
        F.ReLUNetwork([np.zeros((3, 2))], [np.zeros(2)])
    with pytest.raises(ValueError):
        F.ReLUNetwork([np.zeros((3, 2)), np.zeros((1, 4))], [np.zeros(3), np.zeros(1)])


def test_oracle_counts_and_budget():
    oracle = F.Oracle(F.ReLUNetwork.random(0, [4, 3, 1]), budget=10)
    oracle(np.zeros((6, 4)))
    assert oracle.queries == 6 and oracle.remaining == 4
    with pytest.raises(F.QueryBudgetExceeded):
        oracle(np.zeros((5, 4)))
    assert oracle.queries == 6  # a refused batch is not sent, not counted


def test_oracle_accepts_flat_answers_for_one_output():
    oracle = F.Oracle(lambda x: x.sum(1), input_dim=3)
    assert oracle(np.ones((2, 3))).shape == (2, 1)


@pytest.mark.parametrize("answer", [
    lambda x: np.full((x.shape[0], 2), np.nan),
    lambda x: np.full((x.shape[0], 2), np.inf),
    lambda x: np.zeros((x.shape[0] + 1, 2)),
    lambda x: np.zeros((x.shape[0], 2, 2)),
    lambda x: "nonsense",
])
def test_oracle_rejects_bad_answers(answer):
    oracle = F.Oracle(answer, input_dim=3, output_dim=2)
    with pytest.raises(F.OracleError):
        oracle(np.ones((2, 3)))


def test_oracle_rejects_changing_width():
    widths = iter([2, 3])
    oracle = F.Oracle(lambda x: np.zeros((x.shape[0], next(widths))), input_dim=3)
    oracle(np.ones((1, 3)))
    with pytest.raises(F.OracleError):
        oracle(np.ones((1, 3)))


def test_oracle_needs_input_dim_for_callables():
    with pytest.raises(ValueError):
        F.Oracle(lambda x: x)
