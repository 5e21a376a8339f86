"""Issue 16: the measures that tell a copy from a look-alike, and semi-supervised learning."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fidelity as F
from fidelity import cli
from fidelity.metrics import Measures, agreement, boundary_points, measure
from fidelity.transfer import adversarial_transfer

FAST = dict(steps=60, batch_size=32)


def _equivalent(net: F.ReLUNetwork, seed: int) -> F.ReLUNetwork:
    """The same function: hidden units permuted and scaled by powers of two (exact in float)."""
    rng = np.random.default_rng(seed)
    h = net.weights[0].shape[0]
    perm = rng.permutation(h)
    scale = 2.0 ** rng.integers(-3, 4, h)
    return F.ReLUNetwork([net.weights[0][perm] * scale[:, None], net.weights[1][:, perm] / scale],
                         [net.biases[0][perm] * scale, net.biases[1]])


def _look_alike(net: F.ReLUNetwork, data: np.ndarray) -> F.ReLUNetwork:
    """The victim plus one unit that is off on every data row (its hyperplane lies beyond the
    data along a random direction) and large off the data: a copy that agrees on the data only."""
    d = net.input_dim
    w = np.random.default_rng(7).normal(size=d)
    w /= np.linalg.norm(w)
    b = -(data @ w).max() - 0.1
    a = np.zeros((net.output_dim, 1))
    a[0, 0] = 50.0
    return F.ReLUNetwork([np.concatenate([net.weights[0], w[None]]),
                          np.concatenate([net.weights[1], a], 1)],
                         [np.concatenate([net.biases[0], [b]]), net.biases[1]])


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(3, 12), h=st.integers(2, 10),
       k=st.sampled_from([1, 3]))
def test_an_exact_copy_scores_one_everywhere_and_transfers_like_the_victim(seed, d, h, k):
    victim = F.ReLUNetwork.random(seed, [d, h, k])
    copy = _equivalent(victim, seed + 1)
    data = np.random.default_rng(seed).normal(size=(60, d))
    m = measure(victim, copy, data, eps=0.3, gauss_samples=500, boundary_pairs=30,
                transfer_inputs=40)
    assert isinstance(m, Measures)
    for part in (m.data, m.gauss, m.boundary):
        if part.num_inputs == 0:        # the victim gives every data row one class: no pair
            assert part is m.boundary and np.isnan(part.agreement)
            continue
        assert part.agreement == 1.0 and part.max_rel_error <= 1e-12
    assert m.transfer.copy_rate == m.transfer.victim_rate == m.transfer.copy_self_rate
    assert m.transfer.gap == 0.0 and m.transfer.num_inputs == 40


def test_a_look_alike_agrees_on_the_data_but_not_off_it():
    victim = F.ReLUNetwork.random(3, [6, 8, 3])
    data = 0.3 * np.random.default_rng(0).normal(size=(200, 6))
    copy = _look_alike(victim, data)
    m = measure(victim, copy, data, eps=0.5, gauss_samples=4000)
    assert m.data.agreement == 1.0 and m.data.max_rel_error <= 1e-12
    assert m.gauss.agreement < 1.0 and m.gauss.max_rel_error > 1.0


@pytest.mark.parametrize("k", [1, 4])
def test_boundary_points_bracket_a_change_of_the_victims_class(k):
    victim = F.ReLUNetwork.random(5, [5, 12, k])
    data = np.random.default_rng(2).normal(size=(80, 5))
    pts = boundary_points(victim, data, pairs=25, bisections=8, seed=3)
    n = pts.shape[0] // 2
    assert pts.shape == (2 * n, 5) and n >= 10
    y = victim(pts)
    cls = np.sign(y[:, 0]) if k == 1 else y.argmax(1)
    assert np.all(cls[:n] != cls[n:])                      # the two ends: different classes
    seg = np.linalg.norm(pts[:n] - pts[n:], axis=1)
    assert seg.max() <= 2.0 ** -8 * 2 * np.linalg.norm(data, axis=1).max() + 1e-12
    # data with a single class hold no pair: no points, and measure says so with NaN
    one = data[(victim(data).argmax(1) if k > 1 else np.sign(victim(data)[:, 0]))
               == cls[0]]
    assert boundary_points(victim, one, pairs=5).shape == (0, 5)


def test_transfer_of_a_different_network_is_reported_beside_the_victims_own():
    victim = F.ReLUNetwork.random(0, [10, 16, 4])
    other = F.ReLUNetwork.random(1, [10, 16, 4])
    x = np.random.default_rng(0).normal(size=(100, 10))
    t = adversarial_transfer(victim, other, x, eps=0.5, steps=5)
    assert 0 < t.victim_rate <= 1 and t.copy_self_rate > 0
    assert t.copy_rate < t.victim_rate                      # crafted elsewhere: transfers less
    box = adversarial_transfer(victim, victim, x, eps=0.5, bounds=(-0.1, 0.1))
    assert box.victim_rate == box.copy_rate
    with pytest.raises(ValueError, match="eps"):
        adversarial_transfer(victim, other, x, eps=0.0)
    with pytest.raises(ValueError, match="inputs"):
        adversarial_transfer(victim, other, x[:, :3], eps=0.1)


def test_evaluate_adds_the_measures_only_with_data(tmp_path, capsys):
    victim = F.ReLUNetwork.random(0, [6, 5, 3])
    data = np.random.default_rng(0).uniform(0, 1, size=(50, 6))
    plain = F.evaluate(victim, victim, num_samples=200)
    assert plain.measures is None and "measures" in plain.as_dict()
    rep = F.evaluate(victim, victim, num_samples=200, data=data, bounds=(0.0, 1.0))
    assert rep.fidelity == 1.0 and rep.measures.transfer.eps == pytest.approx(
        0.1 * (data.max() - data.min()))
    json.dumps(rep.as_dict())                               # the CLI prints it
    victim.save(tmp_path / "v.npz")
    np.save(tmp_path / "data.npy", data)
    assert cli.main(["evaluate", str(tmp_path / "v.npz"), str(tmp_path / "v.npz"),
                     "--samples", "100", "--data", str(tmp_path / "data.npy"),
                     "--eps", "0.05", "--bounds", "0", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["measures"]["transfer"]["eps"] == 0.05
    assert out["measures"]["gauss"]["agreement"] == 1.0 and out["measures"]["transfer"]["gap"] == 0


def test_agreement_counts_classes_and_relative_error():
    victim = F.ReLUNetwork.random(0, [4, 6, 2])
    shifted = F.ReLUNetwork(victim.weights, [victim.biases[0], victim.biases[1] + [0.0, 1e3]])
    x = np.random.default_rng(0).normal(size=(30, 4))
    a = agreement(victim, shifted, x)
    assert a.agreement == np.mean(victim(x).argmax(1) == 1) and a.max_rel_error > 1.0


# ------------------------------------------------------------------------- semi-supervised
def _victim_and_images(seed=0, side=4, k=3, n=120):
    d = side * side
    victim = F.ReLUNetwork.random(seed, [d, 6, k])
    pool = np.random.default_rng(seed + 1).uniform(0, 1, size=(n, d))
    return victim, pool


def test_semi_spends_its_budget_and_is_deterministic_for_a_seed():
    victim, pool = _victim_and_images()
    runs = []
    for _ in range(2):
        oracle = F.Oracle(victim)
        res = F.learn(oracle, hidden=6, budget=80, pool=pool, strategy="semi", seed=4, **FAST)
        assert res.status == "learned" and res.queries == oracle.queries <= 80
        assert any("semi-supervised" in n for n in res.notes)
        runs.append(res.network)
    for a, b in zip(runs[0].weights + runs[0].biases, runs[1].weights + runs[1].biases):
        np.testing.assert_array_equal(a, b)
    other = F.learn(F.Oracle(victim), hidden=6, budget=80, pool=pool, strategy="semi", seed=5,
                    **FAST)
    assert not np.array_equal(other.network.weights[0], runs[0].weights[0])


@pytest.mark.parametrize("opts", [dict(semi_shift=0.25, semi_target="logits"),
                                  dict(semi_shift=0.5, image_shape=(2, 8), semi_threshold=0.0)])
def test_semi_options_shifts_and_one_output(opts):
    victim, pool = _victim_and_images(k=1)
    res = F.learn(F.Oracle(victim), hidden=4, budget=60, pool=pool, strategy="semi", seed=0,
                  **FAST, **opts)
    assert res.network.sizes == (16, 4, 1) and np.isfinite(res.network.weights[0]).all()


@pytest.mark.parametrize("opts, match", [
    (dict(semi_ratio=0), "semi_ratio"), (dict(semi_threshold=1.5), "semi_threshold"),
    (dict(semi_target="soft"), "semi_target"), (dict(image_shape=(3, 3)), "image_shape"),
    (dict(semi_noise=(0.1,)), "semi_noise")])
def test_semi_refuses_bad_options(opts, match):
    victim, pool = _victim_and_images()
    with pytest.raises(ValueError, match=match):
        F.learn(F.Oracle(victim), hidden=4, budget=50, pool=pool, strategy="semi", **opts)
    with pytest.raises(ValueError, match="pool"):
        F.learn(F.Oracle(victim), hidden=4, budget=50, strategy="semi")
