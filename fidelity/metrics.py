"""Ground-truth metrics: how well an extracted network matches its victim.

These read both networks' weights, so they belong to tests, benchmarks and audits, never to the
attack path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import mpmath
import numpy as np

from .network import ReLUNetwork
from .transfer import Transfer, adversarial_transfer

_MP_DPS = 80     # digits of the parameter error of mpmath networks (1e-45 must be visible)


@dataclass(frozen=True)
class Report:
    """Agreement of an extracted network with its victim.

    ``fidelity``: fraction of inputs with the same argmax (sign when ``k == 1``).
    ``max_abs_error``: max over inputs and outputs of ``|f - f_hat|``.
    ``max_rel_error``: ``max_abs_error / max |f|`` over the same inputs.
    ``param_error``: max abs difference of normalised parameters (each unit scaled so that
    ``|[w, b]| = 1``, its output weights scaled inversely) over matched units and the output bias;
    deep networks are matched layer by layer (see :func:`match_layers`);
    ``inf`` when a unit is missing or extra. Computed in mpmath (80 digits) when either network
    holds mpf weights, so that errors far below float64 are measured; the functional measures
    above evaluate such networks with their weights rounded to float64.
    ``matched`` / ``missing`` / ``extra``: units paired, victim units unpaired (excluding
    ``negligible`` ones: dead, or output weights below 1e-6 of the largest), extracted units unpaired.
    """

    fidelity: float
    max_abs_error: float
    max_rel_error: float
    param_error: float
    matched: int
    missing: int
    extra: int
    negligible: int
    num_inputs: int
    measures: Optional["Measures"] = None

    def as_dict(self) -> dict:
        out = asdict(self)
        if self.measures is not None:
            out["measures"] = self.measures.as_dict()
        return out


@dataclass(frozen=True)
class Agreement:
    """Agreement of two networks on one set of inputs: the share with the same class
    (argmax; sign when ``k == 1``) and ``max |f - f_hat| / max |f|`` over the set."""

    agreement: float
    max_rel_error: float
    num_inputs: int


@dataclass(frozen=True)
class Measures:
    """The measures that tell a copy from a look-alike (issue 16), beside agreement on the data.

    ``data``: the natural inputs given. ``gauss``: standard Gaussian inputs (off the data).
    ``boundary``: points next to the victim's decision boundaries between data points (see
    :func:`boundary_points`). ``transfer``: adversarial examples crafted on the copy that fool
    the victim, against those crafted on the victim (see :func:`fidelity.transfer.adversarial_transfer`).
    """

    data: Agreement
    gauss: Agreement
    boundary: Agreement
    transfer: Transfer

    def as_dict(self) -> dict:
        return dict(data=asdict(self.data), gauss=asdict(self.gauss),
                    boundary=asdict(self.boundary), transfer=self.transfer.as_dict())


def _normalise(net: ReLUNetwork):
    w, b = np.asarray(net.weights[0], np.float64), np.asarray(net.biases[0], np.float64)
    a = np.asarray(net.weights[1], np.float64)
    rows = np.concatenate([w, b[:, None]], 1)
    norm = np.linalg.norm(rows, axis=1)
    safe = np.where(norm > 0, norm, 1.0)
    return rows / safe[:, None], a * norm[None, :], norm


def match_units(victim: ReLUNetwork, extracted: ReLUNetwork, *, cos_tol: float = 1e-6):
    """Pairs hidden units by direction; returns (pairs, missing, extra, negligible, max error)."""
    rv, av, nv = _normalise(victim)
    re, ae, _ = _normalise(extracted)
    size = np.abs(av).max(0) if av.size else np.zeros(rv.shape[0])
    negligible = (nv == 0) | (size <= 1e-6 * (size.max() if size.size else 0))
    cos = rv @ re.T if rv.size and re.size else np.zeros((rv.shape[0], re.shape[0]))
    pairs, used = [], set()
    # greedy on the best cosine: units of a ReLU layer are distinct directions
    for flat in np.argsort(-cos, axis=None):
        i, j = np.unravel_index(flat, cos.shape)
        if cos[i, j] < 1 - cos_tol:
            break
        if i in {p[0] for p in pairs} or j in used:
            continue
        pairs.append((int(i), int(j)))
        used.add(j)
    vi = {p[0] for p in pairs}
    missing = [i for i in range(rv.shape[0]) if i not in vi and not negligible[i]]
    extra = [j for j in range(re.shape[0]) if j not in used]
    if victim.dtype == object or extracted.dtype == object:
        return pairs, missing, extra, int(negligible.sum()), _mp_error(victim, extracted, pairs)
    err = float(np.abs(np.asarray(victim.biases[1], np.float64)
                       - np.asarray(extracted.biases[1], np.float64)).max())
    for i, j in pairs:
        err = max(err, _pair_error(rv, av, re, ae, i, j))
    return pairs, missing, extra, int(negligible.sum()), err


def _pair_error(rv, av, re, ae, i: int, j: int) -> float:
    """Largest error of extracted unit ``j``'s normalised row and output weights against
    victim unit ``i``'s."""
    return max(float(np.abs(rv[i] - re[j]).max()), float(np.abs(av[:, i] - ae[:, j]).max()))


