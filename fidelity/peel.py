"""The next hidden layer: the signs of the last known layer and the rows of the one after it,
from the kinks the model does not explain (see :mod:`fidelity.deep` for the method)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple, Optional

import numpy as np

from . import expansive, search
from .context import Run
from .deepstate import (IN_RANGE, MATCH, STRAY, DeepConfig, Line, Point, State, completed,
                        fits_outputs, flat_at, from_kinks, kink_jump, layer_info, new_line,
                        pieces, plane_hits, predicted, read_jump, spend, window, with_rows)
from .layered import Layered, crossings
from .measure import MeasureConfig
from .results import Kind

VERIFY = 1e-4         # a candidate unit's predicted kink this close (times the line's half
                      # length) to a found one is confirmed (its row is not polished yet)
ON = 1e-7             # a signature entry above ON * its largest is nonzero
AT_BOUNDARY = 1e-6    # a kink where a unit on has |z| below this share of the sum of its
                      # terms' sizes is layer m's own (see _reading)
EARLIER_BOUNDARY = 1e-8  # ... and a unit of an earlier layer, polished by then: its own kinks sat
                        # within 1e-12 (random 37-20-13-10-8-3 s7855), but random
                        # 100-50-50-50-10 s0 has a layer-3 kink 2e-7 from a layer-1 boundary
                        # (dropped at 1e-6, its first search of layer 3 over all 50 layer-2
                        # units found 16 units, not 35, and the run was refused)
SAME_UNIT = 1e-5      # two kinks' signatures agreeing to this (relative) are one unit
DUPLICATE = 1e-6      # a repaired layer-1 row this close (1 - |cos|) to a known one is that unit
CONFINING = 4         # complete units found before their regions tell deeper groups apart
SINGLES = 2           # groups of one kink, times the units found, that show deeper units
JOIN_GROUPS = 12      # at most this many incomplete groups are tried in pairs (_joined)
NULL_PROBES = 2       # probes along what layer m cannot see, per side of a kink
NULL_DRAWS = 8        # ... drawn at most this many times
MAX_CANCEL = 1e3      # signatures of kinks whose bias cancels worse than this are compared
                      # at this loose a tolerance (SAME_UNIT times it)
RUN_KINKS = 4         # the kinks of a run in all are bounded by this many times max_kinks
                      # (with 2, random 100-50-50-50-10 s0, its retries of layer 2 given their
                      # own max_kinks, had all 50 layer-2 units and reached this bound in the
                      # search of layer 3: refused at 977,743 queries)
MAX_COND = 1e4        # a Jacobian worse conditioned than this is not inverted at that kink
ORIENT_SHARE = 1e-4   # a unit that carries this share of no kink's jump (the readings' noise
                      # where a unit is off: 1e-7-3e-6) is oriented the way that has it off
                      # at most of the kinks its probes moved, and its noise drops no kink
FULL_RANK_WINDOWS = 6  # lines searched where layer m's Jacobian has full rank, per round,
FULL_RANK_ROUNDS = 3   # ... while no deeper kink is read (_full_rank_windows)
FULL_RANK_DRAWS = 64   # ... points drawn (no query) per line at most
FULL_RANK_DIRS = 8     # ... directions tried through each
AGAINST_ROW = 1e-6    # a kink on a known row's boundary within this share of its terms (_rewalk)
AGAINST_FIT = 1e-4    # relative residual of a kink read against a known row (_against_row):
                      # a window's kink among many deeper ones is probed with short steps (random
                      # 51-45-45-32-28-1 s9855: its layer-3 unit's true kinks 2-9e-6, the deeper
                      # units' kinks tried against its row 0.75 and more)
VANISH_SLACK = 10.0   # ... and the row so completed vanishes there within this many times that
                      # residual times the condition of its least-squares problem (at least
                      # AGAINST_ROW, at most 10 AGAINST_FIT)
FILL_TRIES = 3        # windows that find nothing before a group of kinks is given up
FEW_UNEXPLAINED = 0.02  # at most this share of kinks unexplained: a unit missing, not a layer
MAX_REPAIRS = 8       # kinks measured in full to find layer-1 units that line 0 missed
UNREAD_SHARE = 0.03   # ... tried while such kinks are fewer than those read too, while the
                      # kinks measured in full cost at most this share of the run's queries
MAX_UNREAD_REPAIRS = 8   # the same, from kinks the known layer-1 units could not read (per
                         # layer-1 model; four times that in all)
WINDOWS_PER_UNIT = 6  # bound on targeted windows per unit of the layer before
WALK_STEPS = 64       # bound on linear pieces walked along a boundary (see _walk)
WALK_DOWN = 0.05      # ... or down to this fraction of unit i's pre-activation
WALK_PAST = 0.05      # ... or past unit i's boundary by this fraction of the last step
WALK_AGAIN = 2        # walks again from a window's kink where unit i is still off (_rewalk)
SAMPLE_LINES = 2000   # random lines (no query) on which a boundary point is sought (_sampled)
GAP_MEMBERS = 3       # kinks of an incomplete unit before the output fit may complete it
ON_SHARE = 1e-3       # ... confirmed by a window where an entry's unit is on by this share
CROWDED = 10.0        # a predicted kink this close to a known unit's (times VERIFY) on a window
                      # is not tested
MISS_SHARE = 0.05     # a candidate unit is kept while it misses at most this share of the
                      # kinks it predicts that it finds (random 40-20-10-10-1 s15: a layer-3
                      # unit of 80 kinks predicted one 2e-4 beside a kink found on a window,
                      # 1.5 VERIFY, and was dropped: none of its kinks may be missed below 20)
FEW_MISSES = 2        # a candidate that missed this few is still counted on later lines (it
                      # may gather the hits to keep them below MISS_SHARE: random
                      # 40-20-10-10-1 s61, a layer-3 unit of 77 kinks missed one of its first
                      # 14 and was never looked at again; layer 3 was refused with 9 units)
SPREAD_SHARE = 1.0    # a candidate whose kinks lie in several regions of the units kept
SPREAD_HITS = 6       # ... is kept while it misses at most this share of the kinks it
                      # predicts and finds, and finds this many (_kept)
FROM_KINKS_GROUPS = 4  # incomplete units whose unseen entries are read from kinks at once,
                       # at most (more are a deeper layer's groups: random 784-16x8-1 tried
                       # hundreds, 14 s of a 38 s search)
UNSEEN_ALONE = 1       # ... and windows look for those of units with at most this many
                       # unread (deepstate.from_kinks; random 40-20-10-10-1 s222: a layer-3
                       # unit on for 0.009% of inputs, its entry 4 read so; with more, s19's
                       # layer-2 groups of 6 and 7 unread took 1,000 queries and the run
                       # 46,716 -> 73,372; s25's 4 unread, one read from a window, 6.5e-11)
GAP_KEEP_MEMBERS = 6  # an incomplete unit of this many kinks, on GAP_KEEP_LINES lines or more,
GAP_KEEP_LINES = 3    # ... and at most MAX_GAP_ENTRIES entries never seen, is completed alone
MAX_GAP_ENTRIES = 3   # ... when the output fit cannot complete every incomplete unit at once
PACE_FROM = 0.25      # once a search of a layer has measured this share of max_kinks, random
PACE_SHARE = 0.25     # lines keep pace with its windows: their kinks at least this share
AGAINST_MEMBERS = 3   # an incomplete group of this many kinks, on AGAINST_LINES lines or more,
AGAINST_LINES = 2     # ... has the kinks too deficient to read alone read against its row
AGAINST_GROUPS = 16   # ... (the largest this many groups), AGAINST_KINKS of them probed per
AGAINST_KINKS = 64    # round at most (see _read_against)


def few_unexplained(run: Run, layered: Layered, state: State, floor: int = 3) -> bool:
    """Whether the known layers explain nearly every kink found so far (a deeper layer would
    leave many): then a layer is missing a unit rather than the network a layer. ``floor``:
    this many unexplained kinks count as few however few kinks were found."""
    total = missed = 0
    for line in state.lines:
        total += line.t.size
        missed += int((~predicted(run, layered, line, None)).sum())
    return missed <= max(FEW_UNEXPLAINED * total, floor)


def next_layer(run: Run, cfg: DeepConfig, mcfg: MeasureConfig, use_jit, layered: Layered,
               state: State, patience: int) -> Optional[Layered]:
    """Signs of layer ``m`` and rows of layer ``m + 1`` from the kinks the model misses; a
    random line is searched only when no incomplete unit has a window left to try, and the
    layer is closed after ``patience`` random lines that bring no new unit, or as soon as it
    explains everything (``state.unfitted``)."""
    m = layered.depth
    h = h0 = layered.widths[-1]
    if h > run.d and m == 1:        # a deeper kink's jump does not determine its row
        return expansive.second_layer(run, cfg, mcfg, use_jit, layered, state, patience)
    q0, lines0, pts0 = run.oracle.queries, len(state.lines), len(state.points)
    quiet, found, tried, failed, misses, renewed = 0, 0, {}, set(), {}, set()
    against = set()     # _read_against's: (line, t) of the deficient kinks it probed, and
                        # (id(point), "against") of the unread ones it tried
    windows = WINDOWS_PER_UNIT * h     # bound on targeted windows for this layer
    searched_random, randoms = False, set()    # randoms: the lines this search drew
    max_random = cfg.lines_per_layer * max(1, patience // cfg.layer_patience)
    repairs, unread_tries, repaired = MAX_REPAIRS, MAX_UNREAD_REPAIRS, set()
    unread_total = 4 * MAX_UNREAD_REPAIRS
    # the points already measured are read first: on a retry (or a search aimed at a failed
    # check) the kinks of the units found are then explained, not measured again (10-10-10-1
    # s1: 108 kinks, 2,387 queries); on a new layer this is the reading the loop's first
    # analysis would make anyway (memoised in state.readings)
    _read_again(state, m)
    found_layer = _analyse(run, layered, state) if state.points else None
    complete = seeded = full_rank = 0
    for _ in range(max_random + WINDOWS_PER_UNIT * h + 1):
        for li, line in enumerate(state.lines):
            if line.done_for is not layered:     # a line is read once per model
                _measure_unexplained(run, mcfg, layered, state, li, line, found_layer)
                line.done_for = layered
        grown, stray = False, repairs > 0
        while m == 1 and not grown:
            # a kink read with a stray part is tried one a round; then kinks the known units
            # could not read, until one adds a unit (most are deeper kinks, whose local planes
            # predict nothing), on a budget of their own: with one budget, unread kinks tried
            # early in the layer left none for a stray part found later (40-20-10-10-1 s19)
            layered, kind = _repair_layer_one(run, mcfg, layered, state, repaired,
                                              stray=stray, unread=unread_tries > 0)
            if kind is None:
                break
            if kind == "stray":
                repairs, stray = repairs - 1, False
            else:
                unread_tries -= 1
            grown = layered.widths[-1] > h
            h = layered.widths[-1]
        if grown:        # the kinks layer 1 could not read are read again with the new unit,
            # and those still unread get a budget again
            unread_total -= MAX_UNREAD_REPAIRS - unread_tries
            unread_tries = min(MAX_UNREAD_REPAIRS, unread_total)
            for li, t in state.unread:
                line = state.lines[li]
                line.measured.discard(int(np.argmin(np.abs(line.t - t))))
        found_layer = _analyse(run, layered, state)
        if (m > 1 and state.deficient and seeded < FULL_RANK_ROUNDS
                and (state.orient is None or state.orient[0] is not layered)):
            # no deeper kink could be read: layer m is wider than the units on before it
            # wherever the lines went, and none is oriented yet to read them on the units
            # on (random 49-24-24-11-1 s3604: all 1,695 kinks of three searches of layer 3)
            seeded += 1
            full_rank += _full_rank_windows(run, mcfg, layered, state, found_layer,
                                            FULL_RANK_WINDOWS)
            found_layer = _analyse(run, layered, state)
        confined = _confined(layered, found_layer)
        too_few, confined = confined is None, confined or frozenset()
        size = found_layer.rows.shape[0] + sum(len(c[2]) > 1 and _key(c) not in confined
                                               for c in found_layer.partial)
        # closed as soon as its units, none left incomplete, explain every kink found and fit
        # the answers that the layer before could not: the random lines of patience would
        # find nothing (10-10-10-1 seeds 0-5: 4-16% fewer queries). An incomplete group
        # keeps it open: a 10-10-10-1 closed with one then had a row at cos 0.75 (a group of
        # one kink does not: the candidate has to predict that kink like every other)
        rows_now = found_layer.rows.shape[0]
        grouped = any(len(c[2]) > 1 for c in found_layer.partial)
        if rows_now > complete and not grouped and state.unfitted is not None:
            complete = rows_now
            candidate = _appended(layered, found_layer)
            if fits_outputs(candidate, *state.unfitted) and all(
                    predicted(run, candidate, line, None).all() for line in state.lines):
                break
        if m > 1 and found_layer.partial and state.deficient and _read_against(
                run, mcfg, layered, found_layer, state, against):
            found_layer = _analyse(run, layered, state)
        if searched_random:                 # patience counts random lines that found nothing
            # a layer-1 unit added is progress too: the next layer's kinks read anew
            quiet = quiet + 1 if size <= found and not grown else 0
        found = max(found, size)
        open_ = [c for c in found_layer.partial if _key(c) not in failed
                 and set(c[1].tolist()) - tried.get(_key(c), set())]
        # windows go first to the groups whose kinks lie in several regions of the units
        # found: a deeper unit's kinks agree like one unit's only within one region
        # (too few units found to tell, every open group keeps it open, as before)
        open_.sort(key=lambda c: 2 if _key(c) in confined else int(len(c[2]) == 1))
        # no window once the units found read every kink they do not explain as a deeper
        # one: the groups left are deeper units', and the random lines of patience close the
        # layer (random 40-20-10-10-1 s1: its ten layer-2 units at 12,737 queries, the search
        # closed at 21,643; at 14,072 so)
        deeper, stray = _deeper_kinks(layered, found_layer, state)
        reads_all = not stray and deeper >= 2 * found_layer.rows.shape[0] > 0
        if quiet >= patience and (reads_all or not any(
                too_few or len(c[2]) > 1 and _key(c) not in confined
                for c in open_) and not _lone_unit(run, layered, found_layer, state, open_)):
            break
        mine = state.layer_kinks.get(m + 1, 0) + len(state.points) - pts0
        if mine >= cfg.max_kinks or \
                len(state.points) - state.kinks_floor >= RUN_KINKS * cfg.max_kinks:
            run.note(Kind.LAYER_INCOMPLETE, f"layer {m + 1}: {mine} deeper kinks measured by "
                     f"its searches, {len(state.points)} in all (max_kinks): the layer is "
                     f"closed with what it has", layer=m + 1, kinks=mine)
            break
        searched_random = False
        # once a kink reads as a deeper unit's, or groups of one kink outnumber the units
        # found (SINGLES times), there are deeper units: their kinks agree like one unit's
        # within a region of this layer only, and make most groups. Windows go to the groups
        # of several kinks across regions first, the others wait (random 40-20-10-10-1 s6:
        # of the layer-2 search's 120 windows, 53 went to groups within one region, 51 of
        # them deeper units', and a layer-2 unit on for 2.9% of inputs was left with 4 and
        # missed). Otherwise no group waits (trained digits 784-64-32-10, training seed 1: its
        # layer-2 units, on sparsely, are often groups within a region or of one kink; made
        # to wait always, 253k -> 360k queries)
        singles = sum(len(c[2]) == 1 for c in open_)
        if deeper or singles > SINGLES * max(rows_now, CONFINING):
            first = [c for c in open_ if len(c[2]) > 1 and _key(c) not in confined]
            open_ = first or open_
        if reads_all:
            open_ = []
        # a wide layer's windows, each aimed at an incomplete group, can spend max_kinks
        # on kinks near the lines searched first, most of them deeper units': a unit whose
        # boundary those lines missed is then never seen (random 100-50-50-50-10 s3: the
        # search of layer 2 had no random line of its own, 294 windows, and closed at
        # max_kinks without a unit on for 13.6% of inputs, which 37% of random lines cross)
        behind = len(randoms) < max_random and mine >= PACE_FROM * cfg.max_kinks and sum(
            p.line in randoms for p in state.points[pts0:]) < PACE_SHARE * (
            len(state.points) - pts0)
        if open_ and windows > 0 and not behind:
            windows -= _fill(run, mcfg, layered, found_layer, state, open_, tried, failed,
                             misses, windows, renewed)
        elif len(randoms) < max_random:
            new_line(run, mcfg, use_jit, state, _known(layered, found_layer))
            randoms.add(len(state.lines) - 1)
            searched_random = True
        else:
            break
    state.layer_kinks[m + 1] = state.layer_kinks.get(m + 1, 0) + len(state.points) - pts0
    if seeded:
        state.unreadable.add(m + 1)
        run.note(Kind.DEEP, f"layer {m + 1}: no deeper kink could be read where the lines went "
                 f"(layer {m} is wider than the units on before it there): {full_rank} short "
                 f"lines searched where layer {m}'s Jacobian has full rank", layer=m + 1,
                 lines=full_rank)
    found_layer = _without_explained(run, layered, _completed(run, mcfg, layered,
                                                              found_layer, state), state)
    rows = found_layer.rows
    state.left_out.setdefault(m + 1, []).extend(
        ("points", np.array([p.x for p in c[2]]),
         np.array([MATCH * max(state.lines[p.line].half, run.input_scale) for p in c[2]]))
        for c in found_layer.partial)
    if found_layer.partial:
        run.note(Kind.LAYER_INCOMPLETE, f"layer {m + 1}: {len(found_layer.partial)} groups of "
                 "kinks agreed like one unit's but could not be completed (a deeper unit seen "
                 "twice in one region, or a unit whose row has entries never observed); left "
                 "out", layer=m + 1, groups=len(found_layer.partial))
    if rows.shape[0] == 0:       # reported with layer m + 1 if a later search finds it
        if m == 1 and layered.widths[0] > h0:
            state.grown = layered
        spend(state, m + 1, len(state.lines) - lines0, len(state.points) - pts0,
              run.oracle.queries - q0)
        return None
    dead = found_layer.dead
    if dead:
        run.note(Kind.UNIDENTIFIED_UNITS, f"layer {m}: units {list(dead)} were never on at a "
                 f"deeper kink: their weights into layer {m + 1} are unidentified (set to 0)",
                 layer=m, units=list(dead))
    state.infos[-1] = replace(state.infos[-1], width=h, unidentified=tuple(dead))
    state.infos.append(layer_info(state, m + 1, rows.shape[0], len(state.lines) - lines0,
                                  len(state.points) - pts0, run.oracle.queries - q0))
    return _appended(layered, found_layer)


def _deeper_kinks(layered: Layered, found: _Found, state: State) -> tuple[int, bool]:
    """``(read, stray)``: how many kinks measured the units found read as a deeper unit's,
    and whether one jumps outside the span of their gradients. A kink counts where it is at
    no boundary of theirs or earlier, they are fewer there than the units of layer ``m`` on,
    and their gradients are independent: then a kink of a unit of layer ``m + 1`` still
    missing jumps outside that span, and so does a deeper unit's where it is on."""
    rows = found.rows
    if not rows.shape[0]:
        return 0, False
    model = _appended(layered, found)
    m = model.depth
    last, memo = state.deeper
    if last is None or last.depth != m or not all(np.array_equal(a, b) for a, b in zip(
            last.weights + last.biases, model.weights + model.biases)):
        memo = {}
        state.deeper = (model, memo)
    read, stray = 0, False
    for p in state.points:
        if id(p) not in memo:           # (a verdict for the same model: points only come)
            memo[id(p)] = _deeper_kink(model, rows.shape[0], p)
        read += memo[id(p)] == 1
        stray |= memo[id(p)] == -1
    return read, stray


