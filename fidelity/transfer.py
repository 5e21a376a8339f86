"""Adversarial-example transfer as a fidelity measure (ground truth: reads both networks).

A copy that computes the victim's function has the victim's gradients, so adversarial examples
crafted on it fool the victim exactly as often as examples crafted on the victim itself
(white-box). A copy that only agrees on the data has other gradients, and its adversarial
examples transfer less (Jagielski et al., USENIX Security 2020, Sec. 2: transferability is one of
the fidelity goals of extraction; Papernot et al. 2017 for the black-box transfer attack).

The attack is a few steps of projected gradient ascent in the L-infinity ball of radius ``eps``
(Madry et al., ICLR 2018), without random start (deterministic), on the cross-entropy of the
victim's class (for one-output networks: the logit times minus its sign), gradients by
``jax.grad``. Each crafted point counts as a success when the **victim's** class there differs
from its class at the clean input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import compiling
from .network import ReLUNetwork


@dataclass(frozen=True)
class Transfer:
    """Shares of adversarial examples (L-inf radius ``eps``, ``steps`` PGD steps) that fool the
    victim: ``victim_rate`` when crafted on the victim itself (white-box reference),
    ``copy_rate`` when crafted on the copy (transfer), ``copy_self_rate`` the share that fool the
    copy it was crafted on. ``gap = copy_rate - victim_rate``; an exact copy has ``gap == 0``.
    """

    eps: float
    steps: int
    victim_rate: float
    copy_rate: float
    copy_self_rate: float
    num_inputs: int

    @property
    def gap(self) -> float:
        return self.copy_rate - self.victim_rate

    def as_dict(self) -> dict:
        return dict(asdict(self), gap=self.gap)


def _logits(weights, biases, x):
    h = x
    for w, b in zip(weights[:-1], biases[:-1]):
        h = jax.nn.relu(h @ w.T + b)
    return h @ weights[-1].T + biases[-1]


def _attack_loss(weights, biases, x, label):
    out = _logits(weights, biases, x[None])[0]
    if out.shape[0] == 1:
        return -out[0] * label          # label = +-1, the victim's sign: push it across 0
    return optax.softmax_cross_entropy_with_integer_labels(out, label)


@partial(compiling.jit, static_argnames=("steps",))
def _pgd(weights, biases, x, labels, eps, lo, hi, *, steps):
    """``steps`` signed-gradient ascent steps of size ``2.5 eps / steps`` projected on the
    L-inf ball of radius ``eps`` around ``x`` and on the box ``[lo, hi]``."""
    grad = jax.vmap(jax.grad(_attack_loss, argnums=2), in_axes=(None, None, 0, 0))
    step = 2.5 * eps / steps

    def body(_, xa):
        g = grad(weights, biases, xa, labels)
        xa = jnp.clip(xa + step * jnp.sign(g), x - eps, x + eps)
        return jnp.clip(xa, lo, hi)

    return jax.lax.fori_loop(0, steps, body, x)


def _classes(y: np.ndarray) -> np.ndarray:
    return np.where(y[:, 0] > 0, 1, -1) if y.shape[1] == 1 else y.argmax(1)


def craft(net: ReLUNetwork, x: np.ndarray, labels: np.ndarray, *, eps: float, steps: int = 10,
          bounds: Optional[tuple[float, float]] = None) -> np.ndarray:
    """Adversarial examples for ``net`` around the rows of ``x`` (float64, deterministic).

    ``labels`` are the classes to move away from (``+-1`` for one-output networks).
    """
    lo, hi = bounds if bounds is not None else (-np.inf, np.inf)
    with jax.enable_x64(True):
        ws = tuple(jnp.asarray(np.asarray(w, np.float64)) for w in net.weights)
        bs = tuple(jnp.asarray(np.asarray(b, np.float64)) for b in net.biases)
        out = _pgd(ws, bs, jnp.asarray(x, jnp.float64), jnp.asarray(labels), float(eps),
                   float(lo), float(hi), steps=int(steps))
        return np.asarray(out, np.float64)


def adversarial_transfer(victim: ReLUNetwork, copy: ReLUNetwork, inputs: np.ndarray, *,
                         eps: float, steps: int = 10,
                         bounds: Optional[tuple[float, float]] = None) -> Transfer:
    """How often adversarial examples crafted on ``copy`` fool ``victim``, beside the victim's own.

    Args:
        victim, copy: the two networks (float64 evaluation; mpf weights are rounded).
        inputs: clean points ``(n, d)``, e.g. held-out images.
        eps: the L-inf budget of the attack, in input units.
        steps: PGD steps.
        bounds: optional box the adversarial points stay in (e.g. ``(0, 1)`` for images).

    Example:
        >>> net = ReLUNetwork.random(0, [5, 8, 3])
        >>> x = np.random.default_rng(0).normal(size=(50, 5))
        >>> t = adversarial_transfer(net, net, x, eps=0.5)
        >>> t.copy_rate == t.victim_rate
        True
    """
    if eps <= 0 or steps < 1:
        raise ValueError("eps must be positive and steps at least 1")
    x = np.asarray(inputs, np.float64)
    if x.ndim != 2 or x.shape[1] != victim.input_dim or x.shape[0] == 0:
        raise ValueError(f"inputs must be (n >= 1, {victim.input_dim}), got {x.shape}")
    victim, copy = victim.astype(np.float64), copy.astype(np.float64)
    labels = _classes(victim(x))

    def fools(net, xa):
        return _classes(net(xa)) != labels

    x_victim = craft(victim, x, labels, eps=eps, steps=steps, bounds=bounds)
    x_copy = craft(copy, x, labels, eps=eps, steps=steps, bounds=bounds)
    return Transfer(eps=float(eps), steps=int(steps),
                    victim_rate=float(fools(victim, x_victim).mean()),
                    copy_rate=float(fools(victim, x_copy).mean()),
                    copy_self_rate=float(fools(copy, x_copy).mean()),
                    num_inputs=int(x.shape[0]))
