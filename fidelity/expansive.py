"""An expansive first layer (more units than inputs): the second layer's rows from each unit's
boundary, followed across the first layer's planes.

With ``h_1 > d`` a deeper kink's jump ``sum_{i on} a_i w_i`` does not determine ``a`` (``h_1``
unknowns, ``d`` equations), and which units are on depends on orientations not known yet. With
the first layer as measured (``z_i = w_i . x + b_i``, each up to sign), a second-layer unit is

    z_j = sum_i a_i relu(z_i) + C . x + c

(a unit oriented the other way adds ``a_i z_i``, linear in ``x``: ``C`` collects those). Inside a
region of layer 1 its boundary is a hyperplane with normal ``sum_{i: z_i > 0} a_i w_i + C``, and
where it crosses plane ``i`` the normal changes by exactly ``a_i w_i`` (into the side
``z_i > 0``). So from one kink: the normal there (its jump, measured in full), then a walk along
the boundary; at a plane whose entry is unknown, one short line just beyond it locates the
boundary again, and ``a_i``, the only unknown, follows. A plane whose entry is known is crossed
without a query. With every entry known, ``C`` and ``c`` follow.

Orientations, in polynomial time: a unit oriented the other way puts ``-a_i w_i`` into ``C``, so
``C_j = -sum_i s_i a_ji w_i`` for every unit ``j`` with the same ``s`` in ``{0, 1}^h``: ``d``
linear equations per unit, solved by least squares and rounded (checked by the residual).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Optional

import numpy as np

from .context import Run
from .deepstate import (IN_RANGE, DeepConfig, State, completed, fits_outputs, from_kinks,
                        kink_jump, kink_sides, layer_info, new_line, predicted, window, with_rows)
from .errors import UnsupportedArchitecture
from .layered import Layered
from .measure import MeasureConfig
from .results import Kind

CROSSINGS = 6         # bound on planes crossed while following one boundary, per unit of layer 1
BEYOND = 0.05         # the short line sits this fraction of the way to the next plane beyond
REACH = 4.0           # ... and reaches this many times that distance either side
MAX_STARTS = 4        # bound on kinks followed, per unit of layer 1
QUERIES_PER_UNIT = 3000  # bound on the queries of layer 2, per unit of layer 1
VERIFY = 1e-4         # a followed unit's predicted kink this close (times the half length)
MISSES = 20           # ... to a found one, at all but one in this many crossings of lines
SIGN_RESIDUAL = 1e-3  # relative residual of the orientation fit that is accepted
STALL = 1             # known planes crossed in a row (per unit of layer 1) before the
                      # walk aims elsewhere
CANDIDATES = 3        # kinks beyond a plane whose jumps are read (_entry_along), at most
MAX_GAPS = 4          # entries of a followed unit its walk may leave unreached (random
                      # 10-20-20-1 s4: a unit on for 0.03% of inputs, 3 unreached from each
                      # of 160 kinks followed with 2 allowed; s228: 0.8%, left out so)
MAX_GAPPED = 2        # ... and units of those added to layer 2 (the fewest that fit)
GAP_WALKS = 3         # walks from kinks of a unit that came back with entries unreached, before
                      # its kinks count as explained (a walk from elsewhere may reach them)
ALONG = 4             # directions a crossing's jump is measured along (w_k, g, and two to check)
PLANE_ONLY = 100.0    # a crossing's jump this much more along w_k than g: plane k's kink
FIT = 1e-5            # residual of a crossing's jump (along ALONG unit directions, itself of
                      # norm 1) that is accepted
FLAT = 1e-6           # a followed boundary whose entries are all below this (relative to its
                      # linear part) never bends: a layer-1 unit
MAX_ADDED = 4         # bound on layer-1 units added that way


def second_layer(run: Run, cfg: DeepConfig, mcfg: MeasureConfig, use_jit, layered: Layered,
                 state: State, patience: int) -> Layered:
    """Layer 1 signed and layer 2 (pending signs) of a victim whose first layer has more units
    than inputs.

    Raises:
        UnsupportedArchitecture: no boundary could be followed, or the orientations of layer 1
            are not determined.
    """
    w, b = layered.weights[0], layered.biases[0]
    q0, lines0 = run.oracle.queries, len(state.lines)
    units, gapped, starts, quiet, random_lines, added = [], [], 0, 0, 0, 0
    looked, walks = set(), []       # walks: per gapped unit, the walks from its kinks
    if state.followed is not None and _same_planes(state.followed[:2], (w, b)):
        # searched again (more patience, or lines through a failed check's inputs) over the
        # same layer 1: the units followed before are kept, their kinks not followed again
        # (random 10-20-20-1 s2: each of two retries followed the same 19 units again, about
        # 25,000 queries each)
        w, b, units, gapped, looked, walks = state.followed
        units, gapped, looked, walks = list(units), list(gapped), set(looked), list(walks)
    while starts < MAX_STARTS * w.shape[0] * (1 + added):
        if run.oracle.queries - q0 > QUERIES_PER_UNIT * w.shape[0] * (1 + added):
            run.note(Kind.LAYER_INCOMPLETE, f"layer 2: {run.oracle.queries - q0} queries spent "
                     f"following {len(units)} units; the layer is closed with them", layer=2)
            break
        known = units + [g[0] for g, n in zip(gapped, walks) if n >= GAP_WALKS]
        todo = _unexplained(run, Layered((w,), (b,)), known, state, looked)
        if not todo:
            if quiet >= patience or random_lines >= cfg.lines_per_layer:
                break
            new_line(run, mcfg, use_jit, state, Layered((w,), (b,)))
            random_lines += 1
            quiet += 1
            continue
        li, k = todo[0]
        looked.add((li, k))
        starts += 1
        line = state.lines[li]
        mine = [i for i, (g, _) in enumerate(gapped) if _close(w, b, [g], line)[:, k].any()]
        for i in mine:           # a walk from a kink of an incomplete unit counts, whatever
            walks[i] += 1        # it finds
        if mine:
            # the unit's entries known, its normal there too: the walk crosses the planes of
            # known entries without a query and aims at the others from a new place (random
            # 10-20-20-1 s0: a walk from another kink reached the plane the first missed)
            (a_g, big_c, _), (gaps, _) = gapped[mine[0]]
            x = line.x0 + line.t[k] * line.v
            start = (x, (a_g * (w @ x + b > 0)) @ w + big_c)
            prior = (a_g, np.isin(np.arange(a_g.size), gaps, invert=True))
        else:
            start, prior = _normal_at(run, mcfg, state, li, k), None
        if start is None:
            continue
        followed = _follow(run, mcfg, state, w, b, *start, prior=prior)
        if followed is None or not _verified(run, w, b, followed[0], state):
            continue
        unit = followed[0]
        if followed[1].size == 0 and np.abs(unit[0]).max() <= FLAT * np.linalg.norm(unit[1]):
            # a boundary that bends nowhere: a layer-1 unit that line 0 missed (random
            # 10-20-20-1 s5: 19 of 20). Layer 2 is followed again with it
            if added >= MAX_ADDED:
                raise UnsupportedArchitecture(
                    f"layer 1: more than {MAX_ADDED} units missed by the first line")
            size = np.linalg.norm(unit[1])
            w, b = np.concatenate([w, unit[1][None] / size]), np.append(b, unit[2] / size)
            units, gapped, looked, walks, added = [], [], set(), [], added + 1
            run.note(Kind.LAYER_ONE_ADDED, f"layer 1: a unit line 0 did not see was found "
                     f"following a boundary that never bends, and added (now {w.shape[0]})",
                     line=li)
            continue
        if followed[1].size:
            # entries unreached: kept aside (it may be a stray walk), explaining no kink
            if not any(_same(unit, other[0]) for other in gapped):
                gapped.append((unit, followed[1:]))
                walks.append(1)
        elif not any(_same(unit, other) for other in units):
            units.append(unit)
            quiet = 0
    h = w.shape[0]
    state.followed = (w, b, tuple(units), tuple(gapped), frozenset(looked), tuple(walks))
    if not units:
        raise UnsupportedArchitecture(
            f"layer 2: no unit's boundary could be followed across layer 1's {w.shape[0]} "
            f"planes (an expansive layer 1: {w.shape[0]} units for {run.d} inputs)")
    a = np.array([u[0] for u in units])
    big_c = np.array([u[1] for u in units])
    c = np.array([u[2] for u in units])
    flip, agree = _orientations(w, a, big_c)
    if not agree.all():
        run.note(Kind.LAYER_INCOMPLETE, f"layer 2: {int((~agree).sum())} followed units "
                 "disagree with the orientations of layer 1 the others agree on; left out",
                 layer=2, units=int((~agree).sum()))
        units = [u for u, k in zip(units, agree) if k]
        a, big_c, c = a[agree], big_c[agree], c[agree]
    sign = 1.0 - 2.0 * flip
    bias = c + a @ (flip * b)
    norm = np.sqrt((a ** 2).sum(1) + bias ** 2)
    run.note(Kind.DEEP,
             f"layer 1 is expansive ({h} units for {run.d} inputs): layer 2's {len(units)} "
             f"units followed along their boundaries, layer 1's orientations solved from them",
             layer=2, units=len(units))
    state.infos[-1] = replace(state.infos[-1], width=h, unidentified=())
    layered = Layered((w * sign[:, None], a / norm[:, None]), (b * sign, bias / norm))
    if gapped and state.unfitted is not None and not fits_outputs(layered, *state.unfitted):
        layered = _with_gapped(run, mcfg, layered, w, b, flip, a, gapped, state)
    state.infos.append(layer_info(state, 2, layered.widths[-1], len(state.lines) - lines0,
                                  starts, run.oracle.queries - q0))
    return layered


def _with_gapped(run: Run, mcfg: MeasureConfig, layered: Layered, w, b, flip, a,
                 gapped: list, state: State) -> Layered:
    """Layer 2 (complete units, which do not explain the answers layer 1 could not fit) with
    the followed units whose walks left entries unreached (``gapped``: ``((a, C, c), (gaps,
    side))``), when those answers are then exactly an affine map of it; as it was when not.

    The unreached plane ``k`` keeps one side all along the boundary (the walk's ``side``), so
    the unit is ``sum_{i not k} a_i relu(z_i) + C . x + c + alpha relu(s z_k)`` with
    ``relu(s z_k) = 0`` on the boundary. Its linear part must vanish in the true orientations
    (``flip``): where ``relu(s z_k)`` is ``h_k + s z_k`` that gives ``alpha``; where it is
    ``h_k``, ``alpha`` is read from the answers (:func:`fidelity.deepstate.completed`). Random
    10-20-20-1 s2: a layer-2 unit on for 1.5% of inputs whose boundary never meets one plane
    of layer 1; the layer was refused. ``w, b``: layer 1 as measured; ``a``: the complete
    units' entries."""
    closed, rest, seen = [], [], list(a)
    for (a_j, big_c, c), (gaps, side) in gapped:
        keep = np.ones(a_j.size, bool)
        keep[gaps] = False
        if any(_parallel(a_j[keep], other[keep]) for other in seen):
            continue           # a unit followed in full elsewhere (or a walk already here)
        seen.append(a_j)
        s = np.where(side, -1.0, 1.0)               # relu(s z_k) is 0 along the boundary
        lin = big_c + (a_j * flip) @ w              # the linear part in the true orientations
        const = c + a_j @ (flip * b)
        mixed = (s > 0) == (flip[gaps] > 0)          # relu(s z_k) = h_k + s z_k there
        alpha = np.zeros(gaps.size)
        if mixed.any():
            cols = (s[mixed, None] * w[gaps[mixed]]).T
            alpha[mixed] = np.linalg.lstsq(cols, -lin, rcond=None)[0]
            lin = lin + cols @ alpha[mixed]
            const = const + alpha[mixed] @ (s[mixed] * b[gaps[mixed]])
        if np.linalg.norm(lin) > SIGN_RESIDUAL * (np.linalg.norm(big_c) + np.linalg.norm(a_j)):
            continue
        a_j = a_j.copy()
        a_j[gaps] = alpha
        (closed if mixed.all() else rest).append((a_j, const, gaps[~mixed]))
    hidden = Layered(layered.weights[:1], layered.biases[:1])
    full = np.column_stack([layered.weights[1], layered.biases[1]])
    full = full[:, :-1] / full[:, -1:]       # (as the completion reads rows: a / c)
    found = closed + rest          # the fewest of them that explain the answers (some may be
    for size in range(1, min(MAX_GAPPED, len(found)) + 1):      # walks that went astray)
        for pick in itertools.combinations(range(len(found)), size):
            units = [found[i] for i in pick]
            done = np.concatenate([full] + [(r / c)[None] for r, c, g in units if not g.size])
            open_ = [(r / c, g) for r, c, g in units if g.size]
            unseen = []
            if open_:
                filled = completed(run, hidden, done, open_, state)
                if filled is None:
                    # not determined by the answers: those layer-1 units are off wherever
                    # the unit is on in all of them (random 10-20-20-1 s7: a layer-2 unit on
                    # for 0.14% of inputs, with a layer-1 unit on at 0.3% of those, was left
                    # out, the network 1e-2 off); read from the kinks it then misses, or 0
                    filled, unseen = from_kinks(run, hidden, done, open_, state, mcfg,
                                                 shown=True)
                done = filled
            candidate = with_rows(hidden, done)
            if fits_outputs(candidate, *state.unfitted):
                run.note(Kind.LAYER_INCOMPLETE, f"layer 2: {size} followed unit(s) had entries "
                         "their boundaries never reach (that unit of layer 1 keeps one side all "
                         "along them): read from their linear part or the output fit",
                         layer=2, units=size)
                if unseen:
                    run.note(Kind.UNIDENTIFIED_UNITS, f"layer 2: (unit, entry) {unseen}: no "
                             "answer and no kink determines them (those layer-1 units are off "
                             "wherever a line crossed the unit's boundary): set to 0",
                             layer=2, entries=unseen)
                return candidate
    if found:
        run.note(Kind.LAYER_INCOMPLETE, f"layer 2: {len(found)} followed units had entries "
                 "their boundaries never reach, not determined by the answers; left out",
                 layer=2, units=len(found))
        state.left_out.setdefault(2, []).extend(("row", r / c, g) for r, c, g in found)
    return layered


def _same_planes(one: tuple, other: tuple) -> bool:
    """Whether two layers 1 ``(w, b)`` have the same rows in the same order, each up to its
    sign (a retry starts from layer 1 as the orientations signed it)."""
    (w, b), (v, c) = one, other
    if w.shape != v.shape:
        return False
    p, q = np.column_stack([w, b]), np.column_stack([v, c])
    sign = np.sign((p * q).sum(1))
    return bool(np.all(sign != 0) and np.array_equal(p, sign[:, None] * q))


def _parallel(p: np.ndarray, q: np.ndarray, tol: float = 1e-6) -> bool:
    """Whether two rows are equal up to a scale of either sign: a walk's row takes the sign
    of the normal it started from, which depends on the side its line crossed from (random
    10-20-20-1 s7, lines through a failed check's inputs drawn first: a second walk of a
    found unit, -0.546 times its row, came back with an entry unreached and was tried as a
    new unit)."""
    size = np.linalg.norm(p) * np.linalg.norm(q)
    return bool(size > 0 and 1.0 - abs(p @ q) / size <= tol)


def _same(one, other, tol: float = 1e-6) -> bool:
    """Whether two followed units are one (their ``(a, C, c)`` equal up to scale and sign)."""
    p, q = (np.concatenate([u[0], u[1], [u[2]]]) for u in (one, other))
    p, q = p / np.linalg.norm(p), q / np.linalg.norm(q)
    return min(np.abs(p - q).max(), np.abs(p + q).max()) <= tol


def _unexplained(run: Run, layered: Layered, units: list, state: State, looked: set) -> list:
    """``(line, kink)`` of the found kinks that neither layer 1 nor ``units`` explain. The
    caller counts among them a unit whose walks left an entry unreached, once
    :data:`GAP_WALKS` walks came back so: it predicts its kinks on the side of that plane
    they kept, the only side its boundary reaches (random 10-20-20-1 s2 followed such a unit
    again from each of its kinks, 60,000 queries; with one walk, s13 found the rest of its
    unit 9,000 queries later)."""
    w, b = layered.weights[0], layered.biases[0]
    out = []
    for li, line in enumerate(state.lines):
        if not line.t.size:
            continue
        known = predicted(run, layered, line, None)
        if units:           # all units' crossings at once (one at a time: 60% of the time
            # of random 14-23-15-10-1 s5094, 2.8M calls)
            known |= _close(w, b, units, line).any(0)
        out.extend((li, k) for k in np.flatnonzero(~known) if (li, k) not in looked)
    return out


def _normal_at(run: Run, mcfg: MeasureConfig, state: State, li: int, k: int):
    """The kink ``k`` of line ``li`` and its boundary's normal there (the jump, measured in
    full on both sides): ``(point, normal)``, or None."""
    jump = kink_jump(run, mcfg, state, li, k,
                     "while measuring a kink of an expansive layer's successor")
    if jump is None or jump.rank_ratio > 1e-4:
        return None
    line = state.lines[li]
    return line.x0 + line.t[k] * line.v, jump.row[:-1].copy()


def _follow(run: Run, mcfg: MeasureConfig, state: State, w: np.ndarray, b: np.ndarray,
            x: np.ndarray, g: np.ndarray, prior=None):
    """``(a, C, c)`` of the unit whose boundary passes through ``x`` with normal ``g``, in the
    scale of ``g``; None when the walk stalls or a crossing is not found. ``prior``: ``(a,
    known)``, the entries already known (in the scale of ``g``)."""
    h = w.shape[0]
    a = np.zeros(h) if prior is None else prior[0].copy()
    known = np.zeros(h, bool) if prior is None else prior[1].copy()
    y, g = x.copy(), g.copy()
    on = w @ y + b > 0
    last, free, stalled, aim = -1, 0, np.zeros(h, bool), 0
    for _ in range(CROSSINGS * h):
        if known.all():
            break
        if free > STALL * h:           # crossing known planes in circles: another target
            stalled[aim] = True
            free = 0
        move = _direction(w, b, y, g, on, known | stalled, last)
        if move is None:
            break
        u, k, t, beyond, aim = move
        y_k = y + t * u
        into = w[k] @ u > 0
        s = 1.0 if into else -1.0
        on = on.copy()
        on[k] = into
        if known[k]:
            g = g + s * a[k] * w[k]
            y, last, free = y_k, k, free + 1
            continue
        found = _beyond(run, mcfg, state, w, b, y_k, u, g, on, beyond)
        fit = None
        for p, li, j in found[:CANDIDATES]:
            # the new normal is g + s a_k w_k up to scale: its jump along a few directions
            # (w_k, g, and random ones that check the fit) gives a_k with 2 (1 + ALONG)
            # queries, where the normal in full took 2 (d + 1) (random 10-20-20-1 s0: 26,776
            # -> 20,924 queries). A kink of another unit does not fit. The walk's error
            # only adds up this way: at the 20th plane of s0's first walk a_k agreed with
            # the one from the normal in full to 1e-11, as at the first
            a_k = _entry_along(run, mcfg, state, li, j, g, s * w[k], w, b)
            if a_k is not None:
                fit = (p, a_k)
                break
        if fit is None:
            return None
        p, a[k] = fit
        known[k] = True
        g = g + s * a[k] * w[k]
        y, last, free, stalled = p, -1, 0, np.zeros(h, bool)
    gaps = np.flatnonzero(~known)
    if gaps.size > MAX_GAPS:
        return None
    # an entry the walk could not reach: that plane may never meet the boundary, whose
    # side of it is then ``on`` all along (see _with_gapped)
    big_c = g - (a * on) @ w
    c = -(a @ np.maximum(w @ y + b, 0.0) + big_c @ y)
    return (a, big_c, c), gaps, on[gaps]


def _entry_along(run: Run, mcfg: MeasureConfig, state: State, li: int, j: int, g: np.ndarray,
                 wk: np.ndarray, w: np.ndarray, b: np.ndarray) -> Optional[float]:
    """``a`` with the jump across kink ``j`` of line ``li`` along ``ALONG`` directions
    proportional to ``(g + a wk) . e``, or None when no such ``a`` fits to :data:`FIT`. Each
    step stays within half the way to the nearest plane of layer 1 (``w, b``): a step across
    plane ``k`` adds a multiple of ``wk . e`` to its derivative, which the fit cannot tell
    from ``a``; a jump that is ``wk``'s alone is plane ``k``'s kink, not the boundary's."""
    line = state.lines[li]
    lo, hi, step = kink_sides(run, mcfg, line, j)
    mid = 0.5 * (lo + hi)
    rng = np.random.default_rng([run.seed, 47, li, j])     # a stream of its own
    dirs = np.concatenate([[wk / np.linalg.norm(wk), g / np.linalg.norm(g)],
                           rng.normal(size=(ALONG - 2, run.d))])
    dirs[2:] /= np.linalg.norm(dirs[2:], axis=1, keepdims=True)
    centres = line.x0 + mid[:, None] * line.v
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.abs(centres @ w.T + b)[:, None, :] / np.abs(dirs @ w.T)[None]   # (2, n, h)
    steps = np.minimum(step[:, None], 0.5 * room.min(2))                      # (2, n)
    if not (steps > 0).all():
        return None                                 # a centre on a plane of layer 1
    pts = np.concatenate([np.concatenate([c[None], c + h[:, None] * dirs])
                          for c, h in zip(centres, steps)])
    if not run.room(pts.shape[0]):
        raise run.out_of_budget("while following a boundary across an expansive layer")
    state.spared += max(0, 2 * (run.d + 1) - pts.shape[0])
    y = np.asarray(run.query("gradients")(pts)).reshape(2, ALONG + 1, -1)
    slope = (y[:, 1:] - y[:, :1]) / steps[:, :, None]
    u, sv, _ = np.linalg.svd(slope[1] - slope[0], full_matrices=False)
    if sv[0] == 0 or (sv.size > 1 and sv[1] > 1e-6 * sv[0]):
        return None
    basis = np.stack([dirs @ g, dirs @ wk], 1)
    coef, *_ = np.linalg.lstsq(basis, u[:, 0], rcond=None)
    if np.linalg.norm(basis @ coef - u[:, 0]) > FIT or \
            abs(coef[1]) * np.linalg.norm(wk) > PLANE_ONLY * abs(coef[0]) * np.linalg.norm(g):
        return None
    return float(coef[1] / coef[0])


def _direction(w, b, y, g, on, known, last):
    """A step along the boundary (normal ``g``) from ``y`` toward the nearest plane whose entry
    is unknown: ``(unit direction, first plane crossed, distance, distance to the plane after
    it, the plane aimed at)``, or None. Standing on plane ``last`` (just crossed), a step
    that would cross it back follows the ridge where the boundary meets it instead. The sides
    are ``on``'s, not the signs of ``z`` (which round either way on a plane)."""
    z = w @ y + b
    best = None
    for i in np.flatnonzero(~known):
        u = _toward(w, g, w[i], 1.0 if not on[i] else -1.0, None)
        if u is not None and last >= 0 and (w[last] @ u > 0) != on[last]:
            u = _toward(w, g, w[i], 1.0 if not on[i] else -1.0, w[last])
        if u is None:
            continue
        rates = w @ u
        tiny = 1e-12 * np.abs(rates).max()
        ahead = np.where(on, rates < -tiny, rates > tiny)
        if last >= 0:
            ahead[last] = False
        if not ahead[i]:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(ahead, np.maximum(-z / rates, 0.0), np.inf)
        order = np.argsort(t)
        k, dist = int(order[0]), float(t[order[0]])
        after = float(t[order[1]] - dist) if np.isfinite(t[order[1]]) else dist
        score = float(t[i])
        if best is None or score < best[0]:
            best = (score, u, k, dist, max(after, 0.0), int(i))
    return None if best is None else best[1:]


def _toward(w, g, target, sign, ridge):
    """The unit direction nearest to ``sign * target`` that keeps to the boundary (normal
    ``g``) and, when given, to the plane of normal ``ridge``; None when there is none."""
    basis = np.array([g] if ridge is None else [g, ridge])
    q, _ = np.linalg.qr(basis.T)
    delta = target - q @ (q.T @ target)
    size = np.linalg.norm(delta)
    if size <= 1e-9 * np.linalg.norm(target):
        return None
    return sign * delta / size


def _beyond(run: Run, mcfg: MeasureConfig, state: State, w, b, y_k, u, g, on, after):
    """The boundary just beyond plane ``k`` (crossed at ``y_k`` along ``u``): a short line
    across it, a little way beyond; the found kinks in the region ``on``, nearest its centre
    first: ``[(point, line, kink)]``."""
    scale = max(np.linalg.norm(y_k), run.input_scale)
    eps = max(BEYOND * after, 1e-6 * scale)
    centre = y_k + eps * u
    zc = w @ centre + b          # off any plane it sits on (a ridge walk runs along one)
    flat = np.abs(zc) < 0.1 * eps * np.linalg.norm(w, axis=1)
    centre = centre + 0.5 * eps * (np.where(on, 1.0, -1.0)[flat] @ w[flat]) if flat.any() \
        else centre
    n = g / np.linalg.norm(g)
    half = REACH * eps
    line = window(run, mcfg, state, centre, n, half, Layered((w,), (b,)))
    pts = centre + line.t[:, None] * n
    ok = np.flatnonzero((((pts @ w.T + b) > 0) == on).all(1))
    ok = ok[np.argsort(np.abs(line.t[ok]))]
    return [(pts[j], len(state.lines) - 1, int(j)) for j in ok]


def _crossings(w, b, units, x0, v, half) -> np.ndarray:
    """Where the boundaries of ``units`` (a list of ``(a, C, c)``) cross ``x0 + t v``,
    ``|t| < IN_RANGE * half``. Between two planes of layer 1 each boundary is a straight
    piece, so its values at the planes' crossings place it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = -(w @ x0 + b) / (w @ v)
    knots = np.sort(np.concatenate([[-IN_RANGE * half, IN_RANGE * half],
                                    t1[np.isfinite(t1) & (np.abs(t1) < IN_RANGE * half)]]))
    x = x0 + knots[:, None] * v
    a = np.array([u[0] for u in units]).reshape(len(units), -1)
    big_c = np.array([u[1] for u in units]).reshape(len(units), -1)
    c = np.array([u[2] for u in units], float)
    z = np.maximum(x @ w.T + b, 0.0) @ a.T + x @ big_c.T + c     # (knots, units)
    za, zb = z[:-1], z[1:]
    k, unit = np.nonzero(za * zb < 0)
    frac = za[k, unit] / (za[k, unit] - zb[k, unit])
    return knots[k] + frac * (knots[k + 1] - knots[k])


def _close(w, b, units, line) -> np.ndarray:
    """``(crossings, found kinks)``: which of the crossings of ``line`` by the boundaries of
    ``units`` lie within ``VERIFY`` times its half length of which kinks found on it."""
    t = _crossings(w, b, units, line.x0, line.v, line.half)
    return np.abs(t[:, None] - line.t[None, :]) <= VERIFY * line.half


def _verified(run: Run, w, b, unit, state: State) -> bool:
    """Whether the unit's boundary predicts a found kink where it crosses the searched lines:
    at two or more, missing at most one in ``MISSES`` (a kink of it the search merged with a
    close one: a short line with a layer-1 kink 3e-5 beside it)."""
    hits = misses = 0
    for line in state.lines:
        near = _close(w, b, [unit], line).any(1)
        hits += int(near.sum())
        misses += int((~near).sum())
    return hits >= 2 and misses * MISSES <= hits


def _orientations(w: np.ndarray, a: np.ndarray, big_c: np.ndarray):
    """Which layer-1 units are oriented against their measured rows (0/1 each), from
    ``C_j = -sum_i s_i a_ji w_i`` over the units ``j``, and which units agree with them (a
    unit that disagrees most is left out, one at a time, while at least half remain).

    Raises:
        UnsupportedArchitecture: the orientations are not determined, or no orientation
            agrees with most units.
    """
    h, d = w.shape
    keep = np.ones(a.shape[0], bool)
    while True:
        lhs = np.concatenate([(w * a_j[:, None]).T for a_j in a[keep]])      # (J d, h)
        rhs = -big_c[keep].reshape(-1)
        rank = np.linalg.matrix_rank(lhs)
        if rank < h:
            raise UnsupportedArchitecture(
                f"layer 1: the orientations of its {h} units are not determined by the "
                f"{int(keep.sum())} units of layer 2 found (rank {rank})")
        s = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
        flip = (s > 0.5).astype(float)
        miss = (lhs @ flip - rhs).reshape(-1, d)
        size = np.linalg.norm(big_c[keep], axis=1) + np.linalg.norm(a[keep], axis=1)
        worst = np.linalg.norm(miss, axis=1) / size
        if worst.max() <= SIGN_RESIDUAL:
            return flip, keep
        if 2 * (keep.sum() - 1) < a.shape[0]:
            raise UnsupportedArchitecture(
                f"layer 1: no orientation of its {h} units agrees with layer 2's boundaries "
                f"(relative residual {worst.max():.1e})")
        keep[np.flatnonzero(keep)[int(np.argmax(worst))]] = False
