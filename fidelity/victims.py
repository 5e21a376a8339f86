"""Victims: the embedded demo network, digits data, and training with optax."""

from __future__ import annotations

from importlib import resources
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .network import ReLUNetwork

DEMO_FILE = "digits_784_32_10.npz"


def demo_victim() -> ReLUNetwork:
    """The embedded victim: 784-32-10 trained with optax on sklearn's digits upsampled to 28x28."""
    with resources.as_file(resources.files("fidelity") / "data" / DEMO_FILE) as path:
        return ReLUNetwork.load(path)


def upsample(images8: np.ndarray, size: int = 28) -> np.ndarray:
    """Bilinear upsampling of ``(n, 64)`` 8x8 images in ``[0, 16]`` to ``(n, size*size)`` in ``[0, 1]``."""
    imgs = np.asarray(images8, np.float64).reshape(-1, 8, 8) / 16.0
    with jax.enable_x64(True):
        out = jax.image.resize(jnp.asarray(imgs), (imgs.shape[0], size, size), "linear")
    return np.asarray(out).reshape(imgs.shape[0], size * size)


def digits(size: Optional[int] = 28):
    """sklearn's bundled digits as ``(X, y)``; ``size=None`` keeps 8x8 (scaled to [0, 1]).

    Returns ``None`` when scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return None
    data = load_digits()
    x = data.data / 16.0 if size is None else upsample(data.data, size)
    return x, data.target.astype(np.int64)


def digits_784() -> Optional[np.ndarray]:
    """The upsampled digits images alone, or ``None`` without scikit-learn."""
    d = digits(28)
    return None if d is None else d[0]


def train_classifier(x: np.ndarray, y: np.ndarray, hidden: Sequence[int], *, seed: int = 0,
                     steps: int = 2000, learning_rate: float = 1e-2,
                     batch_size: int = 256) -> ReLUNetwork:
    """Trains a ReLU classifier with optax (Adam, softmax cross-entropy), jitted, deterministic."""
    classes = int(y.max()) + 1
    sizes = [x.shape[1], *hidden, classes]
    init = ReLUNetwork.random(seed, sizes)
    with jax.enable_x64(True):
        params = ([jnp.asarray(w) for w in init.weights], [jnp.asarray(b) for b in init.biases])
        opt = optax.adam(learning_rate)
        state = opt.init(params)
        xs, ys = jnp.asarray(x), jnp.asarray(y)

        def loss(p, xb, yb):
            h = xb
            for w, b in zip(p[0][:-1], p[1][:-1]):
                h = jax.nn.relu(h @ w.T + b)
            logits = h @ p[0][-1].T + p[1][-1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        @jax.jit
        def step(p, s, key):
            idx = jax.random.choice(key, xs.shape[0], (batch_size,), replace=False)
            g = jax.grad(loss)(p, xs[idx], ys[idx])
            upd, s = opt.update(g, s, p)
            return optax.apply_updates(p, upd), s

        key = jax.random.key(seed)
        for _ in range(steps):
            key, sub = jax.random.split(key)
            params, state = step(params, state, sub)
        return ReLUNetwork([np.asarray(w) for w in params[0]], [np.asarray(b) for b in params[1]])