def _deeper_kink(model: Layered, found: int, p: Point) -> int:
    """1: ``p`` reads as a deeper unit's kink over ``model``; -1: it jumps outside the span of
    the gradients of its last layer; 0: it tells neither (see :func:`_deeper_kinks`)."""
    zs = model.preacts(p.x[None])
    inputs = _layer_inputs(p.x, zs)
    if any(_at_boundary(model, l, inputs[l], z[0]).any() for l, z in enumerate(zs)):
        return 0
    # (where the units found are as many as the units on before them, they span every
    # direction those move, and a kink reads so whatever it is)
    if found >= (zs[-2][0] > 0).sum():
        return 0
    jac = model.jacobian(p.x, model.depth)
    if _dependent(jac, zs):
        return 0
    return -1 if read_jump(p, jac)[1] > STRAY else 1


def _full_rank_windows(run: Run, mcfg: MeasureConfig, layered: Layered, state: State,
                       found: Optional[_Found], count: int) -> int:
    """Searches ``count`` short lines where the Jacobian of layer ``m`` has full rank, each
    within one region of the layers before it: their deeper kinks are read on every unit of
    layer ``m``, on or off, and orient the units seen on there (then the kinks elsewhere are
    read on the units on, :func:`_active`). The points are drawn without a query: where
    every unit of the earlier layers is on, at random pre-activations of their usual size
    (least squares when that asks too much), plus a random part that moves none of them.
    Returns the number of lines searched."""
    m, d = layered.depth, run.d
    below = Layered(layered.weights[:-1], layered.biases[:-1])
    lin, off, rows, offs = np.eye(d), np.zeros(d), [], []
    for w, b in zip(below.weights, below.biases):      # layers 1..m-1, all on
        lin, off = w @ lin, w @ off + b
        rows.append(lin)
        offs.append(off)
    g, off = np.concatenate(rows), np.concatenate(offs)
    pinv = np.linalg.pinv(g)
    rng = np.random.default_rng([run.seed, 15, m, len(state.lines)])
    size = float(np.median(np.abs(below.preacts(
        rng.normal(size=(FULL_RANK_DRAWS, d)) * run.input_scale)[0])))
    done = 0
    for _ in range(count * FULL_RANK_DRAWS):
        if done >= count:
            break
        free = rng.normal(size=d) * run.input_scale
        x = pinv @ (size * (0.5 + 2.0 * rng.random(g.shape[0])) - off) + free - pinv @ (g @ free)
        if np.linalg.norm(x) > run.t_max or _dependent(layered.jacobian(x, m),
                                                       layered.preacts(x[None])):
            continue
        best = None
        for _ in range(FULL_RANK_DIRS):      # the longest piece through x of a few directions
            v = rng.normal(size=d)
            v /= np.linalg.norm(v)
            t = below.kinks(x, v, run.t_max)[0]
            lo = float(t[t < 0].max()) if (t < 0).any() else -run.t_max
            hi = float(t[t > 0].min()) if (t > 0).any() else run.t_max
            if best is None or hi - lo > best[0]:
                best = (hi - lo, lo, hi, v)
        _, lo, hi, v = best
        centre, half = x + 0.5 * (lo + hi) * v, 0.5 * (hi - lo) * (1 - 1e-6)
        if half <= 1e-6 * run.input_scale or np.linalg.norm(centre) + half > run.t_max:
            continue
        line = window(run, mcfg, state, centre, v, half, _known(layered, found))
        _measure_unexplained(run, mcfg, layered, state, len(state.lines) - 1, line, found)
        done += 1
    return done


def _read_again(state: State, m: int) -> None:
    """Marks for measuring again, in layer ``m``'s coordinates, the kinks that a deeper
    model could not read: where the known units do not give the line's slope, a unit of an
    earlier layer is missing, and a search of layer ``m + 1`` again may be the one that finds
    it (random 40-20-10-10-1 s4: 8 kinks of a layer-2 unit on for 0.69% of inputs, on the
    lines through a failed check's inputs, were probed for layer 3 only; layer 2 was searched
    again without them and never found it)."""
    for li, t, level in [u for u in state.lacking if u[2] > m]:
        state.lacking.discard((li, t, level))
        line = state.lines[li]
        line.measured.discard(int(np.argmin(np.abs(line.t - t))))
        line.done_for = None


