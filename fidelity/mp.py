"""Above float64: refinement of a float64 extraction in mpmath, and the mp forward pass.

Two parts:

* :func:`forward` evaluates a ReLU network on object arrays of ``mpmath.mpf`` (or float64 inputs
  with mpf weights), exactly, in fixed point (see :mod:`fidelity.mpforward`).
* :func:`refine` starts from a float64 :class:`~fidelity.Extraction` (correct to ~1e-10) and
  re-measures the hidden units in mpmath. The float64 model plans the queries: it says where every
  hyperplane is, so regions and coordinate steps can be chosen that provably cross no other
  hyperplane. A finite-difference gradient of a piecewise-linear function has no truncation
  error, only rounding (``10**-dps * |f| / step``), so each region's affine map is known to about
  ``dps`` digits from ``d + 1`` answers. Across unit ``i``'s hyperplane the affine maps differ by
  exactly ``a_i (w_i . x + b_i)``: the jump of the gradient gives the row and output weights, the
  jump of the constant term gives the bias, with no kink to locate (Jagielski et al. 2020, direct
  recovery, carried to arbitrary precision). Regions lie on one line through many hyperplanes, so
  consecutive units share them (about one query per parameter); units the line serves badly get
  a pair of regions of their own on both sides of their hyperplane.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import mpmath
import numpy as np

from .errors import QueryBudgetExceeded
from .geometry import Hyperplanes, step_rms
from .mpforward import forward
from .network import ReLUNetwork
from .results import Event, Kind

__all__ = ["forward", "refine"]

# ---------------------------------------------------------------------- refinement
def _line_plan(w, b, targets, rng, cap, min_step, scale):
    """Regions on one line through the origin's neighbourhood; returns (points, steps, pairs)
    where ``pairs[i] = (off, on)`` indexes two regions that differ by unit ``i`` alone."""
    h, d = w.shape
    geo = Hyperplanes(w, b)
    x0 = rng.normal(size=d) * 0.1 * scale
    v = rng.normal(size=d)
    v /= np.linalg.norm(v)
    t = geo.kinks(x0, v)
    far = 1e3 * np.sqrt(d) * scale
    ok = np.isfinite(t) & (np.abs(t) < far)
    order = np.argsort(np.where(ok, t, np.inf))[:int(ok.sum())]
    ts = t[order]
    if ts.size == 0:
        return [], [], {}
    bounds = np.concatenate([[ts[0] - 2 * scale], ts, [ts[-1] + 2 * scale]])
    mids = 0.5 * (bounds[:-1] + bounds[1:])       # region j lies between kinks j-1 and j
    points, steps, pairs, made = [], [], {}, {}

    def region(j):
        if j not in made:
            p = x0 + mids[j] * v
            st = geo.safe_steps(p, cap)
            made[j] = (len(points), float(step_rms(st)))
            points.append(p)
            steps.append(st)
        return made[j]

    wanted = set(int(i) for i in targets)
    for pos, unit in enumerate(order):
        unit = int(unit)
        if unit not in wanted:
            continue
        if pos + 1 < ts.size and ts[pos + 1] - ts[pos] <= 1e-9 * scale:
            continue                             # two kinks at one place: planned apart
        if pos and ts[pos] - ts[pos - 1] <= 1e-9 * scale:
            continue
        (ra, ea), (rb, eb) = region(pos), region(pos + 1)
        if min(ea, eb) < min_step:
            continue
        # along +v the unit turns on when w.v > 0
        pairs[unit] = (ra, rb) if w[unit] @ v > 0 else (rb, ra)
    return points, steps, pairs


def _pair_plan(geo: Hyperplanes, i, rng, cap, scale, tries):
    """Two regions at ``x* -+ tau n`` around unit ``i``'s hyperplane (``geo`` has unit-norm
    rows); the best of ``tries``."""
    n = geo.w[i]
    d = n.shape[0]
    best = None
    for attempt in range(tries):
        xr = np.zeros(d) if attempt == 0 else rng.normal(size=d) * 0.1 * scale
        xs, tau = geo.boundary_point(i, xr, cap)
        pts = [xs - tau * n, xs + tau * n]
        st = [geo.safe_steps(p, cap) for p in pts]
        score = min(float(step_rms(s)) for s in st)
        if best is None or score > best[0]:
            best = (score, pts, st)
    return best


def _region_rows(points: list, steps: list) -> tuple[np.ndarray, list]:
    """Object array of the query rows (base point then one probe per coordinate, all rows
    sharing the base point's mpf objects) and each region's exact steps in mp."""
    rows, exact = [], []
    for p, st in zip(points, steps):
        d = p.size
        base = np.empty(d, object)
        base[:] = [mpmath.mpf(v) for v in p.tolist()]
        probe = p + st                                  # float64 coordinates: exact in mp
        moved = np.empty(d, object)
        moved[:] = [mpmath.mpf(v) for v in probe.tolist()]
        block = np.tile(base, (d + 1, 1))
        block[np.arange(1, d + 1), np.arange(d)] = moved
        rows.append(block)
        exact.append((base, moved - base))
    return (np.concatenate(rows) if rows else np.empty((0, 0), object)), exact


def _affine(y: np.ndarray, base: np.ndarray, step: np.ndarray):
    """A region's gradient ``(k, d)`` and constant ``(k,)`` from its ``d + 1`` answers, and the
    rounding floor of the gradient, ``2**-prec * max|f| / min|step|``."""
    grad = ((y[1:] - y[0]) / step[:, None]).T
    floor = mpmath.mpf(2) ** -mpmath.mp.prec * _maxabs(y) / min(abs(v) for v in step)
    return grad, y[0] - grad @ base, floor


def refine(extraction, oracle, *, dps: int = 50, units: Optional[Sequence[int]] = None,
           seed: int = 0, input_scale: float = 1.0, step_max: float = 1.0,
           min_step: float = 1e-4, tries: int = 8, chunk_regions: int = 8,
           progress: Optional[Callable[[dict], None]] = None):
    """Refines a float64 extraction of a one-hidden-layer network in mpmath.

    Args:
        extraction: a :class:`~fidelity.Extraction` whose float64 ``network`` is correct to
            ~1e-10 (what :func:`fidelity.extract` returns with status ``'ok'``).
        oracle: the :class:`~fidelity.Oracle` around the victim, made with ``precision='mp'``.
        dps: decimal digits of the work (all of it inside ``mpmath.workdps(dps)``; the global
            mpmath precision is left as it was). The victim is asked at the oracle's ``dps``,
            or at this one when the oracle has none.
        units: hidden units to refine (indices of ``network`` rows); ``None`` refines all of
            them and the output bias. The others keep their float64 values, as mpf.
        seed: seeds the choice of the line and of the fallback points.
        input_scale: spread of the inputs (line origin, fallback points, region sizes).
        step_max: cap on a coordinate step, in units of ``input_scale``.
        min_step: a unit whose regions on the line would need a smaller effective step (in
            units of ``input_scale``) gets two regions of its own instead.
        tries: candidate points per unit for those own regions.
        chunk_regions: regions asked per oracle call (bounds memory; what is measured before
            the budget runs out is kept).
        progress: optional callback receiving ``dict(queries, refined, units)`` after each call.

    Returns:
        ``dataclasses.replace(extraction, ...)`` with ``network`` holding object arrays of
        ``mpmath.mpf``, ``queries``, ``stage_queries['mp']``, ``neurons[i].error_estimate``
        (relative error of refined unit ``i``: the rounding floor of its two regions, the
        rank-one residual of its jump (``k > 1``) and, when every unit is refined, the
        disagreement with the refined model of each measured region it is active in) and a
        note.

    Raises:
        QueryBudgetExceeded: the budget ran out; ``.result`` holds the units refined so far
            (status ``'partial'``).
        ValueError: no float64 network, not one hidden layer, or an oracle without mp.

    Example:
        >>> import fidelity
        >>> victim = fidelity.ReLUNetwork.random(0, [4, 3, 1])
        >>> oracle = fidelity.Oracle(victim, precision="mp")
        >>> result = refine(fidelity.extract(oracle), oracle, dps=30)
        >>> type(result.network.weights[0][0, 0]).__name__
        'mpf'
    """
    net = extraction.network
    if net is None or len(net.weights) != 2:
        raise ValueError("refine needs an extraction with a one-hidden-layer network")
    if getattr(oracle, "precision", "float64") != "mp":
        raise ValueError("refine needs an oracle made with precision='mp'")
    t0 = time.perf_counter()
    w = np.asarray(net.weights[0], np.float64)
    b = np.asarray(net.biases[0], np.float64)
    a = np.asarray(net.weights[1], np.float64)
    h, d = w.shape
    targets = list(range(h)) if units is None else sorted({int(i) for i in units})
    if any(i < 0 or i >= h for i in targets):
        raise ValueError(f"units must index the {h} hidden units")
    rng = np.random.default_rng(seed)
    cap = step_max * input_scale
    points, steps, pairs = _line_plan(w, b, targets, rng, cap, min_step * input_scale,
                                      input_scale)
    own = [i for i in targets if i not in pairs]
    norm = np.linalg.norm(w, axis=1)
    norm = np.where(norm > 0, norm, 1.0)
    unit_rows = Hyperplanes(w / norm[:, None], b / norm)
    for i in own:
        _, pts, st = _pair_plan(unit_rows, i, rng, cap, input_scale, tries)
        pairs[i] = (len(points), len(points) + 1)
        points += pts
        steps += st
    # measure regions in the order the units need them, so a cut budget leaves whole units
    order = []
    for i in targets:
        order += [r for r in pairs[i] if r not in order]
    start = oracle.queries
    with mpmath.workdps(dps):
        affine: dict = {}
        exhausted = None
        for c0 in range(0, len(order), chunk_regions):
            ids = order[c0:c0 + chunk_regions]
            rows, exact = _region_rows([points[r] for r in ids], [steps[r] for r in ids])
            try:
                y = _ask(oracle, rows, dps)
            except QueryBudgetExceeded as exc:
                exhausted = exc
                break
            for j, r in enumerate(ids):
                base, step = exact[j]
                affine[r] = _affine(y[j * (d + 1):(j + 1) * (d + 1)], base, step)
            if progress is not None:
                progress(dict(queries=oracle.queries, refined=sum(
                    all(r in affine for r in pairs[i]) for i in targets), units=len(targets)))
        done = [i for i in targets if all(r in affine for r in pairs[i])]
        result = _assemble(extraction, net, w, b, a, points, pairs, affine, done,
                           refit_bias=units is None and exhausted is None, dps=dps)
        rows_used = oracle.queries - start
    note = (f"mp: refined {len(done)} of {h} units at {dps} digits with {rows_used} rows "
            f"({len(affine)} regions, {len(own)} units on regions of their own)")
    stage = dict(extraction.stage_queries)
    stage["mp"] = stage.get("mp", 0) + rows_used
    out = dataclasses.replace(
        extraction, network=result[0], neurons=result[1], queries=oracle.queries,
        stage_queries=stage, events=tuple(extraction.events) + (
            Event(Kind.MP_REFINED, note, {"units": len(done), "rows": rows_used}),),
        seconds=extraction.seconds + time.perf_counter() - t0,
        status="partial" if exhausted is not None else extraction.status)
    if exhausted is not None:
        raise QueryBudgetExceeded(str(exhausted), result=out) from None
    return out


def _ask(oracle, rows: np.ndarray, dps: int) -> np.ndarray:
    if oracle.dps is None:
        with mpmath.workdps(dps):
            return oracle.query_mp(rows)
    return oracle.query_mp(rows)


def _assemble(extraction, net, w, b, a, points, pairs, affine, done, *, refit_bias, dps):
    """The mp network from the measured regions (units not in ``done`` keep float64 values)."""
    h, d = w.shape
    k = a.shape[0]
    mpf = mpmath.mpf
    w_mp = _obj(w)
    b_mp = _obj(b)
    a_mp = _obj(a)
    b2 = _obj(np.asarray(net.biases[1], np.float64))
    rank_res = {}
    for i in done:
        off, on = pairs[i]
        jump = affine[on][0] - affine[off][0]                   # a_i w_i^T, (k, d)
        dc = affine[on][1] - affine[off][1]                     # a_i b_i, (k,)
        wdir = jump.T @ _obj(a[:, i])
        wdir = wdir * (mpf(float(w[i] @ w[i])) / (wdir @ _obj(w[i])))   # keep float64 scale
        ai = jump @ wdir / (wdir @ wdir)
        w_mp[i] = wdir
        a_mp[:, i] = ai
        b_mp[i] = (dc @ ai) / (ai @ ai)
        resid = jump - np.outer(ai, wdir)
        size = max(_maxabs(jump), mpf(2) ** -mpmath.mp.prec)
        rank_res[i] = max(_maxabs(resid), affine[on][2], affine[off][2]) / size
    used = sorted(affine)
    patterns = {r: (w @ points[r] + b) > 0 for r in used}
    if refit_bias and used:
        est = [affine[r][1] - a_mp[:, patterns[r]] @ b_mp[patterns[r]] for r in used]
        b2 = sum(est[1:], est[0]) / len(est)
    # consistency of every measured region with the refined model, relative to its size
    region_err = {}
    for r in used:
        on = patterns[r]
        g_pred = a_mp[:, on] @ w_mp[on] if on.any() else np.full((k, d), mpf(0), object)
        c_pred = (a_mp[:, on] @ b_mp[on] if on.any() else np.full(k, mpf(0), object)) + b2
        size = max(_maxabs(affine[r][0]), _maxabs(affine[r][1]), mpf(2) ** -mpmath.mp.prec)
        region_err[r] = max(_maxabs(affine[r][0] - g_pred), _maxabs(affine[r][1] - c_pred)) \
            / size
    neurons = list(extraction.neurons)
    for i in done:
        # regions are consistent with the model only when every unit and b2 are refined
        near = [region_err[r] for r in used if refit_bias and (patterns[r][i] or r in pairs[i])]
        est = float(max([rank_res[i]] + near))
        if i < len(neurons):
            neurons[i] = dataclasses.replace(neurons[i], error_estimate=est)
    out = ReLUNetwork([w_mp, a_mp], [b_mp, b2])
    return out, tuple(neurons)


def _obj(x: np.ndarray) -> np.ndarray:
    out = np.empty(np.shape(x), object)
    out.reshape(-1)[:] = [mpmath.mpf(v) for v in np.asarray(x, np.float64).reshape(-1).tolist()]
    return out


def _maxabs(x: np.ndarray):
    return max((abs(v) for v in np.asarray(x).reshape(-1)), default=mpmath.mpf(0))
