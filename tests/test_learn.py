import numpy as np
import pytest

import fidelity as F

FAST = dict(steps=300)   # few Adam steps: these tests check behaviour, not the last digit


def _victim_and_pool(seed=0, sizes=(8, 6, 3), n_pool=200):
    victim = F.ReLUNetwork.random(seed, list(sizes))
    pool = np.random.default_rng(seed + 100).normal(size=(n_pool, sizes[0]))
    return victim, pool


def _rows(net):
    rows = np.concatenate([net.weights[0], net.biases[0][:, None]], 1)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("strategy", ["random", "pool", "active"])
def test_learn_spends_at_most_its_budget(strategy):
    victim, pool = _victim_and_pool()
    oracle = F.Oracle(victim)
    result = F.learn(oracle, hidden=5, budget=400, pool=pool, strategy=strategy, seed=1, **FAST)
    assert isinstance(result, F.Extraction) and result.status == "learned"
    assert result.queries == oracle.queries <= 400
    assert sum(result.stage_queries.values()) == result.queries
    assert result.stage_queries["validation"] > 0
    assert result.network.sizes == (8, 5, 3) and result.hidden_size == 5
    assert result.network.dtype == np.float64


def test_learn_counts_only_its_own_rows_on_a_used_oracle():
    victim, _ = _victim_and_pool()
    oracle = F.Oracle(victim, budget=1000)
    oracle(np.zeros((7, 8)))
    result = F.learn(oracle, hidden=6, budget=200, **FAST)
    assert result.queries == 200 and oracle.queries == 207


def test_learn_is_deterministic_for_a_seed():
    victim, pool = _victim_and_pool()
    a = F.learn(F.Oracle(victim), hidden=6, budget=300, pool=pool, strategy="active", seed=3,
                **FAST)
    b = F.learn(F.Oracle(victim), hidden=6, budget=300, pool=pool, strategy="active", seed=3,
                **FAST)
    c = F.learn(F.Oracle(victim), hidden=6, budget=300, pool=pool, strategy="active", seed=4,
                **FAST)
    for wa, wb in zip(a.network.weights + a.network.biases, b.network.weights + b.network.biases):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.network.weights[0], c.network.weights[0])


def test_learned_copy_agrees_with_a_small_victim():
    victim, _ = _victim_and_pool()
    result = F.learn(F.Oracle(victim), hidden=6, budget=2000, seed=0, steps=1500)
    rep = F.evaluate(victim, result.network, num_samples=5000)
    assert rep.fidelity >= 0.95, rep
    assert rep.param_error == float("inf") or rep.param_error > 1e-6   # never exact


def test_pool_and_active_run_past_a_small_pool():
    victim, pool = _victim_and_pool(n_pool=40)
    for strategy in ("pool", "active"):
        oracle = F.Oracle(victim)
        result = F.learn(oracle, hidden=6, budget=300, pool=pool, strategy=strategy, **FAST)
        assert result.queries == 300


def test_one_output_victim():
    victim, pool = _victim_and_pool(sizes=(6, 4, 1))
    result = F.learn(F.Oracle(victim), hidden=4, budget=1500, pool=pool, strategy="active",
                     steps=1000)
    assert F.evaluate(victim, result.network, inputs=pool).fidelity >= 0.9


def test_misuse_is_refused_with_a_message():
    victim, pool = _victim_and_pool()
    with pytest.raises(ValueError, match="strategy"):
        F.learn(F.Oracle(victim), hidden=4, budget=100, strategy="greedy")
    with pytest.raises(ValueError, match="pool"):
        F.learn(F.Oracle(victim), hidden=4, budget=100, strategy="active")
    with pytest.raises(ValueError, match="pool"):
        F.learn(F.Oracle(victim), hidden=4, budget=100, pool=pool[:, :3], strategy="pool")
    with pytest.raises(ValueError, match="remaining"):
        F.learn(F.Oracle(victim, budget=50), hidden=4, budget=100)
    with pytest.raises(ValueError, match="hidden"):
        F.learn(F.Oracle(victim), hidden=0, budget=100)
    with pytest.raises(TypeError):
        F.learn(F.Oracle(victim), hidden=4, budget=100, not_an_option=1)
    with pytest.raises(TypeError):
        F.finetune(victim, F.Oracle(victim), budget=100)


def _partial(victim, fraction, seed=0):
    full = F.extract(F.Oracle(victim), seed=seed)
    with pytest.raises(F.QueryBudgetExceeded) as stop:
        F.extract(F.Oracle(victim, budget=int(fraction * full.queries)), seed=seed)
    return stop.value.result


def test_finetune_keeps_recovered_hyperplanes_and_completes_the_rest():
    victim, pool = _victim_and_pool(sizes=(20, 10, 4), n_pool=500)
    partial = _partial(victim, 0.3)     # before 320 of the 839 queries check the result
    assert partial.network is not None and 0 < partial.hidden_size
    oracle = F.Oracle(victim)
    result = F.finetune(partial, oracle, budget=2000, pool=pool, hidden=10, seed=0, steps=1500)
    assert result.status == "finetuned"
    assert result.queries == partial.queries + oracle.queries
    assert sum(result.stage_queries.values()) == result.queries
    # every recovered hyperplane is still there, with both orientations, to rounding
    before, after = _rows(partial.network), _rows(result.network)
    for r in before:
        for sign in (1, -1):
            assert np.abs(after - sign * r).max(1).min() <= 1e-12
    rep0 = F.evaluate(victim, partial.network, inputs=pool)
    rep = F.evaluate(victim, result.network, num_samples=5000)
    assert rep.fidelity >= 0.95 and rep.fidelity > rep0.fidelity, (rep0, rep)


def test_finetune_from_an_extraction_without_a_network():
    victim, pool = _victim_and_pool()
    with pytest.raises(F.QueryBudgetExceeded) as stop:
        F.extract(F.Oracle(victim, budget=5))
    partial = stop.value.result
    assert partial.network is None
    with pytest.raises(ValueError, match="hidden"):
        F.finetune(partial, F.Oracle(victim), budget=200, pool=pool)
    result = F.finetune(partial, F.Oracle(victim), budget=200, pool=pool, hidden=6, **FAST)
    assert result.hidden_size == 6 and result.queries == partial.queries + 200


def test_finetune_of_a_verified_extraction_keeps_one_orientation():
    victim, _ = _victim_and_pool()
    full = F.extract(F.Oracle(victim))
    result = F.finetune(full, F.Oracle(victim), budget=300, seed=2, **FAST)
    assert result.hidden_size == 6 + 8                 # default: found + 8 spare units
    np.testing.assert_allclose(_rows(result.network)[:6], _rows(full.network), atol=1e-14)
    a = F.finetune(full, F.Oracle(victim), budget=300, seed=2, **FAST)
    np.testing.assert_array_equal(a.network.weights[1], result.network.weights[1])
