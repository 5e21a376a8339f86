"""Precision of the recovered layers: exact kinks placed where the recovered model predicts them.

Every row is refitted to the kinks of its unit (each one exact equation
``row . [h_{l-1}(x), 1] = 0``, see ``fidelity.deep._polish``). The kinks the searches located
are good to about 1e-14 typically but 1e-11 at worst, and a unit crossed by fewer searched lines
than its row has entries keeps part of the error of the derivative jumps it was measured from
(about 1e-7). Once every layer is known, the model says where any line crosses a unit's boundary
and where the nearest other kinks are, at no cost; two answers on each linear piece beside a
kink give the two pieces, and they meet at the kink to the answers' precision (about 1e-15).
Each unit gets such kinks until they alone determine its row, with every entry seen on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import search
from .context import Run
from .layered import Layered

MARGIN = 1            # kinks asked beyond a row's unknowns
MARGIN_SHARE = 0.25   # ... and this share of its entries more (random 40-20-10-10-1
                      # s0-7: parameter error median 8.8e-12 -> 1.4e-12, s1 1.2e-10 ->
                      # 2.0e-12, 5% more queries; 80-40-20-1 s0-3: 1.2e-11 -> 6e-13, 7%)
PER_ENTRY = 2         # kinks asked where each entry of the row is on
DRAWS = 400           # bound on random lines drawn (the model only, no queries) per call
ANCHOR_DRAWS = 400    # ... and on lines through points beside a rare unit's boundary
MIN_GAP = 1e-6        # (times t_max) neighbouring kinks closer than this leave no room
AGREE = 0.25          # the kink found lies within this fraction of the step of the predicted
VISIBLE = 1e6         # the slopes must differ by this many rounding errors of the answers
FOOT_TRIES = 8        # lines tried per unit for a kink near the origin (foot_pins)
FOOT_ROOM = 1e-3      # (times input_scale) the least room either side of such a kink


@dataclass(frozen=True)
class Pin:
    """A kink of unit ``unit`` of layer ``layer`` (1-based), located from four answers."""

    layer: int
    unit: int
    x: np.ndarray
    v: Optional[np.ndarray] = None      # the line's direction
    jump: Optional[np.ndarray] = None   # the outputs' slope along v, right of x less left


def wanted(fan_in: int) -> int:
    """Pinned kinks a row of ``fan_in`` entries (and a bias) is refitted to."""
    return fan_in + 1 + MARGIN + int(MARGIN_SHARE * fan_in)


def pin_kinks(run: Run, layered: Layered, need: dict, reserve: int = 0,
              anchors: Optional[dict] = None) -> tuple[list, np.ndarray, np.ndarray]:
    """Kinks of the units in ``need`` on random lines, where the model predicts them;
    ``(pins, inputs asked, answers)``. ``need[(layer, unit)] = (kinks, per_entry)``: how many more
    kinks the unit wants, and per entry of its row (an earlier unit) how many more where that
    entry is on (layer 1: inputs, always on); a crossing is asked when it serves either.

    Each linear piece of a line beside a chosen kink is asked twice: at a third and two thirds
    of it, shared by the kinks at its ends, where it is short (``3 input_scale``) or both its
    ends are chosen; near its chosen kink where it is long (answers far out round coarser).
    Sharing long pieces too saved 1.4k of 11k pin answers on random 80-40-20-1 (parameter
    errors 0.2x to 4.2x of before over the seeds sweep, at most 2.2e-11), and a needed unit's
    kink between two chosen ones, both pieces asked already, is a pin at no cost. Fewer kinks
    come back where lines rarely cross a unit (``DRAWS`` bounds the lines), a kink is invisible
    in the outputs, or the budget is short (the lines that fit are asked, the rest dropped:
    ``reserve`` rows are kept back for what follows the pins, besides the run's check
    reserve).

    A unit that random lines seldom cross (on for a few inputs in a thousand) is sought from
    ``anchors[(layer, unit)]``, points on its boundary (its kinks on the searched lines): up to
    :data:`ANCHOR_DRAWS` more lines through points beside them, at distances spread over a
    tenth of to once a typical input's norm, ``input_scale sqrt(d)`` (trained digits
    784-64-32-10: a layer-2 unit had 5 pins and its output weights were 1.2e-8 off). Closer
    (``input_scale`` at most), a rare unit's kinks came back where its earlier units' outputs
    vary little, and its row was ill-determined by them: 82 pins of a unit on for 0.01% of
    inputs spanned its 64 entries with a condition number of 2e5, and the row was 3.2e-9 off
    (2.5e-10 from these lines)."""
    want = {k: (int(n), np.array(e, int)) for k, (n, e) in need.items()
            if n > 0 or (np.asarray(e) > 0).any()}
    plans = []                       # (x0, v, piece edges, chosen kinks [(index, key)])
    for _ in range(DRAWS):
        if not want:
            break
        x0 = run.rng.normal(size=run.d) * run.input_scale
        _plan_line(run, layered, x0, need, want, plans)
    anchors = {k: a for k, a in (anchors or {}).items() if len(a)}
    for n in range(ANCHOR_DRAWS):
        keys = [k for k in want if k in anchors]
        if not keys:
            break
        at = anchors[keys[n % len(keys)]]
        scale = run.input_scale * 10.0 ** -run.rng.uniform(0.0, 1.0)
        x0 = at[run.rng.integers(len(at))] + run.rng.normal(size=run.d) * scale
        _plan_line(run, layered, x0, need, want, plans)
    return _asked(run, plans, reserve)


def _plan_line(run: Run, layered: Layered, x0: np.ndarray, need: dict, want: dict,
               plans: list) -> None:
    """The kinks of a random line through ``x0`` that serve ``want`` (counted off it), with a
    needed unit's kink between two chosen ones for free, appended to ``plans``."""
    v = run.rng.normal(size=run.d)
    v /= np.linalg.norm(v)
    t, layer, unit = layered.kinks(x0, v, run.t_max)
    if not t.size:
        return
    edges = np.concatenate([[-run.t_max], t, [run.t_max]])
    zs = layered.preacts(x0 + t[:, None] * v)
    chosen = []
    for k in range(t.size):
        key = (int(layer[k]), int(unit[k]))
        if key not in want:
            continue
        if _beside(edges, k) < MIN_GAP * run.t_max:
            continue
        total, entries = want[key]
        on = _on(zs, key, k, entries.size)
        if total <= 0 and not (on & (entries > 0)).any():
            continue
        chosen.append((k, key))
        _served(want, key, on)
    # a kink of a unit in ``need`` between two chosen ones has both its pieces asked
    # already: a free pin
    picked = {k for k, _ in chosen}
    for k in range(1, t.size - 1):
        key = (int(layer[k]), int(unit[k]))
        if k in picked or key not in need or not {k - 1, k + 1} <= picked:
            continue
        if _beside(edges, k) < MIN_GAP * run.t_max:
            continue
        chosen.append((k, key))
        if key in want:
            _served(want, key, _on(zs, key, k, want[key][1].size))
    if chosen:
        plans.append((x0, v, edges, chosen))


