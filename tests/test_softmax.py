"""Victims that answer softmax probabilities (issue 15): extracted up to a constant per input."""

import numpy as np
import pytest

import fidelity as F
from fidelity import probabilities as P
from fidelity import victims
from fidelity.errors import OracleError, UnsupportedArchitecture
from fidelity.probabilities import SaturatedProbabilities


def _check(net, result, scale=(1.0, 3.0)):
    """The extraction equals the centred victim; probabilities and labels agree."""
    assert result.status == "ok"
    rep = F.evaluate(P.centre(net), result.network, num_samples=4000, seed=5)
    assert rep.missing == 0 and rep.extra == 0
    assert rep.param_error <= 1e-8, rep
    rng = np.random.default_rng(7)
    for s in scale:
        x = rng.normal(size=(4000, net.input_dim)) * s
        p, ph = P.softmax(net(x)), P.softmax(result.network(x))
        assert np.abs(p - ph).max() <= 1e-10
        assert np.array_equal(p.argmax(1), ph.argmax(1))


@pytest.mark.parametrize("seed,sizes", [(0, [10, 6, 3]), (1, [16, 8, 4]), (2, [12, 5, 2]),
                                        (3, [20, 10, 5])])
def test_softmax_answers_are_detected_and_extracted_up_to_a_constant(seed, sizes):
    net = F.ReLUNetwork.random(seed, sizes)
    oracle = F.Oracle(P.softmax_victim(net), input_dim=sizes[0])
    result = F.extract(oracle, seed=seed)
    assert oracle.answers == "softmax" and oracle.detected
    event, *restarts = result.events_of(F.Kind.PROBABILITIES)
    # (rows saturate in the first noise floor and the plan's probes: counted, never used) a
    # row that saturated on a line all the same (the plan probes 8 rays) restarted the run
    assert len(restarts) <= 2 and all("restarting" in e.message for e in restarts)
    assert "detected" in event.message and event.data["detected"]
    _check(net, result)
    # every row the engine used was counted, the planning and the noise floor included
    assert result.queries == oracle.queries == sum(result.stage_queries.values())


def test_declared_softmax_and_logits_victims():
    net = F.ReLUNetwork.random(4, [12, 6, 3])
    auto = F.extract(F.Oracle(P.softmax_victim(net), input_dim=12), seed=1)
    declared_oracle = F.Oracle(P.softmax_victim(net), input_dim=12, answers="softmax")
    declared = F.extract(declared_oracle, seed=1)
    assert not declared_oracle.detected
    assert declared.queries == auto.queries - 48      # no noise floor before the plan
    _check(net, declared)
    # a callable answering logits is left alone: same queries as the network itself
    plain = F.Oracle(lambda x: net(x), input_dim=12)
    logits = F.extract(plain, seed=1)
    reference = F.extract(F.Oracle(net), seed=1)
    assert plain.answers == "logits" and not logits.events_of(F.Kind.PROBABILITIES)
    assert logits.queries == reference.queries
    # one output is never a probability row; declared softmax must get probabilities
    assert F.Oracle(lambda x: np.ones((x.shape[0], 1)), input_dim=3).scores(
        np.zeros((2, 3)))[0].shape == (2, 1)
    with pytest.raises(OracleError, match="probabilities"):
        F.Oracle(lambda x: net(x), input_dim=12, answers="softmax")(np.ones((3, 12)))
    with pytest.raises(ValueError):
        F.Oracle(net, answers="probabilities")


def test_saturated_rows_are_refused_never_passed_on():
    net = F.ReLUNetwork.random(5, [8, 6, 4])
    oracle = F.Oracle(P.softmax_victim(net), input_dim=8, answers="softmax")
    rng = np.random.default_rng(0)
    far = 1e4 * rng.normal(size=(50, 8))
    far = far[np.ptp(net(far), axis=1) > 2000][:2]      # logits 2000 apart: p underflows
    x = np.concatenate([rng.normal(size=(3, 8)), far])
    z, bad = oracle.scores(x)
    assert bad.tolist() == [False, False, False, True, True]
    assert np.isnan(z[bad]).all() and np.isfinite(z[~bad]).all()
    assert np.allclose(z[~bad], P.centre(net)(x[:3]), rtol=0, atol=1e-12)
    with pytest.raises(SaturatedProbabilities, match="2 of 5") as info:
        oracle(x)
    assert info.value.rows == 2 and oracle.saturated == 4 and oracle.queries == 10


@pytest.mark.parametrize("gain", [30.0, 300.0, 1e4])
def test_large_logits_shrink_the_domain(gain):
    """Logits 30x and 300x a random network's: lines are shortened (and, at 300x, their
    origins drawn closer) until no probability underflows; the extraction stays exact. At
    1e4x the probabilities underflow at the origin already: refused, saying so."""
    net = F.ReLUNetwork.random(6, [10, 6, 3])
    big = F.ReLUNetwork([net.weights[0], net.weights[1] * gain],
                        [net.biases[0], net.biases[1] * gain])
    oracle = F.Oracle(P.softmax_victim(big), input_dim=10)
    if gain > 1e3:
        with pytest.raises(OracleError, match="already at radius"):
            F.extract(oracle, seed=2)
        return
    result = F.extract(oracle, seed=2)
    (event, *_) = result.events_of(F.Kind.PROBABILITIES)
    assert event.data["t_max"] < 100 * np.sqrt(10)
    if gain > 100:
        assert event.data["input_scale"] < 1.0
    assert "shortened" in event.message
    _check(big, result, scale=(event.data["input_scale"],))