def unit_errors(victim: ReLUNetwork, extracted: ReLUNetwork) -> np.ndarray:
    """``(h',)`` the parameter error of each extracted unit of a one-hidden-layer network, in
    the units of :func:`evaluate`'s ``param_error`` (row ``[w, b]`` of unit norm, output
    weights scaled to match, absolute); NaN for a unit matched to none of the victim's. For
    per-unit error estimates against the truth (benchmarks)."""
    pairs = match_units(_float64(victim), _float64(extracted))[0]
    rv, av, _ = _normalise(_float64(victim))
    re, ae, _ = _normalise(_float64(extracted))
    out = np.full(re.shape[0], np.nan)
    for i, j in pairs:
        out[j] = _pair_error(rv, av, re, ae, i, j)
    return out


def estimate_ratios(victim: ReLUNetwork, result) -> dict:
    """Per unit, ``NeuronInfo.error_estimate`` over the unit's actual error
    (:func:`unit_errors`) for a one-hidden-layer ``result``: ``unit_ratio_min``, ``_median``
    and ``_max`` over the matched units (empty when the result has no per-unit figures)."""
    net = result.network
    if (net is None or len(net.weights) != 2 or len(victim.weights) != 2
            or len(result.neurons) != net.weights[0].shape[0]):
        return {}
    ratio = np.array([n.error_estimate for n in result.neurons]) / unit_errors(victim, net)
    if not np.isfinite(ratio).any():
        return {}
    return dict(unit_ratio_min=float(np.nanmin(ratio)), unit_ratio_median=float(np.nanmedian(ratio)),
                unit_ratio_max=float(np.nanmax(ratio)))


def match_layers(victim: ReLUNetwork, extracted: ReLUNetwork, *, cos_tol: float = 1e-6):
    """Deep networks: units matched layer by layer (each layer's rows compared in the
    coordinates of the previous layer's matched units). Returns ``(matched, missing, extra,
    max error of normalised parameters)``; the error is ``inf`` unless every layer matches."""
    if len(victim.weights) != len(extracted.weights):
        hv = sum(w.shape[0] for w in victim.weights[:-1])
        he = sum(w.shape[0] for w in extracted.weights[:-1])
        return 0, hv, he, float("inf")
    lv, ov = _scaled(victim)
    le, oe = _scaled(extracted)
    perm = None                      # extracted unit matched to each victim unit, last layer
    matched = missing = extra = 0
    err = 0.0
    for rv, re in zip(lv, le):
        if perm is not None:
            re = np.concatenate([re[:, :-1][:, perm], re[:, -1:]], 1)
        cos = rv @ re.T if rv.size and re.size else np.zeros((rv.shape[0], re.shape[0]))
        pairs, used = {}, set()
        for flat in np.argsort(-cos, axis=None):
            i, j = np.unravel_index(flat, cos.shape)
            if cos[i, j] < 1 - cos_tol:
                break
            if i in pairs or j in used:
                continue
            pairs[int(i)] = int(j)
            used.add(int(j))
        matched += len(pairs)
        missing += rv.shape[0] - len(pairs)
        extra += re.shape[0] - len(pairs)
        if len(pairs) < rv.shape[0] or len(pairs) < re.shape[0]:
            return matched, missing, extra, float("inf")
        perm = np.array([pairs[i] for i in range(rv.shape[0])])
        err = max(err, float(np.abs(rv - re[perm]).max()))
    oe = np.concatenate([oe[:, :-1][:, perm], oe[:, -1:]], 1)
    err = max(err, float(np.abs(ov - oe).max()))
    return matched, missing, extra, err