def _completed(run: Run, mcfg: MeasureConfig, layered: Layered, found: _Found,
               state: State) -> _Found:
    """``found`` with the incomplete units of :data:`GAP_MEMBERS` kinks or more completed from
    the answers the layer before could not fit (``state.unfitted``), when those answers are
    exactly an affine map of the new layer so completed (it is then the last hidden layer).

    An entry ``i`` of unit ``j`` that no kink of ``j`` saw means unit ``i`` of layer ``m`` is
    off all along ``j``'s boundary, so ``j`` keeps one side wherever ``h_i > 0``: there
    ``relu(z_j) = z_j + w h_i`` or 0. With ``z_j`` taken without the entry, ``y`` is then
    affine in ``relu(z_j)`` where ``h_i = 0``, ``z_j`` everywhere, ``z_j`` where ``h_i > 0``,
    and ``h_i``; the last two coefficients are ``(a + b) w`` and ``a + b`` or ``b w`` and
    ``0``, with ``b`` that of ``z_j``: ``w`` follows (random 10-8-7-1 s8913 and 7-7-4-1 s5045:
    a unit with 11 and 6 kinks and one entry never seen; the layer was refused).

    When no answer completes them and the outputs are no affine map of the complete units,
    the :func:`_strong` groups that lie in several regions are completed from the kinks
    alone (:func:`~fidelity.deepstate.from_kinks`)."""
    gapped = [c for c in found.partial if len(c[2]) >= GAP_MEMBERS]
    if not gapped:
        return found
    signed = layered.signed(found.signs)
    rows = completed(run, signed, found.rows, [(c[0], c[1]) for c in gapped], state)
    if rows is None:
        # the groups of many kinks on several lines with few entries unseen alone: the
        # others may be a rare unit's few kinks, whose unseen entries overlap theirs (random
        # 40-20-10-10-1 s8: layer-3 units of 28 and 26 kinks with one entry unseen each, and
        # two units on for 0.3% and 0% of inputs seen 5 and 3 times with 7 entries unseen)
        strong = [c for c in gapped if _strong(c)]
        strong = strong if len(strong) < len(gapped) else []
        if strong:
            rows = completed(run, signed, found.rows, [(c[0], c[1]) for c in strong], state)
            gapped = strong if rows is not None else gapped
    unread, source, alone = [], "the output fit", False   # alone: each row read on its own
    for some in ([gapped, strong] if rows is None and state.unfitted is not None else []):
        # not determined by the answers: the units of those entries are off wherever the
        # unit is on in all of them; read from the kinks the layer then misses, or 0
        # (random 40-20-10-10-1 s8: a layer-3 unit on for 0.014% of inputs, a layer-2 unit
        # on at 1 in 700 of those; it was left out and the network 5e-3 off)
        if not some or len(some) > FROM_KINKS_GROUPS:
            continue
        rows, unread = from_kinks(run, signed, found.rows, [(c[0], c[1]) for c in some],
                                  state, mcfg, most=UNSEEN_ALONE)
        if fits_outputs(with_rows(signed, rows), *state.unfitted):
            gapped, source = some, "the kinks the layer misses without them"
            break
        rows = None
    if rows is None and not _fits_last(layered, found, state):
        # no answer completes them, and the outputs are no affine map of the complete units
        # (the layer is not the last, or misses another unit): the groups of many kinks on
        # several lines and regions with few entries unseen are units whose boundary never
        # passes where those earlier units are on. Their entries are read from the kinks
        # the layer then misses, or left 0, and kept when a window where such a unit is on
        # holds (random 31-10-9-7-6-3 s9715: a layer-3 unit on for 4.7% of inputs, 30
        # kinks, one entry never seen, was left out and nothing fitted layer 4; random
        # 40-20-10-10-1 s65, whose layer 3 also missed its always-on unit, was refused so).
        # The final check stands behind an entry so read
        confined = _confined(layered, found) or frozenset()
        gapped = [c for c in gapped if _strong(c) and _key(c) not in confined]
        if gapped and len(gapped) <= FROM_KINKS_GROUPS:
            rows, unread = from_kinks(run, signed, found.rows,
                                      [(c[0], c[1]) for c in gapped], state, mcfg,
                                      most=UNSEEN_ALONE)
            source = ("the kinks the layer misses without them (the outputs are no affine "
                      "map of the complete units)")
            alone = True
    if rows is None:
        return found
    n_full, kept, unread = found.rows.shape[0], [], set(unread)
    for j, c in enumerate(gapped):
        row = rows[n_full + j].copy()
        holds = _one_sided_holds(run, mcfg, signed, row, c[1], state)
        read = [int(i) for i in c[1] if (n_full + j, int(i)) not in unread and row[i] != 0.0]
        if not holds and read and alone:
            # an entry read from a kink that another unit made (the value that explains the
            # most kinks the layer misses may explain a deeper unit's): its unit may rather
            # be off wherever unit i is on, where the entry moves nothing; with 0 its window
            # is searched again (random 14-12-11-9-7-5 s2076: a layer-3 unit on for 8% of
            # inputs, off wherever a layer-2 unit on for 1.4% is, read -1,061 and dropped,
            # and with it the layer's other completed unit)
            row[read] = 0.0
            holds = _one_sided_holds(run, mcfg, signed, row, c[1], state)
            if holds:
                unread |= {(n_full + j, i) for i in read}
        if holds:
            kept.append((j, c, row))
            continue
        run.note(Kind.LAYER_INCOMPLETE, f"layer {layered.depth + 1}: a unit completed from "
                 f"{source}, with its entries {c[1].tolist()} unseen, and a window where those "
                 "units are on found no kink: the completion is not kept",
                 layer=layered.depth + 1)
        if not alone:     # rows fitted together to the answers: one wrong, all in doubt
            return found
    if not kept:
        return found
    gapped = [c for _, c, _ in kept]
    rows = np.concatenate([rows[:n_full], np.array([r for _, _, r in kept])])
    unread = sorted((n_full + k, i) for k, (j, _, _) in enumerate(kept)
                    for (u, i) in unread if u == n_full + j)
    units = list(range(n_full, rows.shape[0]))
    state.filled = tuple((layered.depth + 1, u, tuple(int(i) for i in c[1]))
                         for u, c in zip(units, gapped))
    if unread:
        run.note(Kind.UNIDENTIFIED_UNITS, f"layer {layered.depth + 1}: (unit, entry) {unread}: "
                 f"no answer and no kink determines them (those units of layer "
                 f"{layered.depth} are off wherever a line crossed the unit's boundary): set "
                 "to 0", layer=layered.depth + 1, entries=unread)
    run.note(Kind.LAYER_INCOMPLETE, f"layer {layered.depth + 1}: units {units} had entries "
             f"{[c[1].tolist() for c in gapped]} that none of their kinks saw (those units of "
             f"layer {layered.depth} are off all along their boundaries): read from "
             f"{source}", layer=layered.depth + 1, units=units)
    rest = [c for c in found.partial if not any(c is g for g in gapped)]
    return _Found(found.signs, found.dead, rows, rest)


def _fits_last(layered: Layered, found: _Found, state: State) -> bool:
    """Whether the answers the layer before could not fit are an affine map of the new
    layer's complete units, or there are none (then only the answers complete the others)."""
    if state.unfitted is None:
        return True
    return bool(found.rows.shape[0]) and fits_outputs(_appended(layered, found),
                                                       *state.unfitted)


def _confined(layered: Layered, found: _Found) -> Optional[frozenset]:
    """The keys (:func:`_key`) of the incomplete groups whose kinks, two or more, all lie in
    one region of the complete units found (each on the same side of every one of them);
    None while fewer than :data:`CONFINING` units are complete. A
    deeper unit's kinks agree like one unit's only within a region of this layer, so such
    a group is more likely one, and its growth is no sign of a unit of this layer; a unit
    of this layer keeps its row across their regions (random 40-20-10-10-1 s1: layer 2
    had its 10 units at 15,829 queries; 145 groups of deeper kinks then took its 120
    windows and kept every random line counted as progress; the run took 42,534 queries,
    27,935 with such groups set aside). The lines so saved crossed rare deeper units too:
    s17 then came back 'ok' and 1e-2 off, a layer-3 unit off for 0.14% of inputs carried
    as a linear part, until the check looked for it in every orientation
    (deep._flipped_parts)."""
    if found.rows.shape[0] < CONFINING:
        return None
    model = _appended(layered, found)
    out = set()
    for c in found.partial:
        if len(c[2]) < 2:
            continue
        z = model.preacts(np.array([p.x for p in c[2]]))[-1]
        if ((z > 0).all(0) | (z < 0).all(0)).all():
            out.add(_key(c))
    return frozenset(out)


def _strong(cluster) -> bool:
    """Whether an incomplete unit is many kinks on several lines with few entries unseen."""
    return (len(cluster[2]) >= GAP_KEEP_MEMBERS and len(cluster[1]) <= MAX_GAP_ENTRIES
            and len({p.line for p in cluster[2]}) >= GAP_KEEP_LINES)


def _without_explained(run: Run, layered: Layered, found: _Found, state: State) -> _Found:
    """``found`` without the incomplete groups whose every kink a complete unit predicts: once
    a unit is completed (from the output fit, or by a later window), the groups of its kinks
    that did not join it are explained, not a unit left out (random 40-20-10-10-1 s0: five
    one-kink groups of a layer-3 unit completed from the output fit kept the exact network
    'unverified')."""
    if not found.partial or not found.rows.shape[0]:
        return found
    candidate = _appended(layered, found)
    cache = {}

    def explained(p: Point) -> bool:
        if p.line not in cache:
            line = state.lines[p.line]
            cache[p.line] = (line.t, predicted(run, candidate, line, None))
        t, hit = cache[p.line]
        at = np.flatnonzero(t == p.t)
        return bool(at.size and hit[at].all())

    rest = [c for c in found.partial if not all(explained(p) for p in c[2])]
    if len(rest) == len(found.partial):
        return found
    return _Found(found.signs, found.dead, found.rows, rest)


def _one_sided_holds(run: Run, mcfg: MeasureConfig, signed: Layered, row: np.ndarray,
                     gaps: np.ndarray, state: State) -> bool:
    """Whether a unit completed from the output fit (``row``; its entries ``gaps`` no kink
    saw) is confirmed where it matters. The completion takes the earlier units ``gaps`` to be
    off all along its boundary; where the completed row's own boundary (the model alone, on
    random lines drawn like the search's) passes where one of them is well on, a window
    across it there must find the kink (random 10-9-4-2 s4344: 'ok' with an entry read
    wrong, its outputs 5e-2 off on 0.1% of the inputs). Without such a place, nothing
    contradicts the completion."""
    m = signed.depth
    model = signed.appended(row[None], np.ones(1))
    best = None                                  # (share of unit i on, point)
    for pts in _crossings(run, model, np.random.default_rng([run.seed, 31, m])):
        z = signed.preacts(pts)[-1]
        share = z[:, gaps].max(1) / np.maximum(np.abs(z).max(1), 1e-300)
        k = int(np.argmax(share))
        if share[k] > 0 and (best is None or share[k] > best[0]):
            best = (share[k], pts[k])
    if best is None or best[0] < ON_SHARE:
        return True
    x = best[1]
    g = model.jacobian(x, m + 1)[0]
    n = g / np.linalg.norm(g)
    zs = signed.preacts(x[None])[-1][0]
    jac = signed.jacobian(x, m)
    # within the region where the entries' units stay on
    room = min(zs[i] / max(abs(jac[i] @ n), 1e-300) for i in gaps if zs[i] > 0)
    half = max(0.5 * room, 1e-6 * run.input_scale)
    line = window(run, mcfg, state, x, n, half)
    return bool(line.t.size and np.abs(line.t).min() <= VERIFY * half)


def _lone_unit(run: Run, layered: Layered, found: _Found, state: State, open_: list) -> bool:
    """Whether the open groups (of one kink, or confined to one region) likely hold the
    layer's last unit: the units found do not fit the answers the layer before could not,
    yet with them the model explains nearly every kink found (no deeper layer shows). Their
    windows then come before the layer is closed (random 80-40-20-1 s0: the 20th layer-2
    unit, on for 20% of inputs, was one kink on the last random line of patience; the layer
    closed, failed the output fit and was searched again with 3x the patience)."""
    if not open_ or state.unfitted is None or not found.rows.shape[0]:
        return False
    candidate = _appended(layered, found)
    return not fits_outputs(candidate, *state.unfitted) and few_unexplained(run, candidate,
                                                                             state)


def _known(layered: Layered, found: Optional[_Found]) -> Layered:
    """The units known so far, found ones of layer ``m + 1`` included: their kinks are the
    searches' hints."""
    return layered if found is None or not found.rows.shape[0] else _appended(layered, found)


def _appended(layered: Layered, found: _Found) -> Layered:
    """``layered`` with its last layer signed and the found units as a new layer (rows scaled
    to unit norm with the bias)."""
    return with_rows(layered.signed(found.signs), found.rows)


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