def foot_pins(run: Run, layered: Layered, net, units, reserve: int = 0) -> tuple:
    """A kink of each of ``units`` of layer 1 close to the origin: the bias follows from it as
    ``-w . x``, with the row's error entering only as ``|x|`` times it (line 0 crosses the
    planes at ``|x|`` of tens to thousands). Each line passes through the unit's plane at
    ``|x|`` about ``input_scale`` or less (its foot ``-b w / |w|^2``, then points beside it
    along the plane) in a random direction; the first of :data:`FOOT_TRIES` where the model
    leaves the kink room and ``net`` says it shows in the outputs is asked. ``(pins, inputs
    asked, answers)`` as :func:`pin_kinks`."""
    plans = []
    for u in units:
        w = layered.weights[0][u]
        norm = np.linalg.norm(w)
        foot = -layered.biases[0][u] * w / norm ** 2
        for n in range(FOOT_TRIES):
            side = run.rng.normal(size=run.d)
            side -= (side @ w) * w / norm ** 2
            x0 = foot + side / np.linalg.norm(side) * run.input_scale * n / FOOT_TRIES
            v = run.rng.normal(size=run.d)
            v /= np.linalg.norm(v)
            t, layer, unit = layered.kinks(x0, v, run.t_max)
            at = np.flatnonzero((layer == 1) & (unit == u))
            if not at.size:
                continue
            k = int(at[0])
            edges = np.concatenate([[-run.t_max], t, [run.t_max]])
            if _beside(edges, k) < FOOT_ROOM * run.input_scale:
                continue
            step = _step(run, edges, k)
            ts = t[k] + step * np.array([-2.0, -1.0, 1.0, 2.0])
            y = np.asarray(net(x0 + ts[:, None] * v))
            diff = (y[3] - y[2] - y[1] + y[0]) / step
            if np.linalg.norm(diff) <= VISIBLE * search.EPS * np.abs(y).max() / step:
                continue
            plans.append((x0, v, edges, [(k, (1, int(u)))]))
            break
    return _asked(run, plans, reserve)


