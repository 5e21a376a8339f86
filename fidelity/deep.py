"""Depth: the hidden layers after the first, recovered one at a time from queries alone.

The first line's kinks, measured in full (``d + 1`` queries per region), give local hyperplanes;
those that predict a kink on other lines, wherever they cross them, are layer 1 (a deeper unit's
boundary bends, so its local plane predicts nothing elsewhere). Then, with layers ``1..m`` known
(layer ``m`` up to the sign of each unit), every kink the model does not predict belongs to a
deeper unit. Its jump is rank one, ``u (dz/dx)``, and ``dz/dx = beta^T J_m`` lies in the row space
of the Jacobian ``J_m`` of layer ``m``'s pre-activations: measured along the ``h_m`` directions
``pinv(J_m)`` (and one direction ``J_m`` cannot see, which must not move), a kink costs
``2 (h_m + 2)`` queries, not ``2 (d + 1)``.

* Signs of layer ``m``: ``beta_i`` is nonzero exactly where unit ``i`` is on, so the sign of
  ``z_i`` at any deeper kink with ``beta_i != 0`` is the unit's orientation (no enumeration).
* Rows of layer ``m + 1``: at a kink of unit ``j``, ``z_j = a . h_m + c = 0`` and ``beta = a`` on the
  units that are on, so ``sigma = beta / (-beta . h_m)`` equals ``a / c`` there, whatever the scale
  of the jump. Kinks whose ``sigma`` agree on their common entries are one unit; their union fills
  its row. A unit is kept when its boundary predicts every kink of it on every searched line.
* Output layer: when ``f`` is exactly linear in ``[relu(z_m), z_m, 1]`` (values at random inputs),
  layer ``m`` is the last; a unit whose ``z`` coefficient is minus its ``relu`` coefficient is
  flipped (``relu(-z) = relu(z) - z``), and the output weights are fitted again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import recover, search
from .context import Run
from .errors import UnsupportedArchitecture
from .layered import Layered
from .measure import MeasureConfig, region_noise, search_line
from .network import ReLUNetwork
from .results import Kind

MATCH = 1e-6          # a found kink within MATCH * t_max of a predicted one is that unit's
VERIFY = 1e-4         # a candidate unit's predicted kink this close (times the line's half
                      # length) to a found one is confirmed (its row is not polished yet)
IN_RANGE = 0.999      # predictions beyond this fraction of t_max are not tested
ON = 1e-7             # a signature entry above ON * its largest is nonzero
SAME_UNIT = 1e-5      # two kinks' signatures agreeing to this (relative) are one unit
STRAY = 1e-6          # a jump along what layer m cannot see, relative: an earlier unit's kink
NULL_PROBES = 2       # probes along what layer m cannot see, per side of a kink
MAX_CANCEL = 1e3      # signatures of kinks whose bias cancels worse than this are compared
                      # at this loose a tolerance (SAME_UNIT times it)
MAX_COND = 1e4        # a Jacobian worse conditioned than this is not inverted at that kink
LAST_LAYER = 1e-4     # output fit residual (relative) below which layer m is the last
FILL_TRIES = 3        # windows that find nothing before a group of kinks is given up
MAX_REPAIRS = 8       # kinks measured in full to find layer-1 units that line 0 missed
WINDOWS_PER_UNIT = 6  # bound on targeted windows per unit of the layer before
_DEBUG = bool(os.environ.get("FIDELITY_DEBUG"))


@dataclass(frozen=True)
class DeepConfig:
    """Tuning of the layer-by-layer recovery.

    Attributes:
        max_depth: bound on hidden layers.
        lines_per_layer: bound on lines searched for the kinks of one layer.
        layer_patience: lines that bring no new unit before a layer is closed.
        output_points: answers of the output fit beyond ``2 (2 h + 1)``.
        check_points: fresh answers the finished network is checked on.
        check_tol: relative tolerance of that check.
    """

    max_depth: int = 8
    lines_per_layer: int = 24
    layer_patience: int = 2
    output_points: int = 32
    check_points: int = 64
    check_tol: float = 1e-7

    def __post_init__(self):
        for name, low in (("max_depth", 1), ("lines_per_layer", 1), ("layer_patience", 1),
                          ("output_points", 0), ("check_points", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"DeepConfig.{name} must be an int >= {low}, got {value!r}")
        if not self.check_tol > 0:
            raise ValueError(f"DeepConfig.check_tol must be positive, got {self.check_tol!r}")


@dataclass
class Line:
    """A searched line: origin, direction, kinks and the slopes between them."""

    x0: np.ndarray
    v: np.ndarray
    t: np.ndarray
    slopes: Optional[np.ndarray]
    half: float                                  # the line is |t| <= half
    measured: set = field(default_factory=set)   # kink indices measured already


@dataclass(frozen=True)
class Point:
    """A kink not explained by the known layers, with the jump of the victim's directional
    derivatives across it along ``dirs`` (``None``: all ``d`` coordinates). The jump is
    ``dirs u r^T`` with ``r`` in the row space of any layer's Jacobian deeper than the
    kink's unit is not: it is read in the coordinates of the current model when needed
    (:func:`_beta`), so that a unit added to an earlier layer needs no new queries as long as
    the probes span it."""

    line: int
    t: float
    x: np.ndarray
    dirs: Optional[np.ndarray]    # (n, d) unit directions, or None for the coordinates
    jump: np.ndarray              # (n, k) derivative jumps along them
    level: int                    # 0: measured in full; m: for the coordinates of layer m


def _beta(p: Point, jac: np.ndarray):
    """``(beta, residual)``: the kink's jump read as ``beta^T jac`` (up to scale), and the
    relative part of the jump that ``jac``'s rows cannot explain."""
    a = jac.T if p.dirs is None else p.dirs @ jac.T
    coef, *_ = np.linalg.lstsq(a, p.jump, rcond=None)
    size = np.linalg.norm(p.jump)
    resid = float(np.linalg.norm(a @ coef - p.jump) / size) if size > 0 else np.inf
    uu, sv, _ = np.linalg.svd(coef, full_matrices=False)
    return uu[:, 0] * sv[0], resid