def _fill(run: Run, mcfg: MeasureConfig, layered: Layered, found: _Found, state: State,
          clusters: list, tried: dict, failed: set, misses: dict, most: int,
          renewed: set) -> int:
    """Follows each incomplete unit's boundary into the side where one of its missing earlier
    units is on, and searches a short line across it there (at most ``most`` windows). A unit
    whose window holds no kink agreeing with it is marked ``failed`` (a deeper unit's kinks
    that agreed within one region). Returns how many windows were searched.

    A group that has grown :func:`_strong` is almost surely a unit: the entries tried while it
    was weak are tried again (once: ``renewed``), and a straight window of it that misses
    costs no try: the next round comes to the same place and walks the boundary instead
    (random 10-10-10-1 s1: a unit of 8 kinks on 6 lines missed a straight window, was left
    out, and layer 2 searched again with 3x and 6x the patience; 5,655 -> 4,578 queries)."""
    done = 0
    signed = layered.signed(found.signs)
    m = signed.depth
    for cluster in clusters:
        if done >= most:
            break
        row, gaps, members = cluster
        key = _key(cluster)
        strong = _strong(cluster)
        if strong and key not in renewed:
            renewed.add(key)
            tried.pop(key, None)
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
                    best = (dist, i, p.x + 1.5 * (-zi / rate) * delta, p.x)
        tried.setdefault(key, set()).update(todo if best is None else [best[1]])
        if best is None:
            failed.add(key)
            continue
        dist, i, q, start = best
        gj = model.jacobian(q, m + 1)[0]
        spot = (i, tuple(np.round(q, 9)))
        straight = spot not in state.windows
        if not straight:
            # that window was searched already and found nothing that agrees: the straight
            # step left the boundary where earlier units switch. Walk the boundary instead (or
            # find where unit i is barely on from random lines), and cross it at a constant
            # z_i, where the unknown entry only shifts it (random 10-10-10-1 s5: the same
            # window thrice, the true z_j >= 0.49 along it)
            walked = _walk(model, signed, start, i, m)
            if walked is None:
                walked = _sampled(run, model, signed, i, m)
                if walked is not None:       # from there, to where unit i is barely on
                    walked = _walk(model, signed, walked[0], i, m, down=True) or walked
            if walked is not None:
                q, dist = walked
                gj = _across(model, signed, q, i, m, 4.0 * dist)
        state.windows.add(spot)
        hit = lost = False
        for _ in range(1 + (0 if straight else WALK_AGAIN)):
            zj = model.preacts(q[None])[-1][0, 0]
            nrm = np.linalg.norm(gj)
            if nrm == 0:
                lost = True
                break
            n = gj / nrm
            centre = q - zj / nrm * n
            half = max(4.0 * abs(zj) / nrm, 4.0 * dist, 1e-3 * run.input_scale)
            if half > run.t_max or np.linalg.norm(centre) > run.t_max:
                # a boundary followed out of the searched domain: such a window (seen once,
                # in a trial of another search order on random 40-20-10-10-1 s13: half length
                # 1.8e10 at |x| 4.6e9) finds no kink where every unit of the layer predicts
                # one, and those misses drop true units (8 of 10 there)
                lost = True
                break
            before = len(state.points)
            line = window(run, mcfg, state, centre, n, half, _known(layered, found))
            _measure_unexplained(run, mcfg, layered, state, len(state.lines) - 1, line, found,
                                 on_only=True)
            done += 1
            hit = any(_against_row(layered, found.signs, state, p, row, gaps, i)
                      if id(p) in state.row_only else _agrees(signed, p, row, i)
                      for p in state.points[before:])
            if hit or straight:
                break
            # the window crossed the unit's boundary where unit i is still off (the walk
            # ends just past where the candidate has it on, and the window leaves that
            # region): walk again from that kink, on the true boundary and nearer unit i's
            # (random 100-50-50-50-10 s0: four searches of layer 3 each walked to the same
            # window, found the same kink of its 50th unit with the unit of its missing entry
            # at z = -0.08, and after them layer 2 was searched again, 234k queries)
            walked = _rewalk(model, signed, line, i, m)
            if walked is None:
                break
            q, dist = walked
            gj = _across(model, signed, q, i, m, 4.0 * dist)
        if lost:
            failed.add(key)
            continue
        if not hit:
            if straight and strong:
                tried[key].discard(i)
                continue
            misses[key] = misses.get(key, 0) + 1
            if misses[key] >= (FILL_TRIES if len(members) > 1 else 1):
                failed.add(key)
    return done


def _across(model: Layered, signed: Layered, q: np.ndarray, i: int, m: int,
            reach: float = 0.0) -> np.ndarray:
    """The direction a window crosses the candidate unit's boundary at ``q``: its normal,
    made orthogonal to unit ``i``'s gradient where it can be (along it ``z_i`` stays put).
    Where the candidate's ``z`` is not monotone along it within ``reach`` of ``q`` (a walk
    can end on a ridge of the boundary, where an earlier unit switches and ``z`` is largest
    there), also orthogonal to the gradients of the earlier units whose boundaries lie within
    ``reach``: across the ridge the true ``z``, shifted by the unknown entry, may never reach
    0 (random 10-10-10-1 s137: a layer-2 unit on for 0.63% of inputs, its window at a layer-1
    unit's plane 0.002 away, the true ``z`` at most -0.0026 along it); along the ridge it
    rises. (Made so on every window, random 100-50-50-50-10 s0 went from 811,494 queries,
    exact, to 945,832 with an entry left 0.)"""
    gj = model.jacobian(q, m + 1)[0]
    gi = signed.jacobian(q, m)[i]
    perp = gj - (gj @ gi) / max(gi @ gi, 1e-300) * gi
    out = perp if np.linalg.norm(perp) > 1e-3 * np.linalg.norm(gj) else gj
    if reach <= 0 or _monotone(model, q, out / np.linalg.norm(out), reach):
        return out
    zs = signed.preacts(q[None])
    keep = [gi]
    for l in range(1, m + 1):
        jac = signed.jacobian(q, l)
        near = np.abs(zs[l - 1][0]) < reach * np.linalg.norm(jac, axis=1)
        if l == m:
            near[i] = False
        keep.extend(jac[near])
    basis, _ = np.linalg.qr(np.array(keep).T)
    ridge = gj - basis @ (basis.T @ gj)
    return ridge if np.linalg.norm(ridge) > 1e-3 * np.linalg.norm(gj) else out


def _monotone(model: Layered, q: np.ndarray, n: np.ndarray, reach: float) -> bool:
    """Whether the candidate's ``z`` (``model``'s last unit) rises all along ``q + t n``,
    ``|t| <= reach``: on each piece between the earlier units' kinks there."""
    t, layer, _ = model.kinks(q, n, reach)
    ts = np.unique(np.concatenate([[-reach], t[layer <= model.depth - 1], [reach]]))
    z = model.preacts(q + ts[:, None] * n)[-1][:, 0]
    return bool((np.diff(z) > 0).all())


def _rewalk(model: Layered, signed: Layered, line: Line, i: int, m: int):
    """:func:`_walk` again from a kink of ``line`` on the candidate's boundary (to
    :data:`AGAINST_ROW` of its terms: its unknown entries are off there) where unit ``i``
    is off, the one nearest unit ``i``'s boundary; None where the window has none."""
    if not line.t.size:
        return None
    xs = line.x0 + line.t[:, None] * line.v
    zs = model.preacts(xs)
    zi = zs[-2][:, i]
    near = np.array([_at_boundary(model, model.depth - 1, np.maximum(below, 0.0), z,
                                  AGAINST_ROW)[0] for below, z in zip(zs[-2], zs[-1])])
    ok = np.flatnonzero(near & (zi <= 0))
    if not ok.size:
        return None
    k = ok[np.argmax(zi[ok])]
    return _walk(model, signed, xs[k], i, m)


def _read_against(run: Run, mcfg: MeasureConfig, layered: Layered, found: _Found,
                  state: State, done: set) -> bool:
    """Reads kinks skipped for a Jacobian of too low a rank (``state.deficient``) against the
    rows of incomplete groups: a kink where a unit of a group's unknown entries is on is
    probed along the units on there (once: ``done``), and :func:`_against_row` reads it as
    that group's if its jump fits the known entries with the unknown ones free. (Kinks
    measured and left unread are tried too, without a query; their cached reading stays
    until the orientations change. Read at once, and row-only kinks read again on each
    change, random 79-72-57-26-12-3 s7220 went from 391,029 queries, exact, past its time
    cap at 886k, and 41-20-11-9-7-6 s2620 was no better.) The windows of :func:`_fill` do
    so only where they walk; kinks already found where a rare entry is on are most of those
    that can see it in a narrow layer (random 10-8-8-6-3 s1543: a layer-2 unit on for 16% of
    inputs was on at 14-21 of the kinks of three layer-3 units, each too deficient to read
    alone, and never seen). Returns whether one was read so."""
    # (not groups of two kinks: a wide layer's deeper units make many such in one region;
    # with them, random 79-72-57-26-12-3 s7220 went from 391,029 queries, exact, past its
    # time cap at 635k)
    groups = sorted((c for c in found.partial if len(c[2]) >= AGAINST_MEMBERS
                     and len({p.line for p in c[2]}) >= AGAINST_LINES),
                    key=lambda c: -len(c[2]))[:AGAINST_GROUPS]
    if not groups:
        return False
    signed = layered.signed(found.signs)
    read = False
    for p in state.points:
        if (id(p), "against") in done or state.readings.get(id(p), 0) is not None \
                or id(p) in state.solved or p.dirs is None:
            continue
        done.add((id(p), "against"))
        read |= _against_groups(layered, signed, found, state, p, groups)
    spots = [(li, k) for li, k in sorted(state.deficient) if k < state.lines[li].t.size
             and (li, float(state.lines[li].t[k])) not in done]
    if not spots:
        return read
    z = signed.preacts(np.array([state.lines[li].x0 + state.lines[li].t[k] * state.lines[li].v
                                 for li, k in spots]))[-1]
    wanted = np.zeros(len(spots), bool)
    for _, gaps, _ in groups:
        wanted |= (z[:, gaps] > 0).any(1)
    todo = {}
    for (li, k) in np.array(spots)[wanted].tolist():
        todo.setdefault(li, []).append(k)
    if not todo:
        return read
    count = 0
    for li, ks in todo.items():
        if count >= AGAINST_KINKS:
            break
        line = state.lines[li]
        ks = ks[:AGAINST_KINKS - count]
        count += len(ks)
        for k in ks:
            done.add((li, float(line.t[k])))
            line.measured.discard(k)
            state.deficient.discard((li, k))
        before = len(state.points)
        _measure_unexplained(run, mcfg, layered, state, li, line, found, on_only=True)
        for p in state.points[before:]:
            if id(p) in state.row_only:
                read |= _against_groups(layered, signed, found, state, p, groups)
    return read


def _against_groups(layered: Layered, signed: Layered, found: _Found, state: State, p: Point,
                    groups: list) -> bool:
    """Whether kink ``p`` reads as one of the incomplete ``groups`` (:func:`_against_row`)."""
    ctx = _row_context(signed, p)
    if ctx is None:
        return False
    for row, gaps, _ in groups:
        on = [int(i) for i in gaps if ctx[0][i] > 0]
        if on and _against_row(layered, found.signs, state, p, row, gaps, on[0], ctx):
            return True
    return False


def _walk(model: Layered, signed: Layered, x: np.ndarray, i: int, m: int,
          down: bool = False):
    """Follows the candidate unit's boundary (``model``'s last unit, entries unknown to it
    taken as 0) from ``x`` to just past where unit ``i`` of layer ``m`` turns on (``down``:
    from where it is on to where it barely is, a twentieth of the way), one linear piece of
    the known layers at a time, back onto the boundary after each step. A straight step from
    ``x`` leaves the boundary at the first earlier unit that switches: on a random 10-10-10-1
    it ended where 8 of 10 layer-1 units had switched off, far from the true boundary.
    Returns ``(point, length of the last step)``, or None."""
    step = 0.0
    sign = -1.0 if down else 1.0
    z0 = signed.preacts(x[None])[-1][0, i]
    for _step in range(WALK_STEPS):
        zi = signed.preacts(x[None])[-1][0, i]
        if (zi > 0) if not down else (0 < zi <= WALK_DOWN * z0):
            return x, step
        if down and zi <= 0:
            return None
        gi = sign * signed.jacobian(x, m)[i]
        gj = model.jacobian(x, m + 1)[0]
        gg = gj @ gj
        if gg == 0:
            return None
        delta = gi - (gi @ gj) / gg * gj
        rate = gi @ delta
        if rate <= 0:
            return None
        need = (zi - 0.5 * WALK_DOWN * z0) / rate if down else -zi / rate
        reach = need if down else 2.0 * need
        t, layer, unit = model.kinks(x, delta, reach)
        keep = (layer <= m) & (t > 1e-9 * need)
        own = keep & (layer == m) & (unit == i)        # unit i's boundary, about at ``need``
        others = t[keep & ~own]
        if down:
            t = t[keep]
            step = min(float(t.min()) * (1 + 1e-6) + 1e-12 * need, need) if t.size else need
        elif others.size and others.min() < need:      # another unit switches first
            step = float(others.min()) * (1 + 1e-6) + 1e-12 * need
        else:
            # past unit i's boundary by WALK_PAST of the step (at most halfway to the next
            # switch): just past it (1e-6 of the step), unit i was at 1e-11 of the layer's
            # largest there, and the window's kink was read as layer m's own (random
            # 40-20-10-10-1 s5); far past it, the unknown entry moves the boundary out of the
            # window (random 10-8-7-1 s8913 at half the step)
            later = others[others > need]
            step = need + min(0.5 * (float(later.min()) - need) if later.size else need,
                              WALK_PAST * need)
        x = x + step * delta
        gj = model.jacobian(x, m + 1)[0]
        gg = gj @ gj
        if gg == 0:
            return None
        x = x - model.preacts(x[None])[-1][0, 0] / gg * gj   # back onto the boundary
        step *= np.linalg.norm(delta)
    return None


def _crossings(run: Run, model: Layered, rng: np.random.Generator):
    """Per random line drawn like the search's (:data:`SAMPLE_LINES` of them, from ``rng``;
    no query), the points where it crosses ``model``'s last unit (the candidate), when any."""
    m = model.depth - 1
    drawn = rng.normal(size=(SAMPLE_LINES, 2, run.d))        # (x0, v) per line, in turn
    x0s = drawn[:, 0] * run.input_scale
    vs = drawn[:, 1] / np.array([np.linalg.norm(u) for u in drawn[:, 1]])[:, None]
    crossed = model.crossed(x0s, vs, run.t_max, 0)      # the others cannot: not read
    for x0, v in zip(x0s[crossed], vs[crossed]):
        t, layer, unit = model.kinks(x0, v, run.t_max)
        t = t[(layer == m + 1) & (unit == 0)]
        if t.size:
            yield x0 + t[:, None] * v


