"""Victims outside the model class (issue 15): each is extracted exactly or refused, never a
wrong network with status "ok"."""

import numpy as np
import pytest

import fidelity as F
from fidelity.curvature import curvature
from fidelity.errors import UnsupportedArchitecture
from fidelity.victims import OffClassVictim

ONE_LAYER = [[10, 6, 1], [12, 8, 3], [16, 5, 2]]


def _functional_error(victim, net, d):
    """Max |f - f_hat| / max |f| over Gaussian inputs at scales 1, 10 and 100."""
    x = np.random.default_rng(11).normal(size=(3000, d))
    x *= np.array([1.0, 10.0, 100.0])[np.arange(3000) % 3][:, None]
    y = victim(x)
    return float(np.abs(y - net(x)).max() / np.abs(y).max())


def _outcome(victim, seed):
    """``('refused', reason)`` or ``(status, result)``; an ``ok`` result must be exact."""
    oracle = F.Oracle(victim, input_dim=victim.input_dim, budget=100_000)
    try:
        result = F.extract(oracle, seed=seed, throw=False)
    except UnsupportedArchitecture as exc:
        return "refused", str(exc)
    if result.status == "ok":
        assert _functional_error(victim, result.network, victim.input_dim) <= 1e-9
    return str(result.status), result


@pytest.mark.parametrize("sizes", ONE_LAYER)
@pytest.mark.parametrize("seed", [0, 1])
def test_leaky_relu_is_extracted_exactly_as_pairs_of_relu_units(seed, sizes):
    alpha = float(np.random.default_rng(seed).uniform(0.02, 0.5))
    victim = OffClassVictim("leaky", seed, sizes, alpha=alpha)
    status, result = _outcome(victim, seed)
    assert status == "ok"
    # leaky(z) = relu(z) - alpha relu(-z): two units per hyperplane, opposite orientations
    assert result.hidden_size == 2 * sizes[1]
    rep = F.evaluate(victim.relu_equivalent, result.network, num_samples=2000)
    assert rep.missing == rep.extra == 0 and rep.param_error <= 1e-8


@pytest.mark.parametrize("kind", ["softplus", "gelu"])
@pytest.mark.parametrize("sizes", ONE_LAYER + [[10, 8, 8, 1]])
def test_smooth_activations_are_refused_at_once(kind, sizes):
    victim = OffClassVictim(kind, 3, sizes)
    oracle = F.Oracle(victim, input_dim=sizes[0])
    with pytest.raises(UnsupportedArchitecture, match="not piecewise linear"):
        F.extract(oracle, seed=3)
    assert oracle.queries == 48           # the noise floor's answers were enough to tell


@pytest.mark.parametrize("kind,sizes", [(k, s) for k in ("maxout", "residual", "maxpool")
                                        for s in ONE_LAYER[:2]]
                         + [(k, [10, 8, 8, 1]) for k in ("leaky", "maxout", "residual",
                                                        "maxpool")])
@pytest.mark.parametrize("seed", [0, 1])
def test_piecewise_linear_victims_outside_the_class_are_never_a_wrong_ok(kind, sizes, seed):
    """Maxout and residual units add an affine term outside the span of the rows, max-pooling
    bends the boundaries, two leaky layers make the first layer expansive: none of them is
    one of the networks the engine returns, and none comes back "ok"."""
    status, result = _outcome(OffClassVictim(kind, seed, sizes), seed)
    assert status in ("refused", "unverified"), status
    if status == "unverified":
        assert result.events_of(F.Kind.NO_NEW_KINK) or result.events_of(F.Kind.DEEP)


def test_curvature_reads_noise_and_kinks_as_piecewise_linear():
    rng = np.random.default_rng(0)
    t = 0.01 * (np.arange(24) + rng.uniform(-0.3, 0.3, 24))
    line = 3.0 * t[:, None] + 1.0
    kink = line + 5.0 * np.maximum(t - 0.1, 0.0)[:, None]
    assert curvature(t, line) is None and curvature(t, kink) is None
    for level in (1e-7, 1e-3):              # float32-like and rounding-like noise
        assert curvature(t, kink + level * rng.normal(size=kink.shape)) is None
    assert curvature(t, np.round(kink, 4)) is None
    assert "curves" in curvature(t, np.log1p(np.exp(3 * t))[:, None])