@dataclass(frozen=True)
class LayerInfo:
    """What the recovery of one hidden layer found (``index`` 1-based)."""

    index: int
    width: int
    lines: int           # lines searched while this layer was being recovered
    kinks: int           # kinks measured for it
    queries: int
    unidentified: tuple  # units of this layer never seen on at a deeper kink


@dataclass
class _State:
    lines: list
    points: list
    infos: list


def extract_layers(run: Run, cfg: DeepConfig, mcfg: MeasureConfig,
                   use_jit) -> Optional[tuple[ReLUNetwork, float, tuple]]:
    """Recovers every layer; returns ``(network, check_error, layer infos)``, or None when the
    victim has one hidden layer after all (the one-layer engine's verdict stands).

    Raises:
        UnsupportedArchitecture: a layer cannot be recovered (named in the message).
    """
    state = _State(lines=[], points=[], infos=[])
    q0 = run.oracle.queries
    full = _first_line(run, mcfg, use_jit, state)
    layered = _layer_one(run, mcfg, use_jit, state, full)
    state.infos.append(LayerInfo(1, layered.widths[0], len(state.lines), len(full),
                                 run.oracle.queries - q0, ()))
    for depth in range(1, cfg.max_depth + 1):
        layered = _polish(run, layered, state)
        out = _output(run, cfg, layered)
        if out is not None:
            if depth == 1:
                return None
            return out[0], out[1], tuple(state.infos)
        if depth == cfg.max_depth:
            break
        layered = _next_layer(run, cfg, mcfg, use_jit, layered, state)
    raise UnsupportedArchitecture(
        f"no exact output layer after {cfg.max_depth} hidden layers (widths "
        f"{layered.widths}): deeper than max_depth, or a layer is incomplete")


# ---------------------------------------------------------------------------- layer 1
def _first_line(run: Run, mcfg: MeasureConfig, use_jit, state: _State) -> list:
    """Line 0 with every region measured in full: reused from the one-layer attempt when it
    measured it, else searched and measured here. Returns its jumps."""
    ev = run.evidence
    if ev.regions and run.drawn and np.all(ev.regions[0].line == 0):
        regions = ev.regions[0]
        x0, v = run.drawn[0]
    else:
        x0, v = run.new_line()
        kinks = search_line(run, x0, v, max_rounds=mcfg.max_rounds, use_jit=use_jit)
        lo, hi, mid, step = recover.plan_regions(kinks.t, run.t_max, mcfg.step_frac,
                                                 run.step_cap)
        regions, complete = recover.measure_regions(run.query("gradients"), x0, v,
                                                    run.lines - 1, lo, hi, mid, step,
                                                    remaining=run.remaining)
        if not complete:
            raise run.out_of_budget("while measuring the first line")
    order = np.argsort(regions.t_lo)
    t_lo, t_hi = regions.t_lo[order], regions.t_hi[order]
    aff = regions.affine()[order]
    noise = region_noise(run, regions)[order]
    kinks_t = t_lo[1:]
    state.lines.append(Line(x0, v, kinks_t, None, run.t_max, set(range(kinks_t.size))))
    if not np.allclose(t_hi[:-1], t_lo[1:]):
        raise UnsupportedArchitecture("the first line's regions do not tile it")
    nz = 4 * np.maximum(noise[:-1], noise[1:])
    return recover.jumps_to_rows(aff[:-1], aff[1:], v, 0, kinks_t, nz)


def _hits(run: Run, rows: np.ndarray, lines: list, skip: np.ndarray):
    """Per row ``[w, b]``: lines where its plane's crossing is a found kink, and where not."""
    hits = np.zeros(rows.shape[0], int)
    misses = np.zeros(rows.shape[0], int)
    tol = MATCH * run.t_max
    for li, line in enumerate(lines):
        wv = rows[:, :-1] @ line.v
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -(rows[:, :-1] @ line.x0 + rows[:, -1]) / wv
        test = (np.abs(t) < IN_RANGE * line.half) & (skip != li)
        if line.t.size:
            near = np.abs(line.t[None, :] - t[:, None]).min(1) <= tol
        else:
            near = np.zeros(t.size, bool)
        hits += test & near
        misses += test & ~near
    return hits, misses