def _sampled(run: Run, model: Layered, signed: Layered, i: int, m: int):
    """A point of the candidate unit's boundary (as ``model`` has it) where unit ``i`` of
    layer ``m`` is barely on, from its crossings of random lines drawn like the search's (no
    query: the model's own kinks). Where the walk of :func:`_walk` stalls on a ridge of the
    boundary, the place may lie elsewhere: 3% of the kinks of a 10-10-10-1 unit, active on 97%
    of the inputs. Returns ``(point, its distance to unit i's boundary)``, or None."""
    # a layer-1 unit's gradient is its row everywhere; a deeper one's depends on the point
    flat = float(np.linalg.norm(signed.weights[0][i])) if m == 1 else None
    best = None
    for pts in _crossings(run, model, np.random.default_rng([run.seed, 14, i, m])):
        zi = signed.preacts(pts)[-1][:, i]
        for x, z in zip(pts[zi > 0], zi[zi > 0]):
            size = flat if flat is not None else np.linalg.norm(signed.jacobian(x, m)[i])
            dist = z / max(size, 1e-300)
            if best is None or dist < best[1]:
                best = (x, dist)
    return best


def _against_row(layered: Layered, signs: np.ndarray, state: State, p: Point, row: np.ndarray,
                 gaps: np.ndarray, i: int, ctx: Optional[tuple] = None) -> bool:
    """Whether the kink ``p``, which the rank of layer ``m``'s Jacobian there does not let
    read alone (more units on than it has), is a kink of the unit ``row`` (entries ``gaps``
    unknown) where its unknown entry ``i`` is on: its jump's direction ``s`` along the probes
    ``A`` must be ``mu s = A_known row_known + A_gaps x`` for some ``mu`` and the unknown
    entries on there ``x`` (a least-squares problem with that few unknowns), and the row so
    completed must vanish at ``p``. Such a kink is then read so (``state.solved``): the
    analysis sees those entries, and the unit's group is completed like any other. ``ctx``:
    :func:`_row_context` of ``p``, when the caller has it."""
    ctx = _row_context(layered.signed(signs), p) if ctx is None else ctx
    if ctx is None:
        return False
    z, a, direction = ctx
    on = z > 0
    unknown = np.zeros(row.size, bool)
    unknown[np.asarray(gaps, int)] = True
    gap_on, known = on & unknown, on & ~unknown
    if not on[i] or not unknown[i] or known.sum() < 2:
        return False
    lhs = np.concatenate([direction[:, None], -a[:, gap_on]], axis=1)
    rhs = a[:, known] @ row[known]
    sol, _, _, sv_lhs = np.linalg.lstsq(lhs, rhs, rcond=None)
    if sv_lhs[-1] <= sv_lhs[0] / MAX_COND:
        return False
    resid = np.linalg.norm(lhs @ sol - rhs) / max(np.linalg.norm(rhs), 1e-300)
    if resid > AGAINST_FIT:
        return False
    full = np.where(known, row, 0.0)
    full[gap_on] = sol[1:]
    h = np.maximum(z, 0.0)
    # (the entries solved for are as far off as the jump's noise, which the residual shows,
    # times the condition)
    vanish = min(AGAINST_ROW + VANISH_SLACK * resid * sv_lhs[0] / sv_lhs[-1], 10 * AGAINST_FIT)
    if abs(full @ h + 1.0) > vanish * (np.abs(full * h).sum() + 1.0):
        return False                 # the completed row does not vanish at its kink
    state.solved[id(p)] = (layered, signs.copy(), full)
    return True


def _row_context(signed: Layered, p: Point) -> Optional[tuple]:
    """``(z, A, s)`` of kink ``p`` for :func:`_against_row`: layer ``m``'s pre-activations
    there, its Jacobian along the probes, and the jump's direction along them; None where
    the Jacobian has full rank (the kink is read alone), the probes are the coordinates, or
    nothing jumps."""
    jac = signed.jacobian(p.x, signed.depth)
    zs = signed.preacts(p.x[None])
    if p.dirs is None or not _dependent(jac, zs):
        return None
    u, sv, _ = np.linalg.svd(p.jump, full_matrices=False)
    if sv[0] == 0:
        return None
    return zs[-1][0], p.dirs @ jac.T, u[:, 0] * sv[0]


def _agrees(signed: Layered, p: Point, row: np.ndarray, i: int) -> bool:
    """Whether the kink ``p`` belongs to the unit ``row`` and sees its entry ``i``."""
    jac = signed.jacobian(p.x, signed.depth)
    z = signed.preacts(p.x[None])[-1][0]
    on = z > 0
    # (read on the units on alone where the layer's Jacobian has too low a rank, _active)
    beta, resid, seen = read_jump(p, jac, on if _dependent(jac) else None)
    if resid > STRAY:
        return False
    if (on & ~seen).any():           # probed when a unit's orientation was still the other
        return False
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


def _repair_layer_one(run: Run, mcfg: MeasureConfig, layered: Layered, state: State,
                      tried: set, stray: bool = True, unread: bool = True):
    """A layer-1 unit that line 0 missed (its plane crossed it beyond ``t_max``) shows as kinks
    whose jumps layer 1 cannot explain, or cannot read at all. The worst such kink (``stray``:
    one read with a part outside layer 1's rows; else, with ``unread``, one never read) is
    measured in full; a plane that predicts kinks on the other lines joins layer 1. Returns
    ``(model, which kind of kink was tried, or None)``."""
    w, b = layered.weights[0], layered.biases[0]
    if state.stray_for is not w:
        state.stray_for, state.stray = w, {}
    worst, at = STRAY, None
    for p in state.points if stray else ():
        if p.level < 1 or (p.line, p.t) in tried:
            continue
        if id(p) not in state.stray:
            state.stray[id(p)] = read_jump(p, w)[1]
        resid = state.stray[id(p)]
        if resid > worst:
            worst, at = resid, p
    if at is not None:
        li, t = at.line, at.t
    else:        # no kink read with a stray part: one the known units could not read at all,
        # while such kinks outnumber those read (a unit missing, not a probe that crossed a
        # boundary beside one kink: a deeper boundary's flat piece predicts kinks too)
        left = sorted(u for u in state.unread if u not in tried) if unread else []
        read = sum(p.level >= 1 for p in state.points)
        # or while such tries are cheap beside the run's queries: a unit line 0 missed shows
        # as one unread kink per line that crosses its plane, outnumbered by the deeper
        # kinks read (random 10-10-10-1 s112: 2 of 7 unread against 19 read on 3 lines, 10
        # of 62 against 202 on 36; refused as a one-layer net too expansive)
        cheap = 2 * (run.d + 1) * (len(tried) + 1) <= UNREAD_SHARE * run.oracle.queries
        if not left or (len(state.unread) <= read and not cheap):
            return layered, None
        li, t = left[0]
    kind = "stray" if at is not None else "unread"
    tried.add((li, t))
    k = int(np.argmin(np.abs(state.lines[li].t - t)))
    jump = kink_jump(run, mcfg, state, li, k, "while measuring a missed layer-1 unit")
    if jump is None:
        return layered, kind
    row = jump.row[None]
    unit = np.concatenate([w, b[:, None]], axis=1)
    cos = (unit @ row[0]) / (np.linalg.norm(unit, axis=1) * np.linalg.norm(row[0]))
    if (np.abs(cos) > 1 - DUPLICATE).any():
        # a known unit's own plane (its kink was left unexplained): never a second copy, which
        # makes layer 1's Jacobian singular and every deeper kink unreadable (random 11-10-2-1
        # s674 was refused so)
        return layered, kind
    hits, misses = plane_hits(run, row, state.lines, np.array([li]))
    # a layer-1 kink shows only where some deeper path is on: its plane may cross a line
    # where nothing kinks (40-20-10-10-1 s8: two missed layer-1 units were measured six
    # times, each plane a true row that predicted 2 to 8 lines and missed line 1, where
    # both are invisible). A deeper unit's local plane predicts few of the lines it crosses.
    if not hits[0] or misses[0] > (0 if hits[0] < 2 else hits[0]):
        return layered, kind
    run.note(Kind.LAYER_ONE_ADDED, f"layer 1: a unit line 0 did not cross was found at a "
             f"kink of line {li} (" + (f"its jump left {worst:.1e} unexplained" if at is not None
             else "the known units could not read it") + ") and added", line=li)
    return Layered((np.concatenate([w, row[:, :-1]]),) + layered.weights[1:],
                   (np.concatenate([b, row[:, -1]]),) + layered.biases[1:]), kind


class _Plan(NamedTuple):
    """How a kink (index ``k`` on its line, at ``x``) is probed: along ``dirs``, the layer's
    pinv directions scaled by ``norms`` (rows ``jac`` of the units ``units`` they move) and
    the null probes; ``wide``, the plan along every unit when this one takes the units on
    only."""

    k: int
    x: np.ndarray
    jac: np.ndarray
    norms: np.ndarray
    dirs: np.ndarray
    units: np.ndarray
    wide: Optional["_Plan"] = None


def _measure_unexplained(run: Run, mcfg: MeasureConfig, layered: Layered, state: State,
                         li: int, line: Line, found: Optional[_Found],
                         on_only: bool = False) -> None:
    """Measures, in layer ``m``'s coordinates, the kinks of ``line`` nothing known explains
    (the verified units of layer ``m + 1`` found so far included). ``on_only`` (a window
    of :func:`_fill`, where layer ``m``'s orientations are known): probed along the units
    that are on at each kink only, about half the queries."""
    if found is not None and found.rows.shape[0]:
        explained = predicted(run, layered.signed(found.signs), line, found.rows)
    else:
        explained = predicted(run, layered, line, None)
    todo = [k for k in range(line.t.size) if not explained[k] and k not in line.measured]
    if not todo:
        return
    m, h, d = layered.depth, layered.widths[-1], run.d
    bounds = np.concatenate([[-line.half], line.t, [line.half]])
    plans, row_only = [], set()
    for k in todo:
        prev = plans[-1] if plans else None
        line.measured.add(k)
        state.unread.discard((li, float(line.t[k])))     # (again when it cannot be read)
        x = line.x0 + line.t[k] * line.v
        jac = layered.jacobian(x, m)
        zs = layered.preacts(x[None])
        if h > d or _dependent(jac, zs):
            units = _active(layered, state, x, jac) if m > 1 else None
            if units is None and on_only and m > 1 and found is not None \
                    and found.signs.size == h and h <= d:
                # a fill window's kink where the units on outnumber the rank: probed along
                # them all the same, it is read against the row of the unit the window is for
                # (_against_row)
                units = found.signs * zs[-1][0] > 0
                units = units if units.any() else None
                if units is not None:
                    row_only.add(k)
                    state.deficient.add((li, k))     # read in full when orientations change
            if units is None:
                if m > 1:
                    state.deficient.add((li, k))
                continue
            units = np.flatnonzero(units)
            # (every kink draws its null probes, shared or not: the run's random stream, and
            # the lines it draws later, do not depend on which pieces are shared)
            # (a kink probed to be read against a row draws from a stream of its own: the
            # lines drawn later stay those of a run without it)
            own = _probes(run, k, x, jac, units, np.random.default_rng(
                [run.seed, 16, li, k]) if k in row_only else None)
            plans.append(_shared(prev, k, x, jac, units) or own)
            continue
        # on_only: the direction pinv e_i moves z_i alone, which moves nothing where unit i
        # is off (read_jump reads its entry as nil); a unit never seen on (no orientation
        # yet) is probed
        on = np.ones(h, bool)
        if on_only and found is not None and found.signs.size == h:
            on = found.signs * zs[-1][0] > 0
            on[list(found.dead)] = True
        own = _probes(run, k, x, jac)
        if on.all():
            plans.append(_shared(prev, k, x, jac, np.arange(h)) or own)
            continue
        units = np.flatnonzero(on)
        same = _shared(prev, k, x, jac, units)
        if same is not None and same.wide is not None:
            plans.append(same._replace(wide=same.wide._replace(k=k, x=x)))
            continue
        full = _shared(prev and prev.wide, k, x, jac, np.arange(h)) or own
        keep = np.concatenate([on, np.ones(full.dirs.shape[0] - h, bool)])
        plans.append(_Plan(k, x, jac[on], full.norms[on], full.dirs[keep], units, full))
    if not plans:
        return
    steps = {}
    for i, plan in enumerate(plans):
        for side in (0, 1):
            lo, hi = bounds[plan.k + side], bounds[plan.k + side + 1]
            steps[i, side] = min(mcfg.step_frac * 0.5 * (hi - lo), run.step_cap)
    # the side before a kink planned like the kink before it on the line, with only kinks
    # of known units between them (layers up to m, or found units of layer m + 1; no kink
    # measured before): read from the side after that kink (_carried)
    carried = {i: i - 1 for i in range(1, len(plans))
               if plans[i].dirs is plans[i - 1].dirs and plans[i].k > plans[i - 1].k + 1
               and explained[plans[i - 1].k + 1:plans[i].k].all()}
    derivs, scales = {}, {}
    failed = _settled(run, mcfg, line, bounds, plans, [s for s in steps if s[1] or s[0] not in
                                                       carried], steps, derivs, scales)
    redo = _carried(run, layered, found, line, bounds, plans, carried, failed, steps, derivs,
                    scales)
    failed += _settled(run, mcfg, line, bounds, plans, redo, steps, derivs, scales)
    for i, (k, x, jac, norms, dirs, _, _) in enumerate(plans):
        if (i, 0) in failed or (i, 1) in failed:
            # a probe kept crossing a boundary, or the known units do not give the line's
            # slope there: a layer-1 unit the model lacks moves along the rest (random
            # 9-6-4-1 s6991: line 0 showed 3 of 6 layer-1 units, every deeper kink was
            # dropped so, and nothing was left to find the others from). In layer 1's
            # coordinates such a kink is a candidate for the repair, and read again with
            # the next model
            if m == 1:
                state.unread.add((li, float(line.t[k])))
            else:
                state.lacking.add((li, float(line.t[k]), m))
            continue
        jump = derivs[i, 1] - derivs[i, 0]
        # (the null probes' part too: a layer-1 unit the model lacks may kink there, with
        # little along the few units on)
        scaled = np.concatenate([jump[:norms.size] * norms[:, None], jump[norms.size:]])
        noise = 1e3 * search.EPS * max(scales[i, 0], scales[i, 1]) / min(steps[i, 0],
                                                                         steps[i, 1])
        if np.abs(scaled).max() <= noise:
            continue                                                       # no real kink
        state.points.append(Point(li, float(line.t[k]), x, dirs, jump, m))
        if k in row_only:
            state.row_only.add(id(state.points[-1]))


