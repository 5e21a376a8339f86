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

import numpy as np

from . import search
from .context import Run
from .layered import Layered

MARGIN = 1            # kinks asked beyond a row's unknowns
PER_ENTRY = 2         # kinks asked where each entry of the row is on
DRAWS = 400           # bound on random lines drawn (the model only, no queries) per call
MIN_GAP = 1e-6        # (times t_max) neighbouring kinks closer than this leave no room
AGREE = 0.25          # the kink found lies within this fraction of the step of the predicted
VISIBLE = 1e6         # the slopes must differ by this many rounding errors of the answers


@dataclass(frozen=True)
class Pin:
    """A kink of unit ``unit`` of layer ``layer`` (1-based), located from four answers."""

    layer: int
    unit: int
    x: np.ndarray


def pin_kinks(run: Run, layered: Layered, need: dict,
              reserve: int = 0) -> tuple[list, np.ndarray, np.ndarray]:
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
    reserve)."""
    want = {k: (int(n), np.array(e, int)) for k, (n, e) in need.items()
            if n > 0 or (np.asarray(e) > 0).any()}
    plans = []                       # (x0, v, piece edges, chosen kinks [(index, key)])
    for _ in range(DRAWS):
        if not want:
            break
        x0 = run.rng.normal(size=run.d) * run.input_scale
        v = run.rng.normal(size=run.d)
        v /= np.linalg.norm(v)
        t, layer, unit = layered.kinks(x0, v, run.t_max)
        if not t.size:
            continue
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
            pins.append(Pin(key[0], key[1], x0 + t * v))
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
