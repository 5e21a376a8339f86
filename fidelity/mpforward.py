"""Exact forward pass of a ReLU network on object arrays of ``mpmath.mpf``.

Every number is turned into a fixed-point integer with ``mp.prec`` plus guard bits, cut into
signed 16-bit limbs held in float64, and the matrix products are done by BLAS on the limbs: a
product of two limbs has at most 32 bits and a sum of ``d < 2**20`` of them stays below
``2**53``, so every float64 sum is an exact integer. Carries are then propagated in int64. The
only per-number Python work is converting the inputs and the outputs.
"""

from __future__ import annotations

from typing import Optional, Sequence

import mpmath
import numpy as np

_LIMB = 16
_GUARD = 24          # bits kept beyond mp.prec in the fixed-point forward pass
_ROWS = 256          # rows per limb matmul (bounds the memory of the limb arrays)


# ---------------------------------------------------------------------- fixed-point forward pass
def _mpf_parts(a: np.ndarray) -> list:
    """``(sign, man, exp)`` per entry of a flat array of mpf (or numbers) or float64."""
    if a.dtype != object:
        a = np.asarray(a, np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError("inputs must be finite")
        m, e = np.frexp(a)
        man = np.abs(m * 2.0 ** 53).astype(np.int64)
        return list(zip((m < 0).tolist(), man.tolist(), (e.astype(np.int64) - 53).tolist()))
    parts = []
    for v in a:
        t = v._mpf_ if type(v) is mpmath.mpf else mpmath.mpf(v)._mpf_
        if not t[1] and t[2]:
            raise ValueError("inputs must be finite (an mpf inf or nan was given)")
        parts.append(t[:3])
    return parts


def _fixed(parts: list, bits: int, scale: Optional[int] = None) -> tuple[list, int]:
    """Python ints ``v ~ value * 2**F`` (rounded to nearest) and ``F``; without ``scale``, ``F`` keeps
    ``bits`` bits below the largest magnitude."""
    if scale is None:
        tops = [e + m.bit_length() for _, m, e in parts if m]
        scale = bits - max(tops) if tops else 0
    out = []
    for s, m, e in parts:
        sh = e + scale
        v = m << sh if sh >= 0 else (m + (1 << (-sh - 1))) >> -sh
        out.append(-v if s else v)
    return out, scale


def _limbs(ints: list, shape: tuple) -> np.ndarray:
    """``shape + (L,)`` float64 signed limbs of base ``2**16`` (little end first)."""
    nbits = max((abs(v).bit_length() for v in ints), default=0)
    nbytes = 2 * max(1, -(-nbits // _LIMB))
    buf = b"".join(abs(v).to_bytes(nbytes, "little") for v in ints)
    limbs = np.frombuffer(buf, "<u2").reshape(len(ints), nbytes // 2).astype(np.float64)
    neg = np.fromiter((v < 0 for v in ints), bool, len(ints))
    limbs[neg] *= -1.0
    return limbs.reshape(shape + (nbytes // 2,))


def _trim(limbs: np.ndarray, scale: int) -> tuple[np.ndarray, int]:
    """Drops low limbs that are zero everywhere (fewer matmuls for float64 weights)."""
    nz = np.flatnonzero(np.any(limbs != 0, axis=tuple(range(limbs.ndim - 1))))
    if nz.size == 0:
        return limbs[..., :1] * 0.0, 0
    lo = int(nz[0])
    return limbs[..., lo:int(nz[-1]) + 1], scale - _LIMB * lo


def _normalise_digits(g: np.ndarray) -> np.ndarray:
    """Carries int64 digits so that all but the last lie in ``[0, 2**16)``; the last is signed."""
    for s in range(g.shape[-1] - 1):
        c = g[..., s] >> _LIMB
        g[..., s] &= (1 << _LIMB) - 1
        g[..., s + 1] += c
    return g


def _layer(x: np.ndarray, fx: int, w: np.ndarray, fw: int, bias_parts: list,
           relu: bool, bits: int) -> tuple[np.ndarray, int]:
    """``x (n, d, Lx)`` limbs at ``2**-fx`` times ``w (h, d, Lw)`` at ``2**-fw``, plus the bias:
    normalised int64 digits ``(n, h, S)`` at ``2**-(fx + fw)``."""
    n, d, lx = x.shape
    h, _, lw = w.shape
    if d >= 1 << 20:
        raise ValueError("the fixed-point forward pass supports at most 2**20 inputs per layer")
    scale = fx + fw
    bias_ints, _ = _fixed(bias_parts, bits, scale)
    bias = _limbs(bias_ints, (h,)).astype(np.int64)
    size = max(lx + lw + 4, bias.shape[-1] + 2)
    g = np.zeros((n, h, size), np.int64)
    g[:, :, :bias.shape[-1]] += bias[None]
    w2 = w.transpose(1, 0, 2).reshape(d, h * lw)
    for r0 in range(0, n, _ROWS):
        xs = x[r0:r0 + _ROWS]
        m = xs.shape[0]
        prod = (xs.transpose(0, 2, 1).reshape(m * lx, d) @ w2).reshape(m, lx, h, lw)
        prod = prod.astype(np.int64)
        for a in range(lx):
            g[r0:r0 + m, :, a:a + lw] += prod[:, a]
    g = _normalise_digits(g)
    if relu:
        g[g[..., -1] < 0] = 0
    return g, scale


def _digits_to_limbs(g: np.ndarray, scale: int, bits: int) -> tuple[np.ndarray, int]:
    """Non-negative digits (after a ReLU) as float64 limbs, low digits beyond ``bits`` cut."""
    nz = np.flatnonzero(np.any(g != 0, axis=(0, 1)))
    if nz.size == 0:
        return np.zeros(g.shape[:2] + (1,)), 0
    hi = int(nz[-1]) + 1
    lo = max(0, hi - (-(-bits // _LIMB)) - 1)
    return g[..., lo:hi].astype(np.float64), scale - _LIMB * lo


def _digits_to_mpf(g: np.ndarray, scale: int) -> np.ndarray:
    """Normalised digits ``(n, k, S)`` at ``2**-scale`` as an object array of mpf (rounded to
    the current precision)."""
    n, k, size = g.shape
    low = np.ascontiguousarray(g[..., :-1].astype("<u2")).reshape(n * k, size - 1)
    top = g[..., -1].reshape(-1).tolist()
    buf = low.tobytes()
    step = 2 * (size - 1)
    shift = _LIMB * (size - 1)
    mpf = mpmath.mpf
    out = [mpf((int.from_bytes(buf[i * step:(i + 1) * step], "little") + (t << shift), -scale))
           for i, t in enumerate(top)]
    res = np.empty(n * k, object)
    res[:] = out
    return res.reshape(n, k)


def forward(weights: Sequence[np.ndarray], biases: Sequence[np.ndarray],
            x: np.ndarray) -> np.ndarray:
    """Evaluates a ReLU network in mpmath at the current ``mp.prec`` (see the module docstring).

    Args:
        weights, biases: float64 or object (mpf) arrays, as held by :class:`ReLUNetwork`.
        x: ``(n, d)`` object array of mpf (or numbers), or float64.

    Returns:
        ``(n, k)`` object array of ``mpmath.mpf``, each within about ``2**-mp.prec`` (relative to
        the largest intermediate value) of the exact result.
    """
    bits = mpmath.mp.prec + _GUARD
    n, d = x.shape
    if n == 0:
        return np.empty((0, weights[-1].shape[0]), object)
    flat = x.reshape(-1)
    inverse = None
    if flat.dtype == object:   # rows that share mpf objects (e.g. gradient probes) convert once
        ids = np.fromiter(map(id, flat), np.uint64, flat.size)
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        flat = flat[first]
    ints, fx = _fixed(_mpf_parts(flat), bits)
    limbs = _limbs(ints, (flat.size,))
    if inverse is not None:
        limbs = limbs[inverse]
    h_limbs, fx = _trim(limbs.reshape(n, d, -1), fx)
    g = None
    for li, (w, b) in enumerate(zip(weights, biases)):
        wi, fw = _fixed(_mpf_parts(np.asarray(w).reshape(-1)), bits)
        w_limbs, fw = _trim(_limbs(wi, w.shape), fw)
        last = li == len(weights) - 1
        g, scale = _layer(h_limbs, fx, w_limbs, fw, _mpf_parts(np.asarray(b).reshape(-1)),
                          relu=not last, bits=bits)
        if not last:
            h_limbs, fx = _digits_to_limbs(g, scale, bits)
    return _digits_to_mpf(g, scale)