def _settled(run: Run, mcfg: MeasureConfig, line: Line, bounds: np.ndarray, plans: list,
             sides: list, steps: dict, derivs: dict, scales: dict) -> list:
    """Probes ``sides`` (``(plan, side)``) into ``derivs`` and ``scales``, again with shorter
    steps where the derivatives do not give the line's slope there (a probe crossed a
    boundary), or along every unit where a plan takes the units on only. Returns the sides
    that never gave it."""
    todo_sides = list(sides)
    for _ in range(1 + mcfg.remeasure_rounds):
        if not todo_sides:
            break
        got = _probe(run, line, bounds, plans, todo_sides, steps)
        todo_sides, widened = [], set()
        for (i, side), (dv, scale) in got.items():
            if i in widened:                 # probed again along every unit (below)
                continue
            derivs[i, side] = dv
            scales[i, side] = scale
            if _gives_slope(line, plans[i], side, dv, 1e3 * search.EPS * scale / steps[i, side]):
                continue
            wide = plans[i].wide
            if wide is not None:
                # the units on do not give the slope along the line: something moves along
                # the others' directions (a layer-1 unit the model lacks: random 11-7-6-1
                # s145); both sides are probed along every unit
                plans[i] = wide
                widened.add(i)
                todo_sides.extend(s for s in ((i, 0), (i, 1)) if s not in todo_sides)
                continue
            steps[i, side] /= mcfg.remeasure_shrink
            todo_sides.append((i, side))
    return todo_sides


def _gives_slope(line: Line, plan: _Plan, side: int, dv: np.ndarray, noise: float) -> bool:
    """Whether derivatives ``dv`` along ``plan``'s directions give the line's slope on that
    side of its kink (true when the line has no slopes there)."""
    slope = None if line.slopes is None else line.slopes[plan.k + side]
    if slope is None or np.isnan(slope).any():
        return True
    n = plan.norms.size
    pred = (dv[:n] * plan.norms[:, None]).T @ (plan.jac @ line.v)
    size = np.abs((dv[:n] * plan.norms[:, None]).T * (plan.jac @ line.v)).sum(1).max()
    return bool(np.abs(pred - slope).max() <= 1e-7 * size + noise)


def _carried(run: Run, layered: Layered, found: Optional[_Found], line: Line,
             bounds: np.ndarray, plans: list, carried: dict, failed: list, steps: dict,
             derivs: dict, scales: dict) -> list:
    """The derivatives before kink ``i`` from those after kink ``carried[i]``, the kink
    before it on the line along the same directions: between the two only known units
    switch (of layer ``m`` or before, or found units of layer ``m + 1``), none deeper, so
    a unit's derivative is the same where it is on on both sides, nil where it turned off,
    and probed where it turned on (a unit whose pre-activation changed sign, and read as nil
    before); a found unit ``r`` of layer ``m + 1`` that switched adds ``c_r w_r`` (its row,
    ``c_r`` unknown), read from one probe each along a unit on on both sides (with the
    sharing of :func:`_probe`, a random line of 40-20-10-10-1 s1 in layer 1's coordinates
    costs 53-55% of probing both sides of each kink in full). Returns the sides to probe in
    full: the slope along the line not given so, the side they come from not measured, or
    the found units' changes not told apart."""
    redo, asks = [], []
    upper = None
    if carried and found is not None and found.rows.shape[0]:
        t_up, layer_up, unit_up = _appended(layered, found).kinks(line.x0, line.v, line.half)
        upper = (t_up[layer_up == layered.depth + 1], unit_up[layer_up == layered.depth + 1])
    for i, j in carried.items():
        plan = plans[i]
        if (j, 1) in failed or plans[j].dirs is not plan.dirs:
            redo.append((i, 0))
            continue
        mids = [line.x0 + 0.5 * (bounds[p.k + s] + bounds[p.k + s + 1]) * line.v
                for p, s in ((plans[j], 1), (plan, 0))]
        z = layered.preacts(np.array(mids))[-1][:, plan.units]
        dv = derivs[j, 1].copy()
        n = plan.units.size
        size = np.abs(dv[:n]).max(1)
        was_on = size > ON * max(size.max(), 1e-300)
        flipped = (z[0] > 0) != (z[1] > 0)
        dv[:n][flipped & was_on] = 0.0
        need = np.flatnonzero(flipped & ~was_on)
        g = np.zeros((0, dv.shape[0]))
        if upper is not None:
            lo, hi = line.t[plans[j].k], line.t[plan.k]
            switched = np.unique(upper[1][(upper[0] > lo) & (upper[0] < hi)])
            if switched.size:
                signs = found.signs[plan.units]
                on = signs * z[1] > 0
                g = np.zeros((switched.size, dv.shape[0]))
                g[:, :n] = found.rows[switched][:, plan.units] * (signs * on / plan.norms)
                pick = _spread_rows(g[:, :n], on & ~flipped)
                if pick is None:
                    redo.append((i, 0))
                    continue
                need = np.concatenate([need, pick])
        steps[i, 0] = min(steps[i, 0], steps[j, 1])
        asks.append((i, dv, need, g, mids[1]))
    rows = [np.concatenate([base[None], base + steps[i, 0] * plans[i].dirs[need]])
            for i, _, need, _, base in asks if need.size]
    y = None
    if rows:
        total = sum(r.shape[0] for r in rows)
        if not run.room(total):
            raise run.out_of_budget("while measuring deeper kinks")
        y = run.query("gradients")(np.concatenate(rows))
    pos = 0
    for i, dv, need, g, _ in asks:
        scale = scales[carried[i], 1]
        if need.size:
            block = y[pos:pos + 1 + need.size]
            pos += 1 + need.size
            got = (block[1:] - block[0]) / steps[i, 0]
            if g.shape[0]:
                # the last g.shape[0] probes: along units on on both sides, whose change is
                # the found units' part alone
                at = need[-g.shape[0]:]
                coef = np.linalg.solve(g[:, at].T, got[-g.shape[0]:] - dv[at])
                dv += g.T @ coef
            dv[need] = got
            scale = max(scale, np.abs(block).max())
        if _gives_slope(line, plans[i], 0, dv, 1e3 * search.EPS * scale / steps[i, 0]):
            derivs[i, 0], scales[i, 0] = dv, scale
        else:
            redo.append((i, 0))
    return redo


def _spread_rows(g: np.ndarray, allowed: np.ndarray) -> Optional[np.ndarray]:
    """One column of ``g`` per row among the ``allowed``, picked greedily so that the square
    matrix they make is well conditioned (beyond :data:`MAX_COND`: None)."""
    picked = []
    rest = g.copy()
    for _ in range(g.shape[0]):
        size = np.where(allowed, np.linalg.norm(rest, axis=0), 0.0)
        size[picked] = 0.0
        best = int(np.argmax(size))
        if size[best] <= 0:
            return None
        picked.append(best)
        col = rest[:, best] / size[best]
        rest -= np.outer(col, col @ rest)
    sub = g[:, picked]
    if np.linalg.cond(sub) > MAX_COND:
        return None
    return np.array(picked, int)


def _active(layered: Layered, state: State, x: np.ndarray,
            jac: np.ndarray) -> Optional[np.ndarray]:
    """The units of layer ``m`` a kink at ``x`` is read on when layer ``m``'s Jacobian there
    (``jac``) has a lower rank than its width (fewer units of layer ``m - 1`` on than units
    of layer ``m``): those the last analysis finds on at ``x`` (a unit no kink's probes
    moved yet is taken on its rare side, :func:`_rare_side`). A unit off there moves
    nothing, so only these need to be told apart (random 40-20-10-10-1 s1: layer 2's
    Jacobian is too ill-conditioned to invert at 43% of random inputs, the rows of the
    units on there at 3%). None when no analysis oriented any, or these too are dependent
    there."""
    orient = state.orient
    if orient is None or orient[0] is not layered:
        return None
    z = layered.preacts(x[None])[-1][0]
    units = (orient[1] * z) > 0
    if not units.any() or units.all() or units.sum() > jac.shape[1]:
        return None
    return None if _dependent(jac[units]) else units


def _dependent(jac: np.ndarray, zs: Optional[list] = None) -> bool:
    """Whether ``jac``'s rows are too close to dependent to invert (beyond :data:`MAX_COND`).
    ``zs``: the pre-activations of the layers at the point ``jac`` is the last one's Jacobian
    at; where fewer units are on in an earlier layer than ``jac`` has rows and columns, its
    rank is that low and its smallest singular value rounding: dependent, without the SVD
    (most kinks of a layer as wide as the one before it)."""
    if zs is not None and len(zs) > 1 and \
            min(int((z[0] > 0).sum()) for z in zs[:-1]) < min(jac.shape):
        return True
    sv = np.linalg.svd(jac, compute_uv=False)
    return bool(sv[-1] <= sv[0] / MAX_COND)


def _probes(run: Run, k: int, x: np.ndarray, jac: np.ndarray,
            units: Optional[np.ndarray] = None,
            rng: Optional[np.random.Generator] = None) -> _Plan:
    """The plan of kink ``k`` at ``x`` along the pinv directions of ``jac``'s rows (each moves
    one of those units and leaves the others still) and, when ``jac`` has fewer rows than
    inputs, :data:`NULL_PROBES` that move none of them: a unit the model lacks, or one taken
    for off that is on there, shows in those, and the kink is not read. ``units``: the rows
    of ``jac`` taken (all by default)."""
    units = np.arange(jac.shape[0]) if units is None else units
    jac = jac[units]
    h, d = jac.shape
    pinv = np.linalg.pinv(jac)                                   # (d, h)
    norms = np.linalg.norm(pinv, axis=0)
    # (a unit whose gradient is nil there gets no direction: a unit of the layer before
    # that feeds it none of its inputs; its pinv column is nil)
    norms = np.where(norms > 0, norms, 1.0)
    dirs = (pinv / norms).T                                      # (h, d)
    if h < d:
        n = min(NULL_PROBES, d - h)
        z = np.zeros((0, d))
        for _ in range(NULL_DRAWS):
            # a draw (nearly) in the rows' span leaves rounding, not a direction that moves
            # none of them: drawn again (a victim drawn from the run's seed has such rows)
            draw = (run.rng if rng is None else rng).normal(size=(n - z.shape[0], d))
            rest = draw - (pinv @ (jac @ draw.T)).T
            size = np.linalg.norm(rest, axis=1)
            z = np.concatenate([z, (rest / np.maximum(size, 1e-300)[:, None])[
                size > 1e-3 * np.linalg.norm(draw, axis=1)]])
            if z.shape[0] == n:
                break
        dirs = np.concatenate([dirs, z])
    return _Plan(k, x, jac, norms, dirs, units)