def _scaled(net: ReLUNetwork):
    """Hidden layers' rows ``[w, b]`` scaled to unit norm (the scale carried into the next
    layer's columns), and the output layer ``[A, b]`` in those units."""
    rows_out, carry = [], None
    n = len(net.weights)
    for l, (w, b) in enumerate(zip(net.weights, net.biases)):
        w = np.asarray(w, np.float64)
        b = np.asarray(b, np.float64)
        if carry is not None:
            w = w * carry[None, :]
        rows = np.concatenate([w, b[:, None]], 1)
        if l == n - 1:
            return rows_out, rows
        norm = np.linalg.norm(rows, axis=1)
        carry = np.where(norm > 0, norm, 1.0)
        rows_out.append(rows / carry[:, None])
    raise AssertionError("unreachable")


def _mp_error(victim: ReLUNetwork, extracted: ReLUNetwork, pairs) -> float:
    """The normalised parameter error of matched units, computed in mpmath at ``_MP_DPS`` digits
    (for networks with mpf weights, whose errors lie far below float64's)."""
    def unit(net, i):
        row = [mpmath.mpf(v) for v in list(net.weights[0][i]) + [net.biases[0][i]]]
        norm = mpmath.sqrt(mpmath.fsum(v * v for v in row))
        if norm == 0:
            norm = mpmath.mpf(1)
        return [v / norm for v in row] + [mpmath.mpf(v) * norm for v in net.weights[1][:, i]]

    with mpmath.workdps(_MP_DPS):
        err = max(abs(mpmath.mpf(x) - mpmath.mpf(y))
                  for x, y in zip(victim.biases[1], extracted.biases[1]))
        for i, j in pairs:
            err = max([err] + [abs(x - y) for x, y in zip(unit(victim, i), unit(extracted, j))])
        return float(err)


def _float64(net: ReLUNetwork) -> ReLUNetwork:
    return net.astype(np.float64) if net.dtype == object else net


def evaluate(victim: ReLUNetwork, extracted: ReLUNetwork, *, inputs: Optional[np.ndarray] = None,
             num_samples: int = 100_000, seed: int = 0, data: Optional[np.ndarray] = None,
             eps: Optional[float] = None, bounds: Optional[tuple[float, float]] = None) -> Report:
    """Compares ``extracted`` with ``victim`` on ``inputs`` (default: standard Gaussian samples).

    With natural inputs ``data`` (e.g. held-out images), ``measures`` also holds agreement and
    max relative error on the data, on 20,000 Gaussian inputs and on points next to the victim's
    decision boundaries, and adversarial transfer at L-inf radius ``eps`` (default: 0.1 times the
    data's range, ``max - min``), see :func:`measure`.

    Example:
        >>> net = ReLUNetwork.random(0, [5, 4, 3])
        >>> evaluate(net, net, num_samples=100).fidelity
        1.0
    """
    if inputs is None:
        inputs = np.random.default_rng(seed).normal(size=(num_samples, victim.input_dim))
    inputs = np.asarray(inputs, np.float64)
    # the functional measures are float64 ones: networks with mpf weights answer in float64
    y = np.asarray(_float64(victim)(inputs), np.float64)
    yh = np.asarray(_float64(extracted)(inputs), np.float64)
    agree = _classes(y) == _classes(yh)
    abs_err = float(np.abs(y - yh).max())
    scale = float(np.abs(y).max())
    if len(victim.weights) > 2 or len(extracted.weights) > 2:
        matched, n_missing, n_extra, param_error = match_layers(_float64(victim),
                                                                _float64(extracted))
        negligible = 0
    else:
        pairs, missing, extra, negligible, err = match_units(victim, extracted)
        param_error = err if not missing and not extra else float("inf")
        matched, n_missing, n_extra = len(pairs), len(missing), len(extra)
    measures = None
    if data is not None:
        data = np.asarray(data, np.float64)
        if eps is None:
            eps = 0.1 * float(data.max() - data.min()) or 0.1
        measures = measure(victim, extracted, data, eps=eps, bounds=bounds, seed=seed)
    return Report(fidelity=float(agree.mean()), max_abs_error=abs_err,
                  max_rel_error=abs_err / scale if scale > 0 else abs_err,
                  param_error=param_error, matched=matched, missing=n_missing,
                  extra=n_extra, negligible=negligible, num_inputs=int(inputs.shape[0]),
                  measures=measures)


def _classes(y: np.ndarray) -> np.ndarray:
    return np.sign(y[:, 0]) if y.shape[1] == 1 else y.argmax(1)