def _layer_one(run: Run, mcfg: MeasureConfig, use_jit, state: _State, jumps: list,
               extra_lines: int = 4) -> Layered:
    """Layer 1: the first line's local planes that predict kinks on other lines."""
    rows = np.array([j.row for j in jumps]) if jumps else np.zeros((0, run.d + 1))
    own = np.zeros(len(jumps), int)
    for n in range(2 + extra_lines):
        _new_line(run, mcfg, use_jit, state)
        hits, misses = _hits(run, rows, state.lines, own)
        undecided = (misses == 0) & (hits == 0)
        if n >= 1 and not undecided.any():
            break
    keep = misses == 0
    for j, jump in enumerate(jumps):
        if not keep[j]:
            state.points.append(Point(0, jump.t, state.lines[0].x0 + jump.t * state.lines[0].v,
                                      None, np.outer(jump.row[:-1], jump.coef), 0))
    rows = rows[keep]
    if rows.shape[0] == 0:
        raise UnsupportedArchitecture("layer 1: no kink of the first line is a hyperplane")
    rows = _second_opinion(run, mcfg, state, rows)
    return Layered((rows[:, :-1],), (rows[:, -1],))


def _kink_residuals(run: Run, rows: np.ndarray, lines: list):
    """Per row, its relative miss ``|w . x + b| / |x|`` at its nearest found kink on each line
    it crosses, and where that kink is: ``(residuals (n, L), kink index (n, L))``."""
    res = np.full((rows.shape[0], len(lines)), np.nan)
    at = np.full((rows.shape[0], len(lines)), -1)
    tol = MATCH * run.t_max
    for li, line in enumerate(lines):
        if not line.t.size:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -(rows[:, :-1] @ line.x0 + rows[:, -1]) / (rows[:, :-1] @ line.v)
        near = np.abs(line.t[None, :] - t[:, None]).argmin(1)
        ok = np.abs(line.t[near] - t) <= tol
        x = line.x0 + line.t[near][:, None] * line.v
        miss = np.abs((rows[:, :-1] * x).sum(1) + rows[:, -1]) / np.linalg.norm(x, axis=1)
        res[ok, li] = miss[ok]
        at[ok, li] = near[ok]
    return res, at


def _second_opinion(run: Run, mcfg: MeasureConfig, state: _State, rows: np.ndarray,
                    doubt: float = 1e-11) -> np.ndarray:
    """A layer-1 row that misses its kinks on the other lines by more than ``doubt`` and 30x
    the typical row (a probe of its regions crossed a boundary) is measured again at one of
    those kinks, in full; the row that misses its kinks least is kept."""
    res, at = _kink_residuals(run, rows, state.lines)
    others = res[:, 1:]
    worst = np.where(np.isnan(others), 0, others).max(1) if others.size else np.zeros(0)
    typical = np.median(worst) if worst.size else 0.0
    redo = np.flatnonzero(worst > max(doubt, 30.0 * typical))
    for i in redo:
        li = 1 + int(np.nanargmax(others[i]))
        line, k = state.lines[li], int(at[i, li])
        bounds = np.concatenate([[-line.half], line.t, [line.half]])
        lo, hi = bounds[k:k + 2], bounds[k + 1:k + 3]
        mid = 0.5 * (lo + hi)
        step = np.minimum(mcfg.step_frac * 0.5 * (hi - lo), run.step_cap)
        if not run.room(2 * (run.d + 1)):
            raise run.out_of_budget("while measuring layer 1 again")
        regions, _ = recover.measure_regions(run.query("gradients"), line.x0, line.v, li,
                                             lo, hi, mid, step, remaining=None)
        aff = regions.affine()
        jumps = recover.jumps_to_rows(aff[:1], aff[1:], line.v, li, line.t[k:k + 1],
                                      np.zeros(1))
        if not jumps:
            continue
        new = jumps[0].row
        if new[:-1] @ rows[i, :-1] < 0:
            new = -new
        old_res = _kink_residuals(run, rows[i:i + 1], state.lines)[0]
        new_res = _kink_residuals(run, new[None], state.lines)[0]
        old_miss = np.nanmax(old_res)
        new_miss = np.nanmax(new_res) if (~np.isnan(new_res)).sum() >= (
            ~np.isnan(old_res)).sum() else np.inf
        if _DEBUG:
            print("second opinion", i, worst[i], old_miss, new_miss)
        if new_miss < old_miss:
            rows[i] = new
    return rows


def _new_line(run: Run, mcfg: MeasureConfig, use_jit, state: _State) -> Line:
    x0, v = run.new_line()
    res = search_line(run, x0, v, max_rounds=mcfg.max_rounds, use_jit=use_jit)
    line = Line(x0, v, res.t, res.slopes, run.t_max)
    state.lines.append(line)
    return line


# ---------------------------------------------------------------------------- polish
PRIOR_ERR = 1e-6      # assumed relative error of a row measured from gradients
KINK_ERR = 1e-12      # assumed relative error of ``row . features`` at a located kink