def _shared(prev: Optional[_Plan], k: int, x: np.ndarray, jac: np.ndarray,
            units: np.ndarray) -> Optional[_Plan]:
    """``prev``'s plan (the kink before on the line) for kink ``k`` when it takes the same
    units with the same Jacobian: a piece of line between the two is then probed once for
    both (:func:`_probe`), or read from the other (:func:`_carried`)."""
    if prev is None or not np.array_equal(prev.units, units):
        return None
    return prev._replace(k=k, x=x) if np.array_equal(prev.jac, jac[units]) else None


def _probe(run: Run, line: Line, bounds: np.ndarray, plans: list, sides: list,
           steps: dict) -> dict:
    """Directional derivatives at the middle of the regions beside each planned kink:
    ``{(plan, side): ((dirs, k) derivatives, answer scale)}``. A region beside two kinks
    planned alike (:func:`_shared`: the same ``dirs`` object) is asked once."""
    rows, at, total = [], {}, 0
    keys = [(plans[i].k + side, steps[i, side], id(plans[i].dirs)) for i, side in sides]
    for (i, side), key in zip(sides, keys):
        if key in at:
            continue
        at[key] = total
        k, dirs = plans[i].k, plans[i].dirs
        base = line.x0 + 0.5 * (bounds[k + side] + bounds[k + side + 1]) * line.v
        rows += [base[None], base + steps[i, side] * dirs]
        total += 1 + dirs.shape[0]
    if not run.room(total):
        raise run.out_of_budget("while measuring deeper kinks")
    y = run.query("gradients")(np.concatenate(rows))
    out = {}
    for (i, side), key in zip(sides, keys):
        block = y[at[key]:at[key] + 1 + plans[i].dirs.shape[0]]
        out[i, side] = ((block[1:] - block[0]) / steps[i, side], np.abs(block).max())
    return out


def _analyse(run: Run, layered: Layered, state: State) -> _Found:
    """Signs of layer ``m`` and the units of layer ``m + 1`` from the points so far."""
    h = layered.widths[-1]
    betas, zs, seens, used = [], [], [], []
    if state.model is not layered:
        state.model, state.readings = layered, {}
        state.unoriented.clear()
    for p in state.points:
        if id(p) not in state.readings:
            state.readings[id(p)] = _reading(layered, p, state)
        read = state.readings[id(p)]
        if read is None:
            continue
        beta, z, seen, _ = read
        betas.append(beta)
        zs.append(z)
        seens.append(seen)
        used.append(p)
    if not betas:
        return _Found(np.ones(h), tuple(range(h)), np.zeros((0, h)), [])
    beta, z, seen = np.array(betas), np.array(zs), np.array(seens)
    on = np.abs(beta) > ON * np.abs(beta).max(1, keepdims=True)
    signs, weak = _orientations(beta, z, on, seen)
    unseen = ~on.any(0)
    signs = _rare_side(layered, state, signs, unseen & ~seen.any(0))
    dead = tuple(int(i) for i in np.flatnonzero(unseen))
    _oriented(layered, state, signs, unseen)
    beta, z = beta * signs, z * signs
    c = -(beta * np.maximum(z, 0)).sum(1)
    ok = ~(on & (z < 0) & ~weak).any(1)                   # on where the model says off: drop
    # probed along the units that were on only, when an orientation was still the other one:
    # a unit on there was not probed, and the signature would be wrong
    ok &= ~((z > 0) & ~seen).any(1)
    ok &= np.abs(c) > 1e-12 * np.abs(beta).max(1) * np.abs(z).max(1)
    on = z > 0                     # an entry is observed wherever its unit is on (maybe as 0)
    sigma = np.where(on, beta / np.where(ok, c, 1.0)[:, None], 0.0)[ok]
    # cancellation in c = -beta . h: a unit with a small bias has imprecise signatures
    cond = np.minimum((np.abs(beta) * np.maximum(z, 0)).sum(1)[ok] / np.abs(c[ok]), MAX_CANCEL)
    beta, z = beta[ok], z[ok]
    on = on[ok]
    used = [p for p, keep in zip(used, ok) if keep]
    memo = _memo(state, layered, signs)
    ids = [id(p) for p in used]
    old = memo.get("ids", [])
    if ids[:len(old)] == old:          # points only came: the old pairs need no new look
        labels = _cluster(sigma, on, cond, memo.get("parent"))
    else:
        memo = _memo(state, None, signs)
        labels = _cluster(sigma, on, cond)
    memo["ids"], memo["parent"] = ids, labels
    rows_memo = memo.setdefault("rows", {})
    alive = np.ones(h, bool)
    alive[list(dead)] = False
    complete, partial, spots = [], [], []
    order = np.argsort(labels, kind="stable")
    _, starts = np.unique(labels[order], return_index=True)
    for members in (np.split(order, starts[1:]) if order.size else []):
        seen = on[members].sum(0)
        key = tuple(members.tolist())
        if key not in rows_memo:
            rows_memo[key] = _merged_row(beta[members], z[members], on[members],
                                         sigma[members], cond[members])
        row = rows_memo[key]
        gaps = np.flatnonzero((seen == 0) & alive)
        if gaps.size:
            partial.append((row, gaps, [used[i] for i in members]))
        elif members.size > 1:
            complete.append(row)
            spots.append(np.array([used[i].x for i in members]))
    rows = np.array(complete) if complete else np.zeros((0, h))
    signed = layered.signed(signs)
    if rows.shape[0]:
        rows = _kept(run, signed, state, rows, spots, memo)
    if partial:
        keep = _verified(run, signed, state, np.array([r for r, _, _ in partial]),
                         [g for _, g, _ in partial], memo=memo)
        partial = [p for p, k in zip(partial, keep) if k]
    if 1 < len(partial) <= JOIN_GROUPS:
        partial, joined = _joined(run, signed, state, partial, alive, memo)
        for row in joined:
            # several pairs of groups can join into one unit (random 10-2-2-1 s5005: the
            # same row three times, each a unit of its own)
            unit = row / np.linalg.norm(row)
            if not rows.shape[0] or (1 - np.abs(rows @ unit / np.linalg.norm(rows, axis=1))
                                     ).min() > DUPLICATE:
                rows = np.concatenate([rows, row[None]])
    return _Found(signs, dead, rows, partial)


def _kept(run: Run, signed: Layered, state: State, rows: np.ndarray, spots: list,
          memo: dict) -> np.ndarray:
    """The complete candidate ``rows`` that :func:`_verified` keeps, and those whose kinks
    (at ``spots``) lie on both sides of a kept one's boundary while their own boundary
    predicts a found kink at :data:`SPREAD_HITS` crossings or more, missing at most
    :data:`SPREAD_SHARE` as many. A deeper unit's kinks agree like one unit's only within one
    region of this layer; these cross regions, so they are this layer's, and the crossings
    they miss are where nothing after them passes its change on: every unit of the next
    layer that it feeds is off there (random 41-32-17-6-5-1 s2094: 7 of 17 layer-2 units,
    read exactly from 10-58 kinks each, missed 11-38% of their crossings and were dropped;
    layer 3 was refused)."""
    strict = _verified(run, signed, state, rows, memo=memo)
    if strict.all() or not strict.any():
        return rows[strict]
    kept = with_rows(signed, rows[strict])
    spread = np.zeros(rows.shape[0], bool)
    for j in np.flatnonzero(~strict):
        z = kept.preacts(spots[j])[-1]
        spread[j] = bool(((z > 0).any(0) & (z < 0).any(0)).any())
    if spread.any():
        loose = _verified(run, signed, state, rows[spread], memo=memo, share=SPREAD_SHARE,
                          least=SPREAD_HITS)
        strict[np.flatnonzero(spread)[loose]] = True
    return rows[strict]