def test_probability_helpers():
    rng = np.random.default_rng(1)
    p = P.softmax(rng.normal(size=(20, 5)))
    assert P.looks_like_probabilities(p) and not P.looks_like_probabilities(p[:, :1])
    assert not P.looks_like_probabilities(p - 0.01)
    assert P.rounding_quantum(p) == 0.0
    assert P.rounding_quantum(p.astype(np.float32)) == 0.0
    for n in (2, 5, 9, 12):
        assert P.rounding_quantum(np.round(p, n)) == pytest.approx(10.0 ** -n)
    # saturated to 0 and 1: nothing to tell a rounding by
    assert P.rounding_quantum(np.eye(5)) == 0.0
    z, bad = P.centred_logits(np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]))
    assert bad.tolist() == [True, False] and np.isnan(z[0]).all()
    assert abs(z[1].sum()) < 1e-15


def test_rounded_probabilities_keep_half_their_digits():
    net = F.ReLUNetwork.random(0, [10, 8, 3])
    oracle = F.Oracle(P.softmax_victim(net, decimals=12), input_dim=10)
    result = F.extract(oracle, seed=1)
    assert oracle.quantum == pytest.approx(1e-12)
    assert result.status == "ok" and not result.noise.float64
    rep = F.evaluate(P.centre(net), result.network, num_samples=4000)
    assert rep.param_error <= 1e-8
    x = np.random.default_rng(2).normal(size=(4000, 10))
    assert np.abs(P.softmax(net(x)) - P.softmax(result.network(x))).max() <= 1e-9
    # four decimals leave ~3 bits where every class keeps 1e-2: refused, with the reason
    with pytest.raises(UnsupportedArchitecture, match="decimals|bits"):
        F.extract(F.Oracle(P.softmax_victim(net, decimals=4), input_dim=10), seed=1)


def test_softmax_over_http_equals_in_process():
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from fidelity.server import BackgroundServer, create_app

    net = F.ReLUNetwork.random(8, [24, 8, 4])
    reference = F.extract(F.Oracle(P.softmax_victim(net), input_dim=24, answers="softmax",
                                   chunk_size=256), seed=3)
    app = create_app(net, output="softmax")
    with BackgroundServer(app) as srv, F.HTTPOracle(srv.url + "/predict") as oracle:
        assert oracle.output_mode == "softmax" and oracle.answers == "softmax"
        result = F.extract(oracle, seed=3)
    assert result.queries == reference.queries == app.state.ledger.usage()["rows"]
    assert all(np.array_equal(a, b) for a, b in zip(result.network.weights,
                                                     reference.network.weights))
    _check(net, result)


def test_journal_keeps_the_probabilities_and_replays_them(tmp_path):
    net = F.ReLUNetwork.random(9, [10, 5, 3])
    path = tmp_path / "run.journal"
    first = F.extract(F.Oracle(P.softmax_victim(net), input_dim=10), seed=0, journal=path)
    again = F.Oracle(P.softmax_victim(net), input_dim=10)
    second = F.extract(again, seed=0, journal=path)
    assert again.paid == 0 and again.replayed == first.queries == second.queries
    assert again.detected and np.array_equal(first.network.weights[0],
                                             second.network.weights[0])


def test_trained_784_wide_victim_probabilities_agree_to_1e_10():
    # the default polish (0.1 of the queries) left this digits classifier's probabilities
    # 1.6e-10 off on Gaussian inputs; probability answers now polish with up to 0.3
    from fidelity import victims
    x28, y28 = victims.digits(28)
    victim = victims.train_classifier(x28, y28, [64], seed=0, steps=1500)
    result = F.extract(F.Oracle(P.softmax_victim(victim), input_dim=784), seed=0)
    assert result.status == "ok"
    x = np.random.default_rng(1).normal(size=(20_000, 784))
    p, ph = P.softmax(victim(x)), P.softmax(result.network(x))
    assert np.abs(p - ph).max() <= 1e-10
    assert (p.argmax(1) == ph.argmax(1)).all()


def _estimates_known_or_positive(result):
    # the digits8 classifier's rounded probabilities end in a model whose rows no fit of the
    # current regions may have made: no bootstrap of that fit (it once crashed there); the
    # estimates stay unknown (NaN) or positive, never a small number
    assert result.status in ("ok", "unverified") and result.neurons
    assert not any(n.error_estimate <= 0 for n in result.neurons)       # NaN or > 0


def test_rounded_probabilities_of_a_trained_classifier_come_back_with_estimates():
    # 12 decimals: in the next test, on the same extraction
    x8, y8 = victims.digits(None)
    net = victims.train_classifier(x8, y8, [16], seed=0, steps=1500)
    _estimates_known_or_positive(F.extract(F.Oracle(P.softmax_victim(net, decimals=10),
                                                    input_dim=64), seed=0, throw=False))


def test_rounded_probabilities_plan_lines_where_every_class_keeps_its_floor():
    """Rounded to 12 decimals, a class below 1e-6 is lost; planned for a logit spread of 300
    (the underflow limit), the 8x8 digits classifier's lines met such rows at once, and the
    restart 4x smaller left them too short to cross 7 of its 16 units' hyperplanes. The plan
    now keeps the spread where every class keeps its floor: no row of the search is lost.
    With 8 decimals (floor 1e-4) no such domain is left around the origin: refused, saying
    so."""
    x8, y8 = victims.digits(None)
    net = victims.train_classifier(x8, y8, [16], seed=0, steps=1500)
    oracle = F.Oracle(P.softmax_victim(net, decimals=12), input_dim=64)
    result = F.extract(oracle, seed=0, throw=False)
    assert not any("restarting" in n for n in result.notes)      # no row of the search lost
    assert result.network.sizes[1] >= 12
    _estimates_known_or_positive(result)
    with pytest.raises(OracleError, match="saturate"):
        F.extract(F.Oracle(P.softmax_victim(net, decimals=8), input_dim=64), seed=0)