def agreement(victim: ReLUNetwork, extracted: ReLUNetwork, inputs: np.ndarray) -> Agreement:
    """Class agreement and max relative output error of ``extracted`` on ``inputs`` (float64)."""
    x = np.asarray(inputs, np.float64)
    y = np.asarray(_float64(victim)(x), np.float64)
    yh = np.asarray(_float64(extracted)(x), np.float64)
    scale = float(np.abs(y).max())
    err = float(np.abs(y - yh).max())
    return Agreement(agreement=float(np.mean(_classes(y) == _classes(yh))),
                     max_rel_error=err / scale if scale > 0 else err, num_inputs=int(x.shape[0]))


def boundary_points(victim: ReLUNetwork, data: np.ndarray, *, pairs: int = 500,
                    bisections: int = 6, seed: int = 0) -> np.ndarray:
    """Points next to the victim's decision boundaries, walked there from pairs of data points.

    Draws ``pairs`` pairs of rows of ``data`` on which the victim predicts different classes (a
    random row, and a random row of another class) and
    bisects the segment between them on the victim's class (``bisections`` steps, one batched
    evaluation each): the two ends of the last bracket lie on either side of a boundary of the
    first point's class, ``2**-bisections`` of the segment apart. Returns both ends,
    ``(2 * pairs, d)``; none when the victim gives all the data one class.

    Example:
        >>> net = ReLUNetwork.random(0, [4, 6, 3])
        >>> x = np.random.default_rng(1).normal(size=(40, 4))
        >>> boundary_points(net, x, pairs=10).shape
        (20, 4)
    """
    x = np.asarray(data, np.float64)
    victim = _float64(victim)
    cls = _classes(np.asarray(victim(x), np.float64))
    rng = np.random.default_rng(seed)
    if np.unique(cls).size < 2 or pairs < 1:
        return np.zeros((0, x.shape[1]))
    i = rng.integers(0, x.shape[0], int(pairs))
    others = {c: np.flatnonzero(cls != c) for c in np.unique(cls)}
    j = np.array([others[c][rng.integers(0, others[c].size)] for c in cls[i]])
    lo, hi = x[i], x[j]           # class(lo) == cls[i] != class(hi)
    for _ in range(int(bisections)):
        mid = 0.5 * (lo + hi)
        same = _classes(np.asarray(victim(mid), np.float64)) == cls[i]
        lo = np.where(same[:, None], mid, lo)
        hi = np.where(same[:, None], hi, mid)
    return np.concatenate([lo, hi])


def measure(victim: ReLUNetwork, extracted: ReLUNetwork, data: np.ndarray, *, eps: float,
            gauss_samples: int = 20_000, boundary_pairs: int = 500, transfer_inputs: int = 500,
            attack_steps: int = 10, bounds: Optional[tuple[float, float]] = None,
            seed: int = 0) -> Measures:
    """Agreement on ``data``, on Gaussian inputs and on boundary points, and adversarial transfer.

    Args:
        data: natural inputs (e.g. held-out images); the boundary points are walked between
            pairs of them and the first ``transfer_inputs`` rows are attacked.
        eps: L-inf radius of the adversarial examples, in input units.
        bounds: box the adversarial examples stay in (e.g. ``(0, 1)`` for images).

    Example:
        >>> net = ReLUNetwork.random(0, [5, 8, 3])
        >>> x = np.random.default_rng(0).normal(size=(60, 5))
        >>> m = measure(net, net, x, eps=0.3, gauss_samples=100)
        >>> m.gauss.agreement, m.boundary.agreement, m.transfer.gap
        (1.0, 1.0, 0.0)
    """
    x = np.asarray(data, np.float64)
    if x.ndim != 2 or x.shape[1] != victim.input_dim or x.shape[0] < 2:
        raise ValueError(f"data must be (n >= 2, {victim.input_dim}) inputs, got {x.shape}")
    gauss = np.random.default_rng(seed).normal(size=(int(gauss_samples), victim.input_dim))
    edge = boundary_points(victim, x, pairs=boundary_pairs, seed=seed)
    return Measures(
        data=agreement(victim, extracted, x), gauss=agreement(victim, extracted, gauss),
        boundary=(agreement(victim, extracted, edge) if edge.shape[0]
                  else Agreement(float("nan"), float("nan"), 0)),
        transfer=adversarial_transfer(_float64(victim), _float64(extracted),
                                      x[:int(transfer_inputs)], eps=eps, steps=attack_steps,
                                      bounds=bounds))
