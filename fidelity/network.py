"""ReLU networks: the victim's and the extracted model's common representation."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import compiling, mpforward


@compiling.jit
def forward(weights, biases, x):
    """``f(x)`` of the network with layers ``(weights, biases)``, jitted (a pure function of its
    arguments: the in-jit search runs it as an opaque victim)."""
    h = x
    for w, b in zip(weights[:-1], biases[:-1]):
        h = jnp.maximum(h @ w.T + b, 0.0)
    return h @ weights[-1].T + biases[-1]


CHUNK_ROWS = 1 << 15     # a larger batch is evaluated in chunks of this many rows


def padded_rows(n: int, n_dev: int = 1) -> int:
    """The rows a batch of ``1 <= n <= CHUNK_ROWS`` rows is zero-padded to before the jitted
    forward pass: the next power of two up to 8, then of 4 (32, 128, 512, ...), then a multiple of
    the devices. Each shape is one compilation (about 0.1 s on a CPU), so few shapes save time.
    XLA's CPU kernels give a row the same answer in any batch of 8 rows or more, but not in one of
    1, 2 or 4 rows (measured on 40 random shapes, float32 and float64, batches of 8 to 32,768):
    the steps past 8 (4x, not 2x) change no answer, the steps below keep theirs."""
    rows = 1 << max(0, int(n - 1).bit_length())
    if rows > 8:
        rows = 1 << (3 + 2 * ((rows.bit_length() - 3) // 2))
    return -(-rows // n_dev) * n_dev


@functools.lru_cache(maxsize=None)
def batch_sharding() -> NamedSharding:
    """Rows split over every visible device (weights are replicated by ``jit``)."""
    return NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), PartitionSpec("batch"))


class ReLUNetwork:
    """A fully connected ReLU network ``f(x) = W_L relu(... relu(W_1 x + b_1) ...) + b_L``.

    Args:
        weights: ``weights[i]`` has shape ``(out, in)``.
        biases: ``biases[i]`` has shape ``(out,)``.

    ``net(x)`` evaluates a batch ``(n, d) -> (n, k)`` (a single ``(d,)`` row gives ``(k,)``), in the
    dtype of the weights (float64 weights evaluate in float64 whatever JAX's x64 flag says). Object
    arrays of ``mpmath.mpf``, as inputs or as weights, evaluate in mpmath at the current
    ``mpmath.mp`` precision and give an object array of mpf (see :func:`fidelity.mpforward.forward`).

    Example:
        >>> net = ReLUNetwork.random(0, [4, 3, 2])
        >>> net(np.zeros((5, 4))).shape
        (5, 2)
    """

    def __init__(self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]):
        if len(weights) != len(biases) or len(weights) == 0:
            raise ValueError("need as many bias vectors as weight matrices, and at least one layer")
        ws = [np.asarray(w) for w in weights]
        bs = [np.asarray(b) for b in biases]
        for i, (w, b) in enumerate(zip(ws, bs)):
            if w.ndim != 2 or b.ndim != 1 or b.shape[0] != w.shape[0]:
                raise ValueError(f"layer {i}: weights must be (out, in) and biases (out,), "
                                 f"got {w.shape} and {b.shape}")
            if i and w.shape[1] != ws[i - 1].shape[0]:
                raise ValueError(f"layer {i} takes {w.shape[1]} inputs but layer {i - 1} "
                                 f"gives {ws[i - 1].shape[0]}")
        self.weights = tuple(ws)
        self.biases = tuple(bs)

    # ------------------------------------------------------------------ construction and I/O
    @classmethod
    def random(cls, seed: int, sizes: Sequence[int], dtype=np.float64) -> "ReLUNetwork":
        """He-normal weights, zero-mean normal biases with std 0.1 (so hyperplanes avoid the origin)."""
        if len(sizes) < 2:
            raise ValueError("sizes needs at least an input and an output size")
        rng = np.random.default_rng(seed)
        ws, bs = [], []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            ws.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), (fan_out, fan_in)).astype(dtype))
            bs.append(rng.normal(0.0, 0.1, fan_out).astype(dtype))
        return cls(ws, bs)

    def save(self, path) -> None:
        arrays = {f"w{i}": w for i, w in enumerate(self.weights)}
        arrays.update({f"b{i}": b for i, b in enumerate(self.biases)})
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path) -> "ReLUNetwork":
        with np.load(path) as data:
            n = sum(1 for key in data.files if key.startswith("w"))
            if n == 0:
                raise ValueError(f"{path}: no weight arrays named w0, w1, ... found")
            return cls([data[f"w{i}"] for i in range(n)], [data[f"b{i}"] for i in range(n)])

    # ------------------------------------------------------------------ shape
    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.weights[0].shape[1],) + tuple(w.shape[0] for w in self.weights)

    @property
    def num_params(self) -> int:
        return int(sum(w.size + b.size for w, b in zip(self.weights, self.biases)))

    @property
    def input_dim(self) -> int:
        return self.sizes[0]

    @property
    def output_dim(self) -> int:
        return self.sizes[-1]

    @property
    def dtype(self):
        return self.weights[0].dtype

    def __repr__(self) -> str:
        return f"ReLUNetwork(sizes={self.sizes}, dtype={self.dtype})"

    # ------------------------------------------------------------------ evaluation
    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x)
        single = x.ndim == 1
        if single:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected inputs of shape (n, {self.input_dim}), got {x.shape}")
        dtype = self.dtype
        if x.dtype == object or dtype == object:   # mpmath: exact fixed-point arithmetic
            out = mpforward.forward(self.weights, self.biases, x)
        elif dtype == np.float64 or dtype == np.float32:
            # a chunk has 8 rows or more (its rows' answers are then the same as in one batch)
            least = 8 if x.shape[0] > CHUNK_ROWS else 1
            out = np.concatenate([self._jitted(x[i:i + CHUNK_ROWS], dtype, least)
                                  for i in range(0, max(1, x.shape[0]), CHUNK_ROWS)])
        else:  # anything exotic: plain numpy
            h = x
            for w, b in zip(self.weights[:-1], self.biases[:-1]):
                h = h @ w.T + b
                h = np.where(h > 0, h, h * 0)
            out = h @ self.weights[-1].T + self.biases[-1]
        return out[0] if single else out

    def _jitted(self, x: np.ndarray, dtype, least: int) -> np.ndarray:
        n, n_dev = x.shape[0], jax.device_count()
        xp = np.zeros((padded_rows(max(n, least), n_dev), x.shape[1]), dtype)
        xp[:n] = x
        with jax.enable_x64(dtype == np.float64):
            xj = jnp.asarray(xp) if n_dev == 1 else jax.device_put(xp, batch_sharding())
            return np.asarray(forward(self.weights, self.biases, xj))[:n]

    def astype(self, dtype) -> "ReLUNetwork":
        return ReLUNetwork([w.astype(dtype) for w in self.weights],
                           [b.astype(dtype) for b in self.biases])