def _asked(run: Run, plans: list, reserve: int) -> tuple:
    """The answers beside the chosen kinks of ``plans`` (``(x0, v, piece edges, [(kink
    index, (layer, unit))])``, asked as :func:`pin_kinks` says), and the pins they give."""
    x, asks, spent = [], [], 0
    for x0, v, edges, chosen in plans:
        pairs = {}                   # each kink's two pieces, asked at two points each
        picked = {k for k, _ in chosen}
        for k, _ in chosen:
            step = _step(run, edges, k)
            for r, sign in ((k, -1.0), (k + 1, 1.0)):
                width = edges[r + 1] - edges[r]
                # a short piece, or one between two chosen kinks: its thirds, shared
                if width <= 3.0 * run.input_scale or {r - 1, r} <= picked:
                    pairs[r, 0] = (edges[r] + width / 3.0, edges[r] + 2.0 * width / 3.0)
                else:                                # a long one: near this kink only
                    near = (edges[k + 1] + sign * step, edges[k + 1] + sign * 2.0 * step)
                    pairs[r, k + 1] = tuple(sorted(near))
        if run.remaining is not None and spent + 2 * len(pairs) > (
                run.remaining - run.check_reserve - reserve):
            break
        keys = list(pairs)
        ts = np.array([pairs[key] for key in keys]).reshape(-1)
        x.append(x0 + ts[:, None] * v)
        asks.append((keys, ts))
        spent += ts.size
    if not x:
        return [], np.zeros((0, run.d)), np.zeros((0, 0))
    x = np.concatenate(x)
    y = run.query("precision")(x)
    pins, pos = [], 0
    for (x0, v, edges, chosen), (keys, ts) in zip(plans, asks):
        ys = y[pos:pos + ts.size]
        pos += ts.size
        piece = {}                   # (piece, where): a point on it, its value and slope
        for j, key in enumerate(keys):
            t1, t2 = ts[2 * j], ts[2 * j + 1]
            piece[key] = (t1, ys[2 * j], (ys[2 * j + 1] - ys[2 * j]) / (t2 - t1))
        size = np.abs(ys).max()
        for k, key in chosen:
            ends = [piece[(r, 0)] if (r, 0) in piece else piece[r, k + 1] for r in (k, k + 1)]
            (ta, ya, sa), (tb, yb, sb) = ends
            step = _step(run, edges, k)
            diff = sa - sb
            if np.linalg.norm(diff) <= VISIBLE * search.EPS * size / step:
                continue
            # ya + sa (t - ta) = yb + sb (t - tb), solved for t in the least-squares sense
            rhs = yb - ya + sa * ta - sb * tb
            t = float(diff @ rhs / (diff @ diff))
            if abs(t - edges[k + 1]) > AGREE * step:
                continue
            pins.append(Pin(key[0], key[1], x0 + t * v, v, sb - sa))
    return pins, x, y


def _on(zs: list, key: tuple, k: int, size: int) -> np.ndarray:
    """Which entries of unit ``key``'s row (the earlier layer's units) are on at kink ``k``."""
    return (zs[key[0] - 2][k] > 0) if key[0] > 1 else np.ones(size, bool)


def _served(want: dict, key: tuple, on: np.ndarray) -> None:
    """Counts one more kink of unit ``key`` (with entries ``on`` seen on) against ``want``."""
    total, entries = want[key]
    entries = entries - on
    if total - 1 <= 0 and not (entries > 0).any():
        del want[key]
    else:
        want[key] = (total - 1, entries)


def _beside(edges: np.ndarray, k: int) -> float:
    """The shorter of the two pieces beside kink ``k`` (between pieces ``k`` and ``k + 1``)."""
    return min(edges[k + 1] - edges[k], edges[k + 2] - edges[k + 1])


def _step(run: Run, edges: np.ndarray, k: int) -> float:
    """How far from kink ``k`` (between pieces ``k`` and ``k + 1``) its pieces are asked: a
    third of the shorter piece, at most ``input_scale`` (answers far out round coarser)."""
    return min(_beside(edges, k), 3.0 * run.input_scale) / 3.0