def _orientations(beta: np.ndarray, z: np.ndarray, on: np.ndarray,
                  seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sign (+-1) of each unit of layer m: the side of its boundary where the deeper kinks
    see it, each kink voting with the share of its signature ``beta`` the unit carries. A
    count of the kinks would weigh alike the entries of a unit on (1e-2-1 of the largest) and
    the reading's noise where it is off (1e-7-2e-6): hundreds of the latter outvoted 8 of the
    former (random 40-20-10-10-1 s17 with layer 2 closed early, a layer-2 unit oriented the
    wrong way and every layer-3 kink where it was on dropped). A unit that carries no kink's
    jump above noise (``weak``, below :data:`ORIENT_SHARE`) is off at every kink its probes
    moved (``seen``): it is oriented so (its noise alone oriented 5 of 24 layer-2 units of
    random 49-24-24-11-1 s3604 the wrong way from 13 kinks read in full). Returns
    ``(signs, weak)``."""
    share = np.where(on, np.abs(beta) / np.abs(beta).max(1, keepdims=True), 0.0)
    signs = np.where((share * np.sign(z)).sum(0) < 0, -1.0, 1.0)
    weak = share.max(0) < ORIENT_SHARE
    vote = (np.sign(z) * seen).sum(0)
    return np.where(weak & (vote != 0), -np.sign(vote), signs), weak


def _rare_side(layered: Layered, state: State, signs: np.ndarray,
               unprobed: np.ndarray) -> np.ndarray:
    """``signs`` with each unit that no kink's probes moved (``unprobed``) turned to the side
    where it is on at fewer of the deeper kinks measured. Such a unit was taken for on at
    every kink, where the units on then outnumbered the rank of layer ``m``'s Jacobian, so no
    kink was read on it, and it stayed unoriented (random 10-8-8-6-3 s1543: layer-2 units on
    for 16% and 5% of inputs, never probed; 40-60% of layer 3's kinks were left unread for
    them). Taken off where it is rarely on, the kinks there are read on the others, and one
    where it is on orients it, or reads it as nil (then :func:`_orientations` turns it off
    at those)."""
    if not unprobed.any():
        return signs
    z = layered.preacts(np.array([p.x for p in state.points]))[-1][:, unprobed]
    out = signs.copy()
    out[unprobed] = np.where((z > 0).sum(0) > (z < 0).sum(0), -1.0, 1.0)
    return out


def _oriented(layered: Layered, state: State, signs: np.ndarray, unknown: np.ndarray) -> None:
    """Keeps the orientations an analysis found for the kinks read on active units only
    (:func:`_active`); when they change, such readings are made again, and so are those
    that could not be made for want of orientations (``state.unoriented``: kept as unread
    before, a kink measured under other orientations stayed unread for the model's life;
    random 10-8-8-6-3 s1543 analysed 12 of 135 layer-3 kinks that its orientations read),
    and the kinks skipped for a Jacobian of too low a rank are measured again where they can
    be now."""
    old = state.orient
    if old is not None and old[0] is layered and np.array_equal(old[1], signs) \
            and np.array_equal(old[2], unknown):
        return
    state.orient = (layered, signs, unknown)
    for key in [key for key, read in state.readings.items() if read is not None
                and read[3] is not None]:
        del state.readings[key]
    for key in state.unoriented:
        state.readings.pop(key, None)
    state.unoriented.clear()
    for li, k in state.deficient:
        state.lines[li].measured.discard(k)
        state.lines[li].done_for = None
    state.deficient.clear()


def _joined(run: Run, signed: Layered, state: State, partial: list, alive: np.ndarray,
            memo: dict) -> tuple[list, list]:
    """Groups of kinks that share no observed entry are never clustered: in a narrow layer
    one unit's kinks may each see one earlier unit on (random 6-3-2-1 s9221: a layer-2 unit
    whose kinks each saw one of the three layer-1 units, as three groups of one entry). Two
    such groups are joined while the row of both, with the gaps both left, is verified on the
    lines (it predicts kinks where either alone predicted none); complete ones become units,
    the others stay groups (the output fit may complete them). Returns ``(partial groups
    left, rows completed)``."""
    def observed(gaps):
        seen = alive.copy()
        seen[gaps] = False
        return seen

    groups = [(r, g, pts, observed(g)) for r, g, pts in partial]
    done = []
    for _ in range(len(groups)):
        pair = _first_join(run, signed, state, groups, memo)
        if pair is None:
            break
        i, j, row, gaps = pair
        pts, seen = groups[i][2] + groups[j][2], groups[i][3] | groups[j][3]
        groups = [g for n, g in enumerate(groups) if n not in (i, j)]
        if gaps.size:
            groups.append((row, gaps, pts, seen))
        else:
            done.append(row)
    return [g[:3] for g in groups], done


def _first_join(run: Run, signed: Layered, state: State, groups: list, memo: dict):
    """The first pair of ``groups`` ``(row, gaps, points, observed)`` sharing no observed
    entry whose joined row is verified on the lines: ``(i, j, row, gaps)``, or None."""
    for i, (ri, gi, _, oi) in enumerate(groups):
        for j in range(i + 1, len(groups)):
            rj, gj, _, oj = groups[j]
            if (oi & oj).any():
                continue                # they share an entry: clustered apart for a reason
            row = np.where(oi, ri, rj)
            gaps = np.intersect1d(gi, gj)
            if _verified(run, signed, state, row[None], [gaps], memo=memo)[0]:
                return i, j, row, gaps
    return None


def _memo(state: State, layered: Optional[Layered], signs: np.ndarray) -> dict:
    """The analysis' memory (clusters, merged rows, verified lines) for this model and these
    signs; emptied when either changes (each point's reading changes with them), or when
    ``layered`` is None (the points changed otherwise)."""
    if layered is None:
        layered = state.memo.get("model")
        state.memo.clear()
    key = (id(layered), signs.tobytes())
    if state.memo.get("key") != key or state.memo.get("model") is not layered:
        state.memo.clear()
        state.memo.update(key=key, model=layered)
    return state.memo


def _merged_row(beta: np.ndarray, z: np.ndarray, on: np.ndarray, sigma: np.ndarray,
                cond: np.ndarray, agree: float = 1e-8) -> np.ndarray:
    """One unit's row ``a / c`` from its kinks' jumps: each kink's ``beta`` is scaled onto a
    reference kink's on their common entries and the scaled ``beta`` are averaged entrywise,
    then ``c = -a . h`` is averaged over the kinks. (Averaging each kink's ``beta / c`` instead
    loses the digits that cancel in ``c`` when the unit's bias is small.) Kinks whose
    signature strays from the entrywise median by more than ``agree`` times their
    cancellation (a probe that crossed a boundary) are left out."""
    masked = np.where(on & np.isfinite(sigma), sigma, np.nan)
    seen = (~np.isnan(masked)).any(0)
    median = np.zeros(sigma.shape[1])
    median[seen] = np.nanmedian(masked[:, seen], 0)
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


def _reading(layered: Layered, p: Point, state: State):
    """``(beta, z, seen, units)`` of a kink in the coordinates of the model's last layer
    (``seen``: the units its probes moved; ``units``: those it was read on, None for all,
    see :func:`_active`); None where the model cannot read it (a Jacobian too
    ill-conditioned, a jump it cannot explain: not a deeper unit's kink, or an earlier unit
    the model lacks is on there), or where a unit it moves is at its boundary: a kink of
    layer m itself, measured before that unit was known (its side is rounding: random
    11-10-9-2 s1287 oriented a layer-2 unit from two such, one each way), or a kink of any
    earlier layer (see :data:`EARLIER_BOUNDARY`)."""
    solved = state.solved.get(id(p))
    if solved is not None and solved[0] is layered and state.orient is not None \
            and state.orient[0] is layered and np.array_equal(state.orient[1], solved[1]):
        z = layered.preacts(p.x[None])[-1][0]        # read against a row (_against_row)
        return solved[2] * solved[1], z, np.ones(z.size, bool), None
    if id(p) in state.row_only:
        return None                  # probed to be read against a row only
    jac = layered.jacobian(p.x, layered.depth)
    zs = layered.preacts(p.x[None])
    units = None
    if _dependent(jac, zs):
        units = _active(layered, state, p.x, jac) if layered.depth > 1 else None
        if units is None or p.dirs is not None and _dependent(p.dirs @ jac[units].T):
            # too many units on there for the rank, or probed for other units (they do not
            # tell these apart): read again when the orientations change (_oriented)
            if layered.depth > 1:
                state.unoriented.add(id(p))
            return None
    beta, resid, seen = read_jump(p, jac, units)
    if resid > STRAY:
        return None
    probed = (jac.T if p.dirs is None else p.dirs @ jac.T)[:, seen]
    if seen.any() and (probed.shape[0] < probed.shape[1] or _dependent(probed)):
        # the probes do not tell apart the units they moved (a kink probed for a deeper
        # layer, read again when an earlier one is searched anew): any answer fits, and one
        # such reading turned a unit the wrong way (random 29-27-17-6-5-1 s5338: a layer-2
        # unit on for 7% of inputs, oriented by one kink probed for layer 3)
        return None
    z = zs[-1][0]
    if np.abs(z).min() == 0:
        return None
    inputs = _layer_inputs(p.x, zs)
    if any(_at_boundary(layered, l, inputs[l], zl[0], EARLIER_BOUNDARY).any()
           for l, zl in enumerate(zs[:-1])):
        return None      # a kink of an earlier layer, measured before its unit was known
    on = np.abs(beta) > ON * np.abs(beta).max()
    # |z| against the sizes of the terms that make it: a layer-m row 1e-10 off put z at such a
    # kink at 1e-9-4e-8 of the layer's largest, above the old bound of 1e-9 of it (random
    # 40-20-10-10-1 s17 with layer 2 closed early: 17 such kinks read as layer 3's); the
    # deeper kinks' units on were at 9e-4 of their terms and more
    if _at_boundary(layered, -1, inputs[-1], z)[on].any():
        return None      # a kink of layer m itself, measured before its unit was known
    return beta, z, seen, units


def _layer_inputs(x: np.ndarray, zs: list) -> list:
    """The inputs of each layer at ``x``: ``x``, then the outputs of the layers before
    (``zs`` their pre-activations there, each ``(1, h)``)."""
    return [x] + [np.maximum(z[0], 0.0) for z in zs[:-1]]


def _at_boundary(layered: Layered, l: int, below: np.ndarray, z: np.ndarray,
                 share: float = AT_BOUNDARY) -> np.ndarray:
    """Which units of layer ``l`` (an index into ``layered``'s layers) have ``|z|`` within
    ``share`` of the sizes of the terms that make it from ``below``, its inputs."""
    terms = np.abs(layered.weights[l] * below).sum(1) + np.abs(layered.biases[l])
    return np.abs(z) <= share * terms


def _cluster(sigma: np.ndarray, on: np.ndarray, cond: np.ndarray,
             known: Optional[np.ndarray] = None) -> np.ndarray:
    """Union-find over pairs of signatures that agree on at least two common entries.
    ``known``: the labels of the first points from an earlier call (their pairs are not
    compared again). Only the pairs :func:`_close_pairs` proposes are compared (a block of
    :data:`CLUSTER_BLOCK` entries at a time), and they are joined in the order of a loop
    over ``p < q``: the labels are those of comparing every pair."""
    n = sigma.shape[0]
    n_old = 0 if known is None else known.size
    parent = np.concatenate([np.asarray(known, int), np.arange(n_old, n)]) if n_old \
        else np.arange(n)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    ps, qs = _close_pairs(sigma, on, cond, max(n_old, 1))
    mag = np.abs(sigma)
    step = max(1, CLUSTER_BLOCK // max(sigma.shape[1], 1))
    same = np.zeros(ps.size, bool)
    for s in range(0, ps.size, step):
        p, q = ps[s:s + step], qs[s:s + step]
        common = on[p] & on[q]
        diff = np.where(common, np.abs(sigma[p] - sigma[q]), 0).max(1)
        size = np.maximum(np.where(common, mag[p], 0).max(1),
                          np.where(common, mag[q], 0).max(1))
        tol = SAME_UNIT * np.maximum(cond[p], cond[q])
        same[s:s + step] = (common.sum(1) >= 2) & (diff <= tol * size)
    for a, b in zip(ps[same].tolist(), qs[same].tolist()):
        parent[root(b)] = root(a)
    return np.array([root(i) for i in range(n)])


def _close_pairs(sigma: np.ndarray, on: np.ndarray, cond: np.ndarray,
                 lo: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``p < q`` with ``q >= lo`` that :func:`_cluster` could join, and few more,
    in lexicographic order. Two signatures that agree are close on the common entry where
    the larger of them is largest: there both are at least ``(1 - t)`` of it, ``t`` the
    tolerance, so their difference is within ``t / (1 - t)`` of either. So each entry's
    values are sorted, and a point ``q >= lo`` is paired with those within that reach of
    its own value (a pair of zeros on two common entries is paired too)."""
    n, h = sigma.shape
    tmax = SAME_UNIT * float(cond.max()) if n else 0.0
    if not tmax < 0.5:                 # no useful reach: every pair
        p, q = np.triu_indices(n, 1)
        return p[q >= lo], q[q >= lo]
    reach = tmax / (1.0 - tmax) * (1.0 + 1e-6)
    found = []
    for e in range(h):
        idx = np.flatnonzero(on[:, e] & (sigma[:, e] != 0))
        if idx.size < 2:
            continue
        order = np.argsort(sigma[idx, e], kind="stable")
        idx = idx[order]
        v = sigma[idx, e]
        left = np.searchsorted(v, v - reach * np.abs(v), "left")
        right = np.searchsorted(v, v + reach * np.abs(v), "right")
        me = np.flatnonzero(idx >= lo)
        count = np.maximum(right[me] - left[me], 0)
        start = np.repeat(left[me] - np.cumsum(count) + count, count)
        p, q = idx[np.repeat(me, count)], idx[np.arange(count.sum()) + start]
        found.append(np.minimum(p, q)[p != q] * n + np.maximum(p, q)[p != q])
    zero = np.flatnonzero(((sigma == 0) & on).sum(1) >= 2)
    p, q = np.triu_indices(zero.size, 1)
    found.append(zero[p] * n + zero[q])
    key = np.unique(np.concatenate(found))
    p, q = key // n, key % n
    return p[q >= lo], q[q >= lo]


CLUSTER_BLOCK = 1 << 14   # pairs times entries compared at once by _cluster


def _verified(run: Run, signed: Layered, state: State, rows: np.ndarray,
              gaps: Optional[list] = None, memo: Optional[dict] = None,
              share: float = MISS_SHARE, least: int = 0) -> np.ndarray:
    """Which candidate units' boundaries predict a found kink wherever they cross a line (a
    unit with unknown entries ``gaps[j]`` only where those earlier units are off), but for at
    most :data:`MISS_SHARE` of the kinks they predict and find. A row over that share is still
    counted on later lines while it has missed at most :data:`FEW_MISSES`. ``memo``
    remembers, per row, the lines it passed and its kinks found and missed (only later lines
    are looked at again). ``share``, ``least``: at most this share missed (the same for
    later lines), at least this many found. A predicted kink where the line's answers were
    constant between two found kinks (:func:`~fidelity.deepstate.flat_at`) tells nothing."""
    cache = {} if memo is None else memo.setdefault(("verified", share), {})
    grids = {} if memo is None else memo.setdefault("grids", {})
    keys = [(r.tobytes(), None if gaps is None else tuple(np.asarray(gaps[j]).tolist()))
            for j, r in enumerate(rows)]
    # per row: lines passed, predicted kinks found, predicted kinks missed
    start, hits, misses = np.array([cache.get(k, (0, 0, 0)) for k in keys],
                                   int).reshape(-1, 3).T
    live = (misses <= share * hits) | (misses <= FEW_MISSES)
    for li in range(int(start[live].min()) if live.any() else len(state.lines),
                    len(state.lines)):
        todo = np.flatnonzero(live & (start <= li))
        if not todo.size:
            continue
        line = state.lines[li]
        if (li, id(line)) not in grids:      # (the line kept: its id stays its own)
            grids[li, id(line)] = (line, pieces(signed, line, IN_RANGE * line.half))
        pts, h_end, known = grids[li, id(line)][1]
        t, unit, _ = crossings(pts, h_end @ rows[todo].T + 1.0)
        unit = todo[unit]
        if line.half < state.lines[0].half and known.size and t.size:
            # on a short window (a fill's crosses where the entry's unit switches), a known
            # unit's kink closer than the search tells two kinks apart: the one found may be
            # either (random 10-10-10-1 s140: a layer-1 unit switches about 1e-4 of the half
            # length from a layer-2 unit's predicted kink, exact to 2e-11 there; the nearest
            # kink found was 1.2e-4 away, and that one miss of 12 dropped the unit: the layer
            # was refused). Not tested there
            apart = np.abs(t[:, None] - known[None, :]).min(1) > CROWDED * VERIFY * line.half
            t, unit = t[apart], unit[apart]
        if gaps is not None and t.size:
            z = signed.preacts(line.x0 + t[:, None] * line.v)[-1]
            exact = np.array([(z[n, gaps[u]] <= 0).all() for n, u in enumerate(unit)], bool)
            t, unit = t[exact], unit[exact]
        # where the answers are constant between two found kinks, a bump of several kinks that
        # ends where it began may hide between the search's points (random 13-7-5-4-4 s3939:
        # a layer-2 unit, exact, missed 6-12 of about 100 crossings so, each in a pair at
        # either end of such a bump; it was dropped and the run refused at layer 3)
        keep = ~flat_at(line, t)
        t, unit = t[keep], unit[keep]
        if not t.size:
            continue
        if line.t.size:
            near = np.abs(t[:, None] - line.t[None, :]).min(1) <= VERIFY * line.half
        else:
            near = np.zeros(t.size, bool)
        np.add.at(hits, unit[near], 1)
        np.add.at(misses, unit[~near], 1)
        live = (misses <= share * hits) | (misses <= FEW_MISSES)
    for k, h, m in zip(keys, hits, misses):
        cache[k] = (len(state.lines), int(h), int(m))
    return (misses <= share * hits) & (hits >= least)