def _polish(run: Run, layered: Layered, state: _State) -> Layered:
    """Every layer's rows refitted, in order, to the kinks located on all searched lines (each
    one exact equation ``row . [h_{l-1}(x), 1] = 0``), with the measured rows as a prior."""
    for l in range(1, layered.depth + 1):
        w, b = layered.weights[l - 1], layered.biases[l - 1]
        theta = np.concatenate([w, b[:, None]], 1)
        eqs = [[] for _ in range(w.shape[0])]
        sub = Layered(layered.weights[:l], layered.biases[:l])
        for line in state.lines:
            if not line.t.size:
                continue
            t, layer, unit = sub.kinks(line.x0, line.v, line.half)
            sel = layer == l
            t, unit = t[sel], unit[sel]
            if not t.size:
                continue
            gap = np.abs(t[:, None] - line.t[None, :])
            near = gap.argmin(1)
            ok = gap[np.arange(t.size), near] <= MATCH * line.half
            x = line.x0 + line.t[near[ok]][:, None] * line.v
            feats = (x if l == 1 else np.maximum(sub.preacts(x)[l - 2], 0.0))
            feats = np.concatenate([feats, np.ones((feats.shape[0], 1))], 1)
            for u, f in zip(unit[ok], feats):
                eqs[u].append(f)
        if _DEBUG:
            print("polish layer", l, "eqs per unit", [len(e) for e in eqs])
        new = theta.copy()
        for u in range(theta.shape[0]):
            if not eqs[u]:
                continue
            new[u] = _refit_row(theta[u], np.array(eqs[u]))
        norm = np.linalg.norm(new[:, :-1], axis=1) if l == 1 else np.linalg.norm(new, axis=1)
        weights = list(layered.weights)
        biases = list(layered.biases)
        weights[l - 1], biases[l - 1] = new[:, :-1] / norm[:, None], new[:, -1] / norm
        layered = Layered(tuple(weights), tuple(biases))
    return layered


