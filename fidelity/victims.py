"""Victims: the embedded demo network, digits data, and training with optax."""

from __future__ import annotations

from importlib import resources
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import compiling
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

        @compiling.jit
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


# ---------------------------------------------------------------------- outside the model class
class OffClassVictim:
    """A victim outside the one-hidden-layer ReLU class the engine assumes, built from random
    weights (He-normal, biases of std 0.1, as :meth:`ReLUNetwork.random`).

    ``kind`` is one of

    * ``"leaky"``: ``A leaky(W x + b) + c`` with ``leaky(z) = max(z, alpha z)``; piecewise
      linear, and exactly the ReLU network of ``2 h`` units ``A relu(z) - alpha A relu(-z)``
      (:attr:`relu_equivalent`);
    * ``"softplus"`` / ``"gelu"``: a smooth activation: no kink anywhere, no ReLU network equals
      it;
    * ``"maxout"``: ``A max_j(W_j x + b_j) + c`` over ``pieces`` affine maps per unit; for two
      pieces ``max(u, v) = v + relu(u - v)``: a ReLU unit plus an affine term;
    * ``"maxpool"``: ``A maxpool(relu(W x + b)) + c``, the hidden units max-pooled in groups of
      ``pieces``: piecewise linear with bent boundaries (a ReLU network of two hidden layers);
    * ``"residual"``: ``A relu(W x + b) + c + R x``, a linear skip connection from the inputs to
      the outputs (``R = B V``, ``V`` a ``k x d`` projection);

    with ``depth`` hidden layers of ``hidden`` units each (``depth = 2``: the second layer
    takes the first's activations through the same activation; a residual block adds its input
    ``h + relu(W h + b)``).

    Calls map ``(n, d)`` float64 inputs to ``(n, k)`` scores, in numpy.
    """

    KINDS = ("leaky", "softplus", "gelu", "maxout", "maxpool", "residual")

    def __init__(self, kind: str, seed: int, sizes: Sequence[int], *, alpha: float = 0.1,
                 pieces: int = 2):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        if len(sizes) < 3:
            raise ValueError("sizes needs an input, at least one hidden and an output size")
        self.kind, self.alpha, self.pieces = kind, float(alpha), int(pieces)
        self.sizes = tuple(int(s) for s in sizes)
        rng = np.random.default_rng(seed)
        self.layers = []
        fan_in = self.sizes[0]
        for width in self.sizes[1:-1]:
            rows = width * (self.pieces if kind in ("maxout", "maxpool") else 1)
            w = rng.normal(0.0, np.sqrt(2.0 / fan_in), (rows, fan_in))
            self.layers.append((w, rng.normal(0.0, 0.1, rows)))
            fan_in = width
        k = self.sizes[-1]
        self.out = (rng.normal(0.0, np.sqrt(2.0 / fan_in), (k, fan_in)),
                    rng.normal(0.0, 0.1, k))
        self.skip = rng.normal(0.0, np.sqrt(1.0 / self.sizes[0]), (k, self.sizes[0]))

    @property
    def input_dim(self) -> int:
        return self.sizes[0]

    @property
    def output_dim(self) -> int:
        return self.sizes[-1]

    def _act(self, z: np.ndarray) -> np.ndarray:
        if self.kind == "leaky":
            return np.maximum(z, self.alpha * z)
        if self.kind == "softplus":
            return np.logaddexp(0.0, z)
        if self.kind == "gelu":
            from math import erf, sqrt
            return 0.5 * z * (1.0 + np.vectorize(erf)(z / sqrt(2.0)))
        if self.kind in ("maxout", "maxpool"):
            if self.kind == "maxpool":
                z = np.maximum(z, 0.0)
            return z.reshape(z.shape[0], -1, self.pieces).max(2)
        return np.maximum(z, 0.0)              # residual: ReLU blocks

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, np.float64)
        h = x
        for i, (w, b) in enumerate(self.layers):
            a = self._act(h @ w.T + b)
            h = h + a if self.kind == "residual" and i > 0 else a
        y = h @ self.out[0].T + self.out[1]
        if self.kind == "residual":
            y = y + x @ self.skip.T
        return y

    @property
    def relu_equivalent(self) -> Optional[ReLUNetwork]:
        """The exact one-hidden-layer ReLU network equal to this victim where there is one with
        a kink per unit (one hidden layer, leaky ReLU), else ``None``. Ground truth: for metrics
        and tests only."""
        if self.kind != "leaky" or len(self.layers) != 1:
            return None
        (w, b), (a, c) = self.layers[0], self.out
        return ReLUNetwork([np.concatenate([w, -w]), np.concatenate([a, -self.alpha * a], 1)],
                           [np.concatenate([b, -b]), c])