def _refit_row(theta: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """``theta`` corrected so that ``feats @ theta ~ 0`` (weighted by the kinks' precision),
    its length along itself kept, the rest held near the measured row."""
    size = np.linalg.norm(theta)
    prior = np.eye(theta.size) / (PRIOR_ERR * size)
    value = feats / (KINK_ERR * size * np.linalg.norm(feats, axis=1, keepdims=True))
    gauge = theta[None] / (KINK_ERR * size * size)
    a = np.concatenate([prior, value, gauge])
    rhs = np.concatenate([np.zeros(theta.size), -value @ theta, [0.0]])
    delta = np.linalg.lstsq(a, rhs, rcond=None)[0]
    return theta + delta


# ---------------------------------------------------------------------------- output layer
def _output(run: Run, cfg: DeepConfig, layered: Layered):
    """``(network, check error)`` when ``f`` is exactly an affine map of the last known layer's
    outputs; None when a deeper layer is left."""
    h = layered.widths[-1]
    n = 2 * (2 * h + 1) + cfg.output_points
    x = run.rng.normal(size=(n, run.d)) * run.input_scale
    y = run.query("output")(x)
    z = layered.preacts(x)[-1]
    phi = np.concatenate([np.maximum(z, 0), z, np.ones((n, 1))], 1)
    coef = np.linalg.lstsq(phi, y, rcond=None)[0]
    scale = max(np.abs(y).max(), 1e-300)
    if _DEBUG:
        print("output fit residual", np.abs(phi @ coef - y).max() / scale, layered.widths)
    if np.abs(phi @ coef - y).max() > LAST_LAYER * scale:
        return None
    a, skip = coef[:h].T, coef[h:2 * h].T
    flip = np.linalg.norm(skip + a, axis=0) < np.linalg.norm(skip, axis=0)
    one_sided = (z > 0).all(0) | (z < 0).all(0)
    if one_sided.any():
        run.note(Kind.ONE_SIDED, f"layer {layered.depth}: units {np.flatnonzero(one_sided).tolist()}"
                 " kept one sign on every output-fit input; their orientation is what agrees "
                 "with the answers there", layer=layered.depth,
                 units=np.flatnonzero(one_sided).tolist())
    signed = layered.signed(np.where(flip, -1.0, 1.0))
    zs = signed.preacts(x)[-1]
    phi = np.concatenate([np.maximum(zs, 0), np.ones((n, 1))], 1)
    coef = np.linalg.lstsq(phi, y, rcond=None)[0]
    net = signed.network(coef[:h].T.copy(), coef[h].copy())
    xc = run.rng.normal(size=(cfg.check_points, run.d)) * run.input_scale
    xc[cfg.check_points // 2:] *= 3.0
    yc = run.query("checks")(xc)
    err = float(np.abs(net(xc) - yc).max() / max(np.abs(yc).max(), 1e-300))
    return net, err


# ---------------------------------------------------------------------------- deeper layers
def _next_layer(run: Run, cfg: DeepConfig, mcfg: MeasureConfig, use_jit, layered: Layered,
                state: _State) -> Layered:
    """Signs of layer ``m`` and rows of layer ``m + 1`` from the kinks the model misses."""
    m = layered.depth
    h = layered.widths[-1]
    if h > run.d and m == 1:
        raise UnsupportedArchitecture(
            f"layer 1 has {h} units for {run.d} inputs: an expansive first layer hides the "
            "next layer's rows (not supported yet)")
    q0, lines0, pts0 = run.oracle.queries, len(state.lines), len(state.points)
    quiet, found, tried, failed, misses = 0, 0, {}, set(), {}
    windows = WINDOWS_PER_UNIT * h     # bound on targeted windows for this layer
    random_lines, searched_random = 0, False
    repairs, repaired = MAX_REPAIRS, set()
    found_layer = None
    for _ in range(cfg.lines_per_layer + WINDOWS_PER_UNIT * h + 1):
        for li, line in enumerate(state.lines):
            _measure_unexplained(run, mcfg, layered, state, li, line, found_layer)
        if m == 1 and repairs > 0:
            layered, tried_once = _repair_layer_one(run, mcfg, layered, state, repaired)
            repairs -= tried_once
            h = layered.widths[-1]
        found_layer = _analyse(run, layered, state)
        size = found_layer.rows.shape[0] + sum(len(c[2]) > 1 for c in found_layer.partial)
        if searched_random:                 # patience counts random lines that found nothing
            quiet = quiet + 1 if size <= found else 0
        found = max(found, size)
        open_ = [c for c in found_layer.partial if _key(c) not in failed
                 and set(c[1].tolist()) - tried.get(_key(c), set())]
        if not open_ and quiet >= cfg.layer_patience:
            break
        searched_random = False
        if open_ and windows > 0:
            windows -= _fill(run, mcfg, layered, found_layer, state, open_, tried, failed,
                             misses, windows)
        elif random_lines < cfg.lines_per_layer:
            _new_line(run, mcfg, use_jit, state)
            random_lines += 1
            searched_random = True
        else:
            break
    rows = found_layer.rows
    if found_layer.partial:
        run.note(Kind.LAYER_INCOMPLETE, f"layer {m + 1}: {len(found_layer.partial)} groups of "
                 "kinks agreed like one unit's but could not be completed (a deeper unit seen "
                 "twice in one region, or a unit whose row has entries never observed); left "
                 "out", layer=m + 1, groups=len(found_layer.partial))
    if rows.shape[0] == 0:
        raise UnsupportedArchitecture(
            f"layer {m + 1}: no unit found from {len(state.points)} kinks the model does not "
            f"explain (layer {m} has {h} units)")
    dead = found_layer.dead
    if dead:
        run.note(Kind.UNIDENTIFIED_UNITS, f"layer {m}: units {list(dead)} were never on at a "
                 f"deeper kink: their weights into layer {m + 1} are unidentified (set to 0)",
                 layer=m, units=list(dead))
    last = state.infos[-1]
    state.infos[-1] = LayerInfo(m, h, last.lines, last.kinks, last.queries, tuple(dead))
    state.infos.append(LayerInfo(m + 1, rows.shape[0], len(state.lines) - lines0,
                                 len(state.points) - pts0, run.oracle.queries - q0, ()))
    norm = np.sqrt((rows ** 2).sum(1) + 1.0)
    return layered.signed(found_layer.signs).appended(rows / norm[:, None], 1.0 / norm)


@dataclass(frozen=True)
class _Found:
    """What the points say about layer ``m``'s signs and layer ``m + 1``'s units."""

    signs: np.ndarray
    dead: tuple
    rows: np.ndarray           # complete units whose boundaries were verified
    partial: list              # (row, missing entries, member points) of incomplete units


def _key(cluster) -> tuple:
    first = cluster[2][0]
    return first.line, round(first.t, 9)


def _fill(run: Run, mcfg: MeasureConfig, layered: Layered, found: _Found, state: _State,
          clusters: list, tried: dict, failed: set, misses: dict, most: int) -> int:
    """Follows each incomplete unit's boundary into the side where one of its missing earlier
    units is on, and searches a short line across it there (at most ``most`` windows). A unit
    whose window holds no kink agreeing with it is marked ``failed`` (a deeper unit's kinks
    that agreed within one region). Returns how many windows were searched."""
    done = 0
    signed = layered.signed(found.signs)
    m = signed.depth
    for cluster in clusters:
        if done >= most:
            break
        row, gaps, members = cluster
        key = _key(cluster)
        todo = [int(i) for i in gaps if int(i) not in tried.get(key, set())]
        model = signed.appended(row[None], np.ones(1))
        best = None
        for i in todo:
            for p in members:
                zi = signed.preacts(p.x[None])[-1][0, i]
                gi = signed.jacobian(p.x, m)[i]
                gj = model.jacobian(p.x, m + 1)[0]
                delta = gi - (gi @ gj) / (gj @ gj) * gj
                rate = gi @ delta
                if rate <= 0 or zi >= 0:
                    continue
                dist = -zi / rate * np.linalg.norm(delta)
                if best is None or dist < best[0]:
                    best = (dist, i, p.x + 1.5 * (-zi / rate) * delta)
        tried.setdefault(key, set()).update(todo if best is None else [best[1]])
        if best is None:
            failed.add(key)
            continue
        dist, i, q = best
        gj = model.jacobian(q, m + 1)[0]
        zj = model.preacts(q[None])[-1][0, 0]
        nrm = np.linalg.norm(gj)
        if nrm == 0:
            failed.add(key)
            continue
        n = gj / nrm
        before = len(state.points)
        line = _window(run, mcfg, state, q - zj / nrm * n, n,
                       max(4.0 * abs(zj) / nrm, 4.0 * dist, 1e-3 * run.input_scale))
        _measure_unexplained(run, mcfg, layered, state, len(state.lines) - 1, line, found)
        done += 1
        if not any(_agrees(signed, p, row, i) for p in state.points[before:]):
            misses[key] = misses.get(key, 0) + 1
            if misses[key] >= (FILL_TRIES if len(members) > 1 else 1):
                failed.add(key)
            if _DEBUG:
                print("fill failed", key, i, "window kinks", line.t.size, "new pts",
                      len(state.points) - before, "dist", dist)
    return done


def _agrees(signed: Layered, p: Point, row: np.ndarray, i: int) -> bool:
    """Whether the kink ``p`` belongs to the unit ``row`` and sees its entry ``i``."""
    beta, resid = _beta(p, signed.jacobian(p.x, signed.depth))
    if resid > STRAY:
        return False
    z = signed.preacts(p.x[None])[-1][0]
    on = z > 0
    c = -(beta * np.maximum(z, 0)).sum()
    if not on[i] or c == 0:
        return False
    sigma = beta / c
    cond = min(float((np.abs(beta) * np.maximum(z, 0)).sum() / abs(c)), MAX_CANCEL)
    common = on & (row != 0)
    common[i] = False
    if common.sum() < 2:
        return False
    scale = np.abs(row[common]).max()
    return bool(np.abs(sigma[common] - row[common]).max() <= SAME_UNIT * cond * scale)


def _window(run: Run, mcfg: MeasureConfig, state: _State, x0: np.ndarray, v: np.ndarray,
            half: float) -> Line:
    """A short line ``x0 + t v``, ``|t| <= half``, searched for kinks."""
    tol = run.tol
    res = search.search_lines(run.query("search"), x0[None], v[None], half,
                              delta=min(tol.delta, half * 1e-3), min_delta=tol.min_delta,
                              noise_factor=tol.rel / search.EPS, noise_abs=tol.abs,
                              max_rounds=mcfg.max_rounds)[0]
    line = Line(x0, v, res.t, res.slopes, half)
    state.lines.append(line)
    return line


def _repair_layer_one(run: Run, mcfg: MeasureConfig, layered: Layered, state: _State,
                      tried: set):
    """A layer-1 unit that line 0 missed (its plane crossed it beyond ``t_max``) shows as kinks
    whose jumps layer 1 cannot explain. The worst such kink is measured in full; a plane that
    predicts kinks on the other lines joins layer 1. Returns ``(model, tries spent)``."""
    w, b = layered.weights[0], layered.biases[0]
    worst, at = STRAY, None
    for p in state.points:
        if p.level < 1 or (p.line, p.t) in tried:
            continue
        resid = _beta(p, w)[1]
        if resid > worst:
            worst, at = resid, p
    if at is None:
        return layered, 0
    tried.add((at.line, at.t))
    line = state.lines[at.line]
    k = int(np.argmin(np.abs(line.t - at.t)))
    bounds = np.concatenate([[-line.half], line.t, [line.half]])
    lo, hi = bounds[k:k + 2], bounds[k + 1:k + 3]
    step = np.minimum(mcfg.step_frac * 0.5 * (hi - lo), run.step_cap)
    if not run.room(2 * (run.d + 1)):
        raise run.out_of_budget("while measuring a missed layer-1 unit")
    regions, _ = recover.measure_regions(run.query("gradients"), line.x0, line.v, at.line,
                                         lo, hi, 0.5 * (lo + hi), step, remaining=None)
    aff = regions.affine()
    jumps = recover.jumps_to_rows(aff[:1], aff[1:], line.v, at.line, line.t[k:k + 1],
                                  np.zeros(1))
    if not jumps:
        return layered, 1
    row = jumps[0].row[None]
    hits, misses = _hits(run, row, state.lines, np.array([at.line]))
    if misses[0] or not hits[0]:
        return layered, 1
    run.note(Kind.LAYER_ONE_ADDED, f"layer 1: a unit line 0 did not cross was found at a "
             f"kink of line {at.line} (its jump left {worst:.1e} unexplained) and added",
             line=at.line)
    return Layered((np.concatenate([w, row[:, :-1]]),) + layered.weights[1:],
                   (np.concatenate([b, row[:, -1]]),) + layered.biases[1:]), 1


def _predicted(run: Run, layered: Layered, line: Line, extra: Optional[np.ndarray]):
    """Which of the line's kinks the known layers (and candidate units ``extra``) explain."""
    model = layered
    if extra is not None and extra.shape[0]:
        model = layered.appended(extra, np.ones(extra.shape[0]))
    t, _, _ = model.kinks(line.x0, line.v, line.half)
    if not line.t.size or not t.size:
        return np.zeros(line.t.size, bool)
    return np.abs(line.t[:, None] - t[None, :]).min(1) <= MATCH * line.half


def _measure_unexplained(run: Run, mcfg: MeasureConfig, layered: Layered, state: _State,
                         li: int, line: Line, found: Optional[_Found]) -> None:
    """Measures, in layer ``m``'s coordinates, the kinks of ``line`` nothing known explains
    (the verified units of layer ``m + 1`` found so far included)."""
    if found is not None and found.rows.shape[0]:
        explained = _predicted(run, layered.signed(found.signs), line, found.rows)
    else:
        explained = _predicted(run, layered, line, None)
    todo = [k for k in range(line.t.size) if not explained[k] and k not in line.measured]
    if not todo:
        return
    m, h, d = layered.depth, layered.widths[-1], run.d
    bounds = np.concatenate([[-line.half], line.t, [line.half]])
    plans = []
    for k in todo:
        line.measured.add(k)
        x = line.x0 + line.t[k] * line.v
        jac = layered.jacobian(x, m)
        sv = np.linalg.svd(jac, compute_uv=False)
        if h > d or sv[-1] <= sv[0] / MAX_COND:
            continue
        pinv = np.linalg.pinv(jac)                               # (d, h)
        norms = np.linalg.norm(pinv, axis=0)
        dirs = (pinv / norms).T                                  # (h, d)
        if h < d:                   # probes the model says cannot move: they catch a unit
            z = run.rng.normal(size=(min(NULL_PROBES, d - h), d))   # an earlier layer lacks
            z -= (pinv @ (jac @ z.T)).T
            dirs = np.concatenate([dirs, z / np.linalg.norm(z, axis=1, keepdims=True)])
        plans.append((k, x, jac, norms, dirs))
    if not plans:
        return
    derivs, steps, scales = {}, {}, {}
    for i, (k, _, _, _, _) in enumerate(plans):
        for side in (0, 1):
            lo, hi = bounds[k + side], bounds[k + side + 1]
            steps[i, side] = min(mcfg.step_frac * 0.5 * (hi - lo), run.step_cap)
    todo_sides = list(steps)
    for _ in range(1 + mcfg.remeasure_rounds):
        if not todo_sides:
            break
        got = _probe(run, line, bounds, plans, todo_sides, steps)
        todo_sides = []
        for (i, side), (dv, scale) in got.items():
            derivs[i, side] = dv
            scales[i, side] = scale
            k, _, jac, norms, _ = plans[i]
            slope = None if line.slopes is None else line.slopes[k + side]
            if slope is None or np.isnan(slope).any():
                continue
            pred = (dv[:h] * norms[:, None]).T @ (jac @ line.v)
            size = np.abs((dv[:h] * norms[:, None]).T * (jac @ line.v)).sum(1).max()
            noise = 1e3 * search.EPS * scale / steps[i, side]
            if np.abs(pred - slope).max() > 1e-7 * size + noise:
                steps[i, side] /= mcfg.remeasure_shrink
                todo_sides.append((i, side))
    for i, (k, x, jac, norms, dirs) in enumerate(plans):
        if (i, 0) in todo_sides or (i, 1) in todo_sides:
            continue                                     # a probe kept crossing a boundary
        jump = derivs[i, 1] - derivs[i, 0]
        full = jump[:h] * norms[:, None]                                   # (h, k)
        noise = 1e3 * search.EPS * max(scales[i, 0], scales[i, 1]) / min(steps[i, 0],
                                                                         steps[i, 1])
        if np.abs(full).max() <= noise:
            continue                                                       # no real kink
        state.points.append(Point(li, float(line.t[k]), x, dirs, jump, m))


def _probe(run: Run, line: Line, bounds: np.ndarray, plans: list, sides: list,
           steps: dict) -> dict:
    """Directional derivatives at the middle of the regions beside each planned kink:
    ``{(plan, side): ((dirs, k) derivatives, answer scale)}``."""
    rows = []
    for i, side in sides:
        k, dirs = plans[i][0], plans[i][4]
        base = line.x0 + 0.5 * (bounds[k + side] + bounds[k + side + 1]) * line.v
        rows.append(base[None])
        rows.append(base + steps[i, side] * dirs)
    total = sum(r.shape[0] for r in rows)
    if not run.room(total):
        raise run.out_of_budget("while measuring deeper kinks")
    y = run.query("gradients")(np.concatenate(rows))
    out, pos = {}, 0
    for i, side in sides:
        n = 1 + plans[i][4].shape[0]
        block = y[pos:pos + n]
        pos += n
        out[i, side] = ((block[1:] - block[0]) / steps[i, side], np.abs(block).max())
    return out


def _analyse(run: Run, layered: Layered, state: _State) -> _Found:
    """Signs of layer ``m`` and the units of layer ``m + 1`` from the points so far."""
    m, h = layered.depth, layered.widths[-1]
    betas, zs, used = [], [], []
    for p in state.points:
        jac = layered.jacobian(p.x, m)
        sv = np.linalg.svd(jac, compute_uv=False)
        if sv[-1] <= sv[0] / MAX_COND:
            continue
        beta, resid = _beta(p, jac)
        if resid > STRAY:
            continue                           # not a deeper unit's kink, or an earlier unit
                                               # the model lacks is on there
        z = layered.preacts(p.x[None])[-1][0]
        if np.abs(z).min() == 0:
            continue
        betas.append(beta)
        zs.append(z)
        used.append(p)
    if not betas:
        return _Found(np.ones(h), tuple(range(h)), np.zeros((0, h)), [])
    beta, z = np.array(betas), np.array(zs)
    on = np.abs(beta) > ON * np.abs(beta).max(1, keepdims=True)
    pos = (on & (z > 0)).sum(0)
    neg = (on & (z < 0)).sum(0)
    signs = np.where(neg > pos, -1.0, 1.0)
    dead = tuple(int(i) for i in np.flatnonzero((pos == 0) & (neg == 0)))
    beta, z = beta * signs, z * signs
    c = -(beta * np.maximum(z, 0)).sum(1)
    ok = ~(on & (z < 0)).any(1)                           # on where the model says off: drop
    ok &= np.abs(c) > 1e-12 * np.abs(beta).max(1) * np.abs(z).max(1)
    on = z > 0                     # an entry is observed wherever its unit is on (maybe as 0)
    sigma = np.where(on, beta / np.where(ok, c, 1.0)[:, None], 0.0)[ok]
    # cancellation in c = -beta . h: a unit with a small bias has imprecise signatures
    cond = np.minimum((np.abs(beta) * np.maximum(z, 0)).sum(1)[ok] / np.abs(c[ok]), MAX_CANCEL)
    beta, z = beta[ok], z[ok]
    on = on[ok]
    used = [p for p, keep in zip(used, ok) if keep]
    labels = _cluster(sigma, on, cond)
    alive = np.ones(h, bool)
    alive[list(dead)] = False
    complete, partial = [], []
    for lab in np.unique(labels):
        members = labels == lab
        seen = on[members].sum(0)
        row = _merged_row(beta[members], z[members], on[members], sigma[members],
                          cond[members])
        gaps = np.flatnonzero((seen == 0) & alive)
        if gaps.size:
            partial.append((row, gaps, [p for p, k in zip(used, members) if k]))
        elif members.sum() > 1:
            complete.append(row)
    rows = np.array(complete) if complete else np.zeros((0, h))
    if rows.shape[0]:
        rows = rows[_verified(run, layered.signed(signs), state, rows)]
    if partial:
        keep = _verified(run, layered.signed(signs), state,
                         np.array([r for r, _, _ in partial]), [g for _, g, _ in partial])
        partial = [p for p, k in zip(partial, keep) if k]
    return _Found(signs, dead, rows, partial)


def _merged_row(beta: np.ndarray, z: np.ndarray, on: np.ndarray, sigma: np.ndarray,
                cond: np.ndarray, agree: float = 1e-8) -> np.ndarray:
    """One unit's row ``a / c`` from its kinks' jumps: each kink's ``beta`` is scaled onto a
    reference kink's on their common entries and the scaled ``beta`` are averaged entrywise,
    then ``c = -a . h`` is averaged over the kinks. (Averaging each kink's ``beta / c`` instead
    loses the digits that cancel in ``c`` when the unit's bias is small.) Kinks whose
    signature strays from the entrywise median by more than ``agree`` times their
    cancellation (a probe that crossed a boundary) are left out."""
    masked = np.where(on, sigma, np.nan)
    seen = on.sum(0) > 0
    median = np.where(seen, np.nanmedian(np.where(seen, masked, 0.0), 0), 0.0)
    dev = np.nanmax(np.abs(masked - median), 1)
    good = dev <= agree * cond * np.abs(median).max()
    if not good.any():
        return median
    beta, z, on = beta[good], z[good], on[good]
    ref = int(np.argmax(on.sum(1)))
    scaled = np.zeros_like(beta)
    use = np.zeros(beta.shape[0], bool)
    for p in range(beta.shape[0]):
        common = on[p] & on[ref]
        if common.sum() < 2:
            continue
        s = (beta[p, common] @ beta[ref, common]) / (beta[ref, common] @ beta[ref, common])
        scaled[p], use[p] = beta[p] / s, True
    if not use.any():
        return median
    cnt = (on & use[:, None]).sum(0)
    a = np.where(on & use[:, None], scaled, 0.0).sum(0) / np.maximum(cnt, 1)
    c = -np.mean([(a * np.maximum(z[p], 0.0) * on[p]).sum() for p in np.flatnonzero(use)])
    if c == 0:
        return median
    return np.where(cnt > 0, a / c, median)


def _cluster(sigma: np.ndarray, on: np.ndarray, cond: np.ndarray) -> np.ndarray:
    """Union-find over pairs of signatures that agree on at least two common entries."""
    n = sigma.shape[0]
    parent = np.arange(n)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    mag = np.abs(sigma)
    for p in range(n - 1):
        common = on[p] & on[p + 1:]
        diff = np.where(common, np.abs(sigma[p] - sigma[p + 1:]), 0).max(1)
        size = np.maximum(np.where(common, mag[p], 0).max(1),
                          np.where(common, mag[p + 1:], 0).max(1))
        tol = SAME_UNIT * np.maximum(cond[p], cond[p + 1:])
        same = (common.sum(1) >= 2) & (diff <= tol * size)
        for q in np.flatnonzero(same) + p + 1:
            parent[root(q)] = root(p)
    return np.array([root(i) for i in range(n)])


def _verified(run: Run, signed: Layered, state: _State, rows: np.ndarray,
              gaps: Optional[list] = None) -> np.ndarray:
    """Which candidate units' boundaries predict a found kink wherever they cross a line (a
    unit with unknown entries ``gaps[j]`` only where those earlier units are off)."""
    keep = np.ones(rows.shape[0], bool)
    model = signed.appended(rows, np.ones(rows.shape[0]))
    for line in state.lines:
        tol = VERIFY * line.half
        t, layer, unit = model.kinks(line.x0, line.v, IN_RANGE * line.half)
        sel = layer == signed.depth + 1
        t, unit = t[sel], unit[sel]
        if gaps is not None and t.size:
            z = signed.preacts(line.x0 + t[:, None] * line.v)[-1]
            exact = np.array([(z[n, gaps[u]] <= 0).all() for n, u in enumerate(unit)], bool)
            t, unit = t[exact], unit[exact]
        if not t.size:
            continue
        if line.t.size:
            near = np.abs(t[:, None] - line.t[None, :]).min(1) <= tol
        else:
            near = np.zeros(t.size, bool)
        keep[unit[~near]] = False
    return keep
