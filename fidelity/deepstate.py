"""What the layer-by-layer recovery (:mod:`fidelity.deep`) keeps: searched lines, the kinks no
known unit explains with their measured jumps, per-layer reports, and its tuning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import recover, search
from .checks import fresh_points
from .context import Run
from .layered import Layered, crossings
from .measure import MeasureConfig, search_line
from .validation import at_least, positive, share

LAST_LAYER = 1e-4     # output fit residual (relative) below which layer m is the last
MATCH = 1e-6          # a found kink within MATCH times the line's half length of a
                      # predicted one is that unit's
PAIR = 1e-3           # two predicted kinks closer than PAIR times the half length are a
                      # pair the search may locate as one kink anywhere near them
IN_RANGE = 0.999      # predictions beyond this fraction of t_max are not tested
STRAY = 1e-6          # a jump along what layer m cannot see, relative: an earlier unit's kink


@dataclass(frozen=True)
class DeepConfig:
    """Tuning of the layer-by-layer recovery.

    Attributes:
        max_depth: bound on hidden layers.
        lines_per_layer: bound on lines searched for the kinks of one layer.
        layer_patience: lines that bring no new unit before a layer is closed.
        output_points: answers of the output fit beyond ``2 (2 h + 1)``.
        check_points: fresh answers the finished network is checked on, at least.
        check_share: ... or this share of the queries spent, when more (within the budget).
        check_tol: relative tolerance of that check.
        max_kinks: bound on the deeper kinks the searches for one layer measure, all its
            searches together but for its retries (after nothing fit the layer after it),
            which get it again (each kink costs ``2 (h + 3)`` queries and enters every
            analysis): past it the layer being searched is closed with what it has, as it
            is past four times as many kinks measured by the run in all
            (``peel.RUN_KINKS``).
    """

    max_depth: int = 8
    lines_per_layer: int = 24
    layer_patience: int = 2
    output_points: int = 32
    check_points: int = 320
    check_share: float = 0.05
    check_tol: float = 1e-8
    max_kinks: int = 3000

    def __post_init__(self):
        for name, low in (("max_depth", 1), ("lines_per_layer", 1), ("layer_patience", 1),
                          ("output_points", 0), ("check_points", 1), ("max_kinks", 1)):
            at_least(self, low, name)
        positive(self, "check_tol")
        share(self, "check_share")


@dataclass
class Line:
    """A searched line: origin, direction, kinks and the slopes between them."""

    x0: np.ndarray
    v: np.ndarray
    t: np.ndarray
    slopes: Optional[np.ndarray]
    half: float                                  # the line is |t| <= half
    verified: Optional[np.ndarray] = None        # kinks located to the search's precision
    measured: set = field(default_factory=set)   # kink indices measured already
    done_for: Optional[object] = None            # the model its kinks were last read with
    pieces: Optional[np.ndarray] = None   # line 0's slopes, from its pieces' gradients (its
                                          # kinks are read in full: only flat_at uses them)


@dataclass(frozen=True)
class Point:
    """A kink not explained by the known layers, with the jump of the victim's directional
    derivatives across it along ``dirs`` (``None``: all ``d`` coordinates), ``dirs r u^T``:
    ``r`` is the input gradient of the switching unit's pre-activation. It is read in the
    coordinates of the current model only when needed (:func:`_beta`), so that a unit added to
    an earlier layer needs no new queries as long as the probes span it."""

    line: int
    t: float
    x: np.ndarray
    dirs: Optional[np.ndarray]    # (n, d) unit directions, or None for the coordinates
    jump: np.ndarray              # (n, k) derivative jumps along them
    level: int                    # 0: measured in full; m: for the coordinates of layer m


def read_jump(p: Point, jac: np.ndarray, units: Optional[np.ndarray] = None):
    """``(beta, residual, seen)``: the kink's jump read as ``beta^T jac`` (up to scale), the
    relative part of the jump that ``jac``'s rows cannot explain, and which units the probes
    moved (the others are read as nil: a kink probed along the units that were on there only
    says nothing about the rest). ``units`` (a mask): read on those units alone, the others
    taken for off there (a layer whose Jacobian has a lower rank than its width)."""
    a = jac.T if p.dirs is None else p.dirs @ jac.T
    reach = np.linalg.norm(a, axis=0)
    seen = reach > UNPROBED * reach.max()
    if units is not None:
        seen &= units
    coef = np.zeros((a.shape[1], p.jump.shape[1]))
    coef[seen] = np.linalg.lstsq(a[:, seen], p.jump, rcond=None)[0]
    size = np.linalg.norm(p.jump)
    resid = float(np.linalg.norm(a @ coef - p.jump) / size) if size > 0 else np.inf
    uu, sv, _ = np.linalg.svd(coef, full_matrices=False)
    return uu[:, 0] * sv[0], resid, seen


@dataclass(frozen=True)
class LayerInfo:
    """What the recovery of one hidden layer found (``index`` 1-based)."""

    index: int
    width: int
    lines: int           # lines searched while this layer was being recovered
    kinks: int           # kinks measured for it
    queries: int
    unidentified: tuple  # units of this layer never seen on at a deeper kink


def set_aside(state: "State", count: int = 1) -> None:
    """Removes the infos of the last ``count`` layers (searched again), keeping what their
    searches spent for the infos of the searches that replace them (:func:`layer_info`)."""
    for info in state.infos[len(state.infos) - count:]:
        spend(state, info.index, info.lines, info.kinks, info.queries)
    del state.infos[len(state.infos) - count:]


def spend(state: "State", index: int, lines: int, kinks: int, queries: int) -> None:
    """Keeps what a search for layer ``index`` spent for that layer's info (a search that
    found no unit, or one set aside)."""
    l0, k0, q0 = state.spent.get(index, (0, 0, 0))
    state.spent[index] = (l0 + lines, k0 + kinks, q0 + queries)


def layer_info(state: "State", index: int, width: int, lines: int, kinks: int,
               queries: int) -> LayerInfo:
    """A layer's info, with what its earlier searches spent added (a layer searched again
    reports every line, kink and query spent on it, not those of the last search alone)."""
    l0, k0, q0 = state.spent.pop(index, (0, 0, 0))
    return LayerInfo(index, width, lines + l0, kinks + k0, queries + q0, ())


WINDOW_FLOOR = 0.1  # see window
HINT_SPARED = 4    # queries a kink found at a hint saves the search, counted as spent for
                   # the check's size (random 80-40-20-1 s0: 17,332 -> 9,529 searching, with
                   # 1,851 such kinks); a cheaper search must not make the check weaker
SIDE_CLEAR = 1e-3  # a unit's orientation read from a fit: the part linear in z this close to
                  # 0 or to minus the relu part (relative to the smallest relu part)
GAP_COND = 1e-8   # an output fit completes entries with features whose singular values are
                  # no smaller than this (relative; see completed)
UNPROBED = 1e-9   # a unit whose gradient the probes of a kink see below this share of the
                  # most seen one is read as nil there (see read_jump)
FLAT = 1e-9       # a linear piece whose slope is below this share of its line's steepest is
                  # flat: the answers are constant there (see flat_at)


@dataclass
class State:
    lines: list
    points: list
    infos: list
    model: Optional[Layered] = None      # the model the cached readings are for
    readings: dict = field(default_factory=dict)   # id(point) -> (beta, z, seen) or None
    stray_for: Optional[np.ndarray] = None           # layer-1 rows the strays are for
    stray: dict = field(default_factory=dict)      # id(point) -> unexplained part of its jump
    pins: list = field(default_factory=list)       # exact kinks placed by fidelity.pin
    sharpened: dict = field(default_factory=dict)  # layer-1 rows measured again (deep._sharpened)
    columns: Optional[np.ndarray] = None   # output weights read from pins (deep._pinned_columns)
    checked: Optional[tuple] = None   # (x, y) the last check's answers (deep._check)
    check_count: int = 0              # ... of which fresh Gaussian ones at POINT_RADII
    memo: dict = field(default_factory=dict)       # fidelity.peel's analysis, per model
    windows: set = field(default_factory=set)      # (unit, point) of fidelity.peel's windows
    beyond: set = field(default_factory=set)       # (depth, entry, row) whose unseen entry
                                                   # was looked for (from_kinks)
    unfitted: Optional[tuple] = None   # (x, y) answers the last output fit could not fit
    left_out: dict = field(default_factory=dict)   # layer -> what every search of it left
                                                   # out (see deep.still_left_out)
    linear: Optional[np.ndarray] = None   # directions carried by pairs (deep._output_with_pairs)
    missed: Optional[np.ndarray] = None   # inputs the last check found the network far off at
    aims: list = field(default_factory=list)   # origins of the next lines searched
    known: Optional[tuple] = None   # (x, y) answers every output fit must fit too
    best: Optional[tuple] = None   # (network, check error, infos): the best checked so far
    filled: tuple = ()   # (layer, unit, entries) read from an output fit (peel._completed)
    unread: set = field(default_factory=set)   # (line, t) of kinks whose probes in layer 1's
                                               # coordinates never gave the line's slope
    spent: dict = field(default_factory=dict)   # layer -> (lines, kinks, queries) of its
                                                # searches set aside for a retry (set_aside)
    orient: Optional[tuple] = None   # (model, signs, unknown) the last analysis found for the
                                     # model's last layer (peel._active)
    unoriented: set = field(default_factory=set)   # id(point) of kinks the orientations
                                                   # known could not read (fidelity.peel)
    deficient: set = field(default_factory=set)   # (line, kink) skipped for a Jacobian of
                                                  # too low a rank: read again when more
                                                  # orientations are known
    layer_kinks: dict = field(default_factory=dict)   # layer -> kinks its searches measured
                                                      # (bounded by max_kinks)
    kinks_floor: int = 0     # kinks of the run before its last search one layer further back
    unreadable: set = field(default_factory=set)   # layers whose search read no deeper kink
                                                   # where its lines went (peel.next_layer)
    grown: Optional[Layered] = None   # layer 1 with the units a search of layer 2 that found
                                      # no unit of its own added (peel.next_layer)
    lacking: set = field(default_factory=set)   # (line, t, m) kinks whose probes in layer m's
                                                # coordinates (m > 1) never gave the line's
                                                # slope: read again when an earlier layer is
                                                # searched again (fidelity.peel.next_layer)
    solved: dict = field(default_factory=dict)   # id(point) -> (model, signs, row): kinks
                                                 # read against a known row (fidelity.peel)
    row_only: set = field(default_factory=set)   # id(point) of kinks probed for that alone
    deeper: tuple = (None, {})   # (model, {id(point): 1, 0 or -1}) the verdicts of the
                                 # last peel._deeper_kinks, for that model
    spared: int = 0   # queries fidelity.expansive's readings along few directions saved, and
                      # the searches' hints (HINT_SPARED per kink found at one)
                      # (counted as spent for the size of the check, deep._check_count)
    followed: Optional[tuple] = None   # (w, b, units, gapped, looked, walks): layer 1 as
                                       # measured and what fidelity.expansive followed over it


def plane_kinks(run: Run, rows: np.ndarray, line: Line):
    """Where each plane ``[w, b]`` crosses ``line``, the found kink nearest to it, and whether
    that kink is the plane's (within ``MATCH * t_max``): ``(t, nearest index, matched)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -(rows[:, :-1] @ line.x0 + rows[:, -1]) / (rows[:, :-1] @ line.v)
    if not line.t.size:
        return t, np.zeros(t.size, int), np.zeros(t.size, bool)
    near = np.abs(line.t[None, :] - t[:, None]).argmin(1)
    return t, near, np.abs(line.t[near] - t) <= MATCH * run.t_max


def plane_hits(run: Run, rows: np.ndarray, lines: list, skip: np.ndarray):
    """Per row ``[w, b]``: lines where its plane's crossing is a found kink, and where not."""
    hits = np.zeros(rows.shape[0], int)
    misses = np.zeros(rows.shape[0], int)
    for li, line in enumerate(lines):
        t, _, near = plane_kinks(run, rows, line)
        test = (np.abs(t) < IN_RANGE * line.half) & (skip != li) & ~flat_at(line, t)
        hits += test & near
        misses += test & ~near
    return hits, misses


def flat_at(line: Line, t: np.ndarray) -> np.ndarray:
    """Whether the answers are constant on ``line`` around each ``t`` (between the found kinks
    on either side): no unit's kink can show there (random 6-3-2-1 s3014: where its only
    layer-2 unit is off, the layer-1 boundaries leave no kink on a line)."""
    slopes = line.slopes if line.slopes is not None else line.pieces
    if slopes is None or not slopes.size:
        return np.zeros(t.shape, bool)
    slope = np.abs(slopes).max(1)                         # per linear piece, NaN unknown
    top = np.nanmax(slope) if np.isfinite(slope).any() else 0.0
    flat = slope <= FLAT * top
    with np.errstate(invalid="ignore"):
        seg = np.searchsorted(line.t, np.where(np.isfinite(t), t, 0.0))
    return flat[seg] & np.isfinite(t)


def new_line(run: Run, mcfg: MeasureConfig, use_jit, state: State,
             model: Optional[Layered] = None) -> Line:
    """A line searched in full: random, or through the next of ``state.aims``; the kinks
    that ``model`` predicts on it are the search's hints."""
    x0, v = run.new_line(origin=state.aims.pop(0) if state.aims else None)
    res = search_line(run, x0, v, max_rounds=mcfg.max_rounds, use_jit=use_jit,
                      hints=None if model is None else model.kinks(x0, v, run.t_max)[0])
    state.spared += HINT_SPARED * res.at_hints
    line = Line(x0, v, res.t, res.slopes, run.t_max, res.verified)
    state.lines.append(line)
    return line


def kink_sides(run: Run, mcfg: MeasureConfig, line: Line, k: int) -> tuple:
    """The pieces of ``line`` before and after kink ``k``: their ends ``(lo, hi)`` (two each)
    and the step a derivative is measured with on each."""
    bounds = np.concatenate([[-line.half], line.t, [line.half]])
    lo, hi = bounds[k:k + 2], bounds[k + 1:k + 3]
    return lo, hi, np.minimum(mcfg.step_frac * 0.5 * (hi - lo), run.step_cap)


def kink_jump(run: Run, mcfg: MeasureConfig, state: State, li: int, k: int, doing: str):
    """The jump across kink ``k`` of searched line ``li``, the regions on both sides measured in
    full (``2 (d + 1)`` queries): a :class:`fidelity.recover.Jump` (its row is the kink's local
    plane), or None when nothing jumps there.

    Raises:
        QueryBudgetExceeded: the budget does not cover it (``doing`` says what was under way).
    """
    line = state.lines[li]
    lo, hi, step = kink_sides(run, mcfg, line, k)
    if not run.room(2 * recover.region_queries(run.d, diagonal=False)):
        raise run.out_of_budget(doing)
    regions, _ = recover.measure_regions(run.query("gradients"), line.x0, line.v, li,
                                         lo, hi, 0.5 * (lo + hi), step, remaining=None,
                                         diagonal=False)
    aff = regions.affine()
    jumps = recover.jumps_to_rows(aff[:1], aff[1:], line.v, li, line.t[k:k + 1], np.zeros(1))
    return jumps[0] if jumps else None


# ---------------------------------------------------------------------------- polish


def window(run: Run, mcfg: MeasureConfig, state: State, x0: np.ndarray, v: np.ndarray,
           half: float, model: Optional[Layered] = None) -> Line:
    """A short line ``x0 + t v``, ``|t| <= half``, searched for kinks. The answers' rounding
    follows the size of the terms the victim adds up, which the answers at a short line's
    ends can understate by far (they may cancel to little): the search trusts them to no
    better than :data:`WINDOW_FLOOR` times the relative tolerance of ``|x0|`` times the
    steepest slope on the first full line with slopes (random 40-20-10-10-1 s4: a window of
    half length 0.18 at ``|x0|`` 7.8, whose answers were 0.2, found 210 kinks where the victim
    has 5, in 1,690 queries, taking the rounding of slopes measured over steps of 1e-9 for
    changes; with that floor, 5 in 46). The kinks that ``model`` predicts on it are the
    search's hints."""
    tol = run.tol
    steep = 0.0
    for line in state.lines:                 # the first full line searched with its slopes
        if line.slopes is not None and line.half >= run.t_max:
            slopes = np.abs(line.slopes)
            steep = float(np.nanmax(slopes)) if np.isfinite(slopes).any() else 0.0
            break
    floor = WINDOW_FLOOR * tol.rel * float(np.linalg.norm(x0)) * steep
    res = search.search_lines(run.query("search"), x0[None], v[None], half,
                              delta=min(tol.delta, half * 1e-3), min_delta=tol.min_delta,
                              noise_factor=tol.rel / search.EPS, noise_abs=tol.abs + floor,
                              max_rounds=mcfg.max_rounds,
                              hints=None if model is None else [model.kinks(x0, v, half)[0]])[0]
    state.spared += HINT_SPARED * res.at_hints
    line = Line(x0, v, res.t, res.slopes, half, res.verified)
    state.lines.append(line)
    return line


def predicted(run: Run, layered: Layered, line: Line, extra: Optional[np.ndarray]):
    """Which of the line's kinks the known layers (and candidate units ``extra``) explain."""
    model = layered
    if extra is not None and extra.shape[0]:
        model = layered.appended(extra, np.ones(extra.shape[0]))
    return _matched(line, model.kinks(line.x0, line.v, line.half)[0])


def _matched(line: Line, t: np.ndarray) -> np.ndarray:
    """Which of the line's kinks lie within :data:`MATCH` of its half length of one of ``t``."""
    if not line.t.size or not t.size:
        return np.zeros(line.t.size, bool)
    return np.abs(line.t[:, None] - t[None, :]).min(1) <= MATCH * line.half


def affine_fit(feats: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, bool]:
    """``y`` as an affine map of ``feats`` (whose last column is ones), by least squares: the
    coefficients, and whether they fit to :data:`LAST_LAYER` of the answers' size."""
    coef = np.linalg.lstsq(feats, y, rcond=None)[0]
    return coef, bool(np.abs(feats @ coef - y).max() <= fit_tolerance(y))


def fit_tolerance(y: np.ndarray) -> float:
    """The largest residual an output fit of the answers ``y`` may leave:
    :data:`LAST_LAYER` of their size."""
    return LAST_LAYER * max(float(np.abs(y).max()), 1e-300)


def either_side(z: np.ndarray) -> np.ndarray:
    """The features ``[relu(z), z, 1]`` of pre-activations ``z``: an affine map of them is one
    of ``relu(z)`` with either orientation per unit."""
    return np.concatenate([np.maximum(z, 0), z, np.ones((z.shape[0], 1))], 1)


def fits_outputs(layered: Layered, x: np.ndarray, y: np.ndarray) -> bool:
    """Whether ``y`` is an affine map of the last layer's outputs at ``x`` (either
    orientation per unit), to :data:`LAST_LAYER` of the answers' size."""
    return affine_fit(either_side(layered.preacts(x)[-1]), y)[1]


def with_rows(signed: Layered, rows: np.ndarray) -> Layered:
    """``signed`` with a new layer of units whose rows are ``a / c`` (each scaled to unit norm
    with its bias)."""
    norm = np.sqrt((rows ** 2).sum(1) + 1.0)
    return signed.appended(rows / norm[:, None], 1.0 / norm)


def completed(run: Run, signed: Layered, rows: np.ndarray, gapped: list,
              state: State) -> Optional[np.ndarray]:
    """The rows of a new layer after ``signed`` (``a / c`` each: ``rows`` complete, then those
    of ``gapped``, ``(row, missing entries)``, completed from ``state.unfitted``; see
    :func:`fidelity.peel._completed`), or None when those answers do not determine them
    exactly."""
    if state.unfitted is None:
        return None
    cols = np.concatenate([g for _, g in gapped])
    units = np.unique(cols)                       # the earlier units of the unseen entries
    if units.size == cols.size:                   # (shared entries: their parts mix there)
        rows_jointly = _completed_jointly(signed, rows, gapped, *state.unfitted)
        if rows_jointly is not None:
            return rows_jointly
    if units.size > MAX_NULL:
        return None
    x, y = _with_part(run, signed, units, rows.shape[0] + len(gapped), *state.unfitted)
    state.unfitted = (x, y)
    return _completed_by_parts(signed, rows, gapped, x, y)


def from_kinks(run: Run, signed: Layered, rows: np.ndarray, gapped: list, state: State,
               mcfg: Optional[MeasureConfig] = None, shown: bool = False,
               most: Optional[int] = None) -> tuple[np.ndarray, list]:
    """The rows of a new layer after ``signed`` (``rows`` complete, then those of ``gapped``,
    ``(row, missing entries)``, all ``a / c``) with each missing entry read from the kinks
    on the searched lines that the layer with those entries 0 does not explain: at a kink of
    unit ``j`` where one of its missing entries' units ``i`` is on, ``row . h + 1 = 0`` gives
    that entry. Each takes the value that explains the most kinks (of at most
    :data:`FROM_KINKS` tried, :data:`FROM_KINKS_TRIES` in all); with ``shown``, less the
    crossings it predicts where none was found: a kink of another unit gives a value whose
    boundary crosses lines where nothing kinks (random 10-20-20-1 s4: an entry read so with
    the sign opposite to the victim's). ``shown`` is for a layer each of whose crossings shows
    as a kink; where a deeper layer is off, a crossing shows nothing, and the right value was
    lost so (random 40-20-10-10-1 s24: parameter error 1.1e-11 -> 7.7e-8). Returns
    ``(rows, unread)``: the ``(unit, entry)`` pairs no kink gave, left 0 (their units were
    never on together with ``j`` where a line crossed ``j``'s boundary). With ``mcfg``, such
    an entry is looked for once more: windows across the boundary on either side of where a
    walk along it (the model's, no query) meets unit ``i``'s plane (:func:`beyond_plane`),
    for units with at most ``most`` entries unread (any number when None)."""
    out, unread = _from_kinks(run, signed, rows, gapped, state, shown)
    units = [u for u, _ in unread]
    sought = [(u, i) for u, i in unread if most is None or units.count(u) <= most]
    if mcfg is None or not sought:
        return out, unread
    model = with_rows(signed, out)
    looked, first = 0, len(state.lines)
    for unit, i in sought[:UNSEEN_WINDOWS]:
        key = (signed.depth, i, np.round(out[unit] / np.abs(out[unit]).max(), 6).tobytes())
        if key in state.beyond:        # (a search of the layer again, or another pick of
            continue                   # units to complete, asks for the same)
        state.beyond.add(key)
        for where in beyond_plane(signed, model, unit, i, state):
            if run.room(UNSEEN_ROOM):
                window(run, mcfg, state, *where, model)
                looked += 1
    return (_from_kinks(run, signed, rows, gapped, state, shown, first) if looked
            else (out, unread))


UNSEEN_WINDOWS = 8    # windows that look for entries no kink gave (from_kinks), at most
UNSEEN_ROOM = 200     # ... each opened only with this many queries left in the budget
UNSEEN_STARTS = 4     # crossings of the searched lines a walk to the plane starts from
UNSEEN_STEPS = 40     # ... and its steps, each to the next plane of the earlier layers
BEYOND_STEP = 0.3     # the windows sit this share of the way to the nearest plane along it
BEYOND_HALF = 10.0    # ... and reach this many times that distance either side (random
                      # 8-6-5-1 s0-59, one entry of each made unseen: the victim's boundary
                      # crossed one of the two beyond the plane for 51 of 57 walks that met
                      # it; one window beyond it reaching half that distance: 5 of 40)


BEYOND_FAR = 1e-3     # one window further beyond the plane where the step is below this
BEYOND_GROW = 10.0    # share of the largest (:func:`_far`), found in steps this many times
                      # longer (random 40-20-10-10-1 s222: a walk met the plane 6e-8 from
                      # another; windows 4e-8 long saw h_i at 1e-9 and the layer-3 unit's
                      # entry stayed unread; one 3.7e-2 long, beyond it, read it: 3e-11 off)


def beyond_plane(signed: Layered, model: Layered, unit: int, i: int,
                 state: State) -> list:
    """Windows across the boundary of ``unit`` (of ``model``'s last layer, after ``signed``)
    on either side of the plane of unit ``i`` of ``signed``'s last layer, where a walk along
    the boundary from its crossings of the searched lines nearest that plane meets it (no
    query): ``[(point, unit normal, half length)]``, none when no walk gets there. The
    boundary is the victim's up to that plane (unit ``i`` off, its entry moves nothing);
    beyond it, the victim's bends by the entry times ``h_i`` into a half-plane on one side
    or the other of where the walk met it, which one the entry's sign decides: each window
    crosses one."""
    m = model.depth
    starts = []
    for line in state.lines:
        t, layer, u = model.kinks(line.x0, line.v, line.half)
        starts.extend(line.x0 + t[(layer == m) & (u == unit)][:, None] * line.v)
    if not starts:
        return []
    starts = np.array(starts)
    near = [signed.preacts(p[None])[-1][0, i] / max(np.linalg.norm(signed.jacobian(p, m - 1)[i]),
                                                    1e-300) for p in starts]
    for y in starts[np.argsort(-np.array(near))[:UNSEEN_STARTS]]:
        last = None                        # the plane the last step ended on
        for _ in range(UNSEEN_STEPS):
            gu = model.jacobian(y, m)[unit]
            gi = signed.jacobian(y, m - 1)[i]
            if not gu @ gu > 0:                # flat where every unit it weighs is off
                break
            d = _along(gi, [gu])               # along the boundary, toward plane i
            if last is not None:
                g_last = signed.jacobian(y, last[0] + 1)[last[1]]
                z_last = signed.preacts(y[None])[last[0]][0, last[1]]
                if z_last * (g_last @ d) < 0:  # back across it: along the ridge instead
                    d = _along(gi, [gu, g_last])
            rate = gi @ d
            if not rate > 1e-12 * (gi @ gi):
                break
            zi = signed.preacts(y[None])[-1][0, i]
            if zi > 0:                                     # met: back onto the plane
                y = y - zi / rate * d
                cap = BEYOND_STEP * (np.linalg.norm(y) / np.linalg.norm(d) + 1.0)
                step = min(BEYOND_STEP * min(_to_planes(signed, y, d),
                                             _to_planes(signed, y, -d)), cap)
                out = []
                far = step < BEYOND_FAR * cap      # (too near another plane to see h_i)
                for s in (_far(model, unit, y, d, step, cap),) if far else (step, -step):
                    p = _onto(model, unit, y + s * d)
                    n = model.jacobian(p, m)[unit]
                    half = BEYOND_HALF * abs(s) * np.linalg.norm(d)
                    if np.linalg.norm(n) > 0 and np.isfinite(p).all() and half > 0:
                        out.append((p, n / np.linalg.norm(n), half))
                return out
            reach, last = _next_plane(signed, y, d)        # of any earlier unit
            if reach >= -zi / rate:
                reach, last = -zi / rate, None
            y = _onto(model, unit, y + reach * (1 + 1e-6) * d)
    return []


def _far(model: Layered, unit: int, y: np.ndarray, d: np.ndarray, step: float,
         cap: float) -> float:
    """The longest of the steps ``step`` times :data:`BEYOND_GROW` to the ``k`` (at most
    ``cap``) from ``y`` along ``d`` after which the model's boundary of ``unit`` is met again
    and is its only crossing of the window there (no query); ``step`` when none is. A window
    so far beyond the plane sees a larger ``h_i``, which reads the entry more precisely."""
    m, best, s = model.depth, step, step * BEYOND_GROW
    while s <= cap:
        p = _onto(model, unit, y + s * d)
        n = model.jacobian(p, m)[unit]
        z = model.preacts(p[None])[-1][0, unit]
        if not (np.isfinite(p).all() and n @ n > 0) or abs(z) > 1e-9 * np.linalg.norm(n) * (
                np.linalg.norm(p) + 1.0):
            break
        _, layer, u = model.kinks(p, n / np.linalg.norm(n), BEYOND_HALF * s * np.linalg.norm(d))
        if ((layer == m) & (u == unit)).sum() != 1:
            break
        best, s = s, s * BEYOND_GROW
    return best


def _along(g: np.ndarray, keep: list) -> np.ndarray:
    """``g`` less its part in the span of ``keep``."""
    q, _ = np.linalg.qr(np.array(keep).T)
    return g - q @ (q.T @ g)


def _to_planes(signed: Layered, y: np.ndarray, d: np.ndarray) -> float:
    """The distance from ``y`` along ``d`` to the nearest plane of a unit of ``signed``."""
    return _next_plane(signed, y, d)[0]


def _next_plane(signed: Layered, y: np.ndarray, d: np.ndarray) -> tuple:
    """``(distance, (layer - 1, unit))`` from ``y`` along ``d`` to the nearest plane of a unit
    of ``signed`` (where it switches, with every earlier unit keeping its side); ``(inf,
    None)`` when there is none."""
    best, which = np.inf, None
    zs = signed.preacts(y[None])
    for l in range(signed.depth):
        rate = signed.jacobian(y, l + 1) @ d
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -zs[l][0] / rate
        t[~np.isfinite(t) | (t <= 1e-12 * max(np.linalg.norm(y), 1.0))] = np.inf
        k = int(np.argmin(t))
        if t[k] < best:
            best, which = float(t[k]), (l, k)
    return best, which


def _onto(model: Layered, unit: int, y: np.ndarray) -> np.ndarray:
    """``y`` moved onto the boundary of ``unit`` of ``model``'s last layer (along its
    gradient; a few Newton steps, exact within a region)."""
    for _ in range(3):
        g = model.jacobian(y, model.depth)[unit]
        if not g @ g > 0:              # flat where every unit it weighs is off
            break
        y = y - model.preacts(y[None])[-1][0, unit] * g / (g @ g)
    return y


def _from_kinks(run: Run, signed: Layered, rows: np.ndarray, gapped: list, state: State,
                shown: bool, first: int = 0) -> tuple[np.ndarray, list]:
    """:func:`from_kinks` from the lines searched so far, their kinks tried from the line
    ``first`` on (the windows opened for it), then from the start: tried last, random
    40-20-10-10-1 s222's window kink came after the :data:`FROM_KINKS` tried, all deeper
    units' kinks."""
    out = np.concatenate([rows, np.array([r for r, _ in gapped])])
    n_full, unread = rows.shape[0], []
    model = with_rows(signed, out)
    pts = []
    for line in state.lines[first:] + state.lines[:first]:
        missed = ~predicted(run, model, line, None)
        pts.extend(line.x0 + t * line.v for t in line.t[missed])
    h = np.maximum(signed.preacts(np.array(pts))[-1], 0.0) if pts else np.zeros((0, 1))
    grids = None

    def explained(rows_now):
        nonlocal grids
        if grids is None:
            grids = _grids(signed, [line for line in state.lines if line.t.size])
        hits, false = _explained_on(grids, with_rows(signed, rows_now))
        return hits - false if shown else hits

    tries, base = FROM_KINKS_TRIES, None      # base: explained(out), once asked
    for j, (_, gaps) in enumerate(gapped):
        unit = n_full + j
        for i in gaps:
            lone = (h[:, i] > 0) & ((h[:, gaps] > 0).sum(1) == 1) if h.shape[0] else []
            values = [-(out[unit] @ h[k] + 1.0) / h[k, i] for k in np.flatnonzero(lone)]
            values = values[:min(FROM_KINKS, tries)]
            tries -= len(values)
            if values and base is None:
                base = explained(out)
            best, most = 0.0, base if values else 0
            for value in values:
                trial = out.copy()
                trial[unit, i] = value
                count = explained(trial)
                if count > most:
                    best, most = value, count
            if best != 0.0:
                out[unit, i], base = best, most
            else:
                unread.append((unit, int(i)))
    return out, unread


def pieces(signed: Layered, line: Line, reach: float) -> tuple:
    """``(pts, h, t)``: the kinks ``t`` of ``signed`` on ``line`` within ``reach`` of its
    origin, the ends of the pieces they make (with ``-reach`` and ``reach``, as
    :meth:`Layered.kinks` has them) and the outputs ``h`` of ``signed`` there. A new layer
    ``(W, b)`` after ``signed`` kinks where ``h @ W.T + b`` changes sign between them."""
    t = signed.kinks(line.x0, line.v, reach)[0]
    pts = np.sort(np.concatenate([[-reach, reach], t]))
    return pts, np.maximum(signed.preacts(line.x0 + pts[:, None] * line.v)[-1], 0.0), t


def _grids(signed: Layered, lines: list) -> tuple:
    """What :func:`predicted` needs of ``lines`` (each with kinks) for any new layer after
    ``signed``, all lines' :func:`pieces` in one: their ends ``pts`` and outputs ``h`` one
    after another, which line each is on, which pairs in a row lie on one line, the lines'
    found kinks (padded with inf) and tolerances, and which of them ``signed`` explains."""
    got = [pieces(signed, line, line.half) for line in lines]
    pts = np.concatenate([g[0] for g in got]) if got else np.zeros(0)
    h = np.concatenate([g[1] for g in got]) if got else np.zeros((0, 1))
    on = np.repeat(np.arange(len(got)), [g[0].size for g in got])
    found = np.full((len(lines), max([line.t.size for line in lines], default=0)), np.inf)
    near = np.zeros(found.shape, bool)
    for k, (line, g) in enumerate(zip(lines, got)):
        found[k, :line.t.size] = line.t
        near[k, :line.t.size] = _matched(line, g[2])
    tol = np.array([MATCH * line.half for line in lines])
    return pts, h, on, on[:-1] == on[1:], found, tol, near


def _explained_on(grids: tuple, model: Layered) -> tuple[int, int]:
    """How many of the lines' kinks ``model`` (``signed`` of :func:`_grids` and a new layer)
    predicts (:func:`predicted` of it, the earlier layers read once), and how many of the
    new layer's crossings of the lines lie where no kink was found."""
    pts, h, on, pair, found, tol, near = grids
    t, _, ia = crossings(pts, h @ model.weights[-1].T + model.biases[-1], pair)
    line = on[ia]
    close = np.abs(found[line] - t[:, None]) <= tol[line][:, None]     # (crossing, kink)
    matched = near.copy()
    np.logical_or.at(matched, line, close)
    return int(matched.sum()), int((~close.any(1)).sum())


FROM_KINKS = 16   # kinks tried per missing entry (from_kinks)
FROM_KINKS_TRIES = 64   # ... and in all (each counts the kinks of every line explained)


PART_RADII = (1.0, 3.0, 10.0, 30.0)   # radii (times input_scale) of the answers drawn there
PART_POOL = 50                        # model-only draws per answer wanted


def _with_part(run: Run, signed: Layered, cols: np.ndarray, h: int, x: np.ndarray,
               y: np.ndarray) -> tuple:
    """``(x, y)`` with answers added where the units ``cols`` of the last known layer are all
    off, until :func:`_completed_by_parts` has ``2 (2 h + 1)`` there (random 10-10-10-1 s7:
    17 of 73 had its one unseen entry's unit off, and layer 2 was searched again). Drawn by
    the model alone; none when the budget is short."""
    def off(pts):
        return (signed.preacts(pts)[-1][:, cols] <= 0).all(1)

    want = 2 * (2 * h + 1) - int(off(x).sum())
    if want <= 0:
        return x, y
    pool = fresh_points(run, PART_POOL * want, PART_RADII,
                        np.random.default_rng([run.seed, 37, len(x)]))
    more = pool[off(pool)][:want]
    if not len(more) or not run.room(len(more)):
        return x, y
    return np.concatenate([x, more]), np.concatenate([y, run.query("output")(more)])


def _completed_jointly(signed: Layered, rows: np.ndarray, gapped: list, x: np.ndarray,
                       y: np.ndarray) -> Optional[np.ndarray]:
    """:func:`completed` by one affine fit over all the answers."""
    n_full = rows.shape[0]
    model = with_rows(signed, np.concatenate([rows, np.array([r for r, _ in gapped])]))
    z = model.preacts(x)[-1]
    hm = np.maximum(signed.preacts(x)[-1], 0.0)
    feats = [np.maximum(z[:, :n_full], 0.0), z[:, :n_full]]
    for j, (_, gaps) in enumerate(gapped):
        zj, on = z[:, n_full + j], (hm[:, gaps] > 0).any(1)
        feats += [np.where(on, 0.0, np.maximum(zj, 0.0))[:, None], zj[:, None],
                  np.where(on, zj, 0.0)[:, None], hm[:, gaps]]
    feats = np.concatenate(feats + [np.ones((x.shape[0], 1))], 1)
    if feats.shape[0] < 2 * feats.shape[1]:       # too few answers to tell a fit from a fluke
        return None
    scaled = feats / np.maximum(np.linalg.norm(feats, axis=0), 1e-300)
    sv = np.linalg.svd(scaled, compute_uv=False)
    if sv[-1] < GAP_COND * sv[0]:
        # the entries' part is not told apart from the other units' (a unit on nearly
        # everywhere is linear in h, as z of every unit is: random 11-10-9-2 s1287 fitted
        # exactly with a row at cos 0.978)
        return None
    coef, fits = affine_fit(feats, y)
    if not fits:
        return None
    out, at = list(rows), 2 * n_full
    w_new, b_new = model.weights[-1].copy(), model.biases[-1].copy()
    for j, (_, gaps) in enumerate(gapped):
        b, c, d = coef[at + 1], coef[at + 2], coef[at + 3:at + 3 + gaps.size]
        at += 3 + gaps.size
        lin = b + c
        if not (lin @ lin > 0):
            return None
        w_new[n_full + j, gaps] = d @ lin / (lin @ lin)      # least squares over the outputs
        out.append(w_new[n_full + j] / b_new[n_full + j])
    return np.array(out)


MAX_NULL = 5      # gap entries' units whose absence an orientation search may resolve


def _sides(a: np.ndarray, lin: np.ndarray, null: np.ndarray):
    """Orientations ``s`` of the units of an affine fit ``relu(z) a + [z, 1] lin`` whose
    linear part is known up to ``null @ t``: the ``t`` (one per output) that makes each
    unit's linear part 0 (``s = 1``) or ``-a`` (``s = -1``, as ``relu(-z) = relu(z) - z``).
    Returns ``(s, lin + null @ t)``, or None unless exactly one choice does."""
    h, r = a.shape[0], null.shape[1]
    size = np.linalg.norm(a, axis=1)
    if (size == 0).any():
        return None
    found = []
    if r == 0:
        pivots = np.zeros(0, int)
    else:
        pivots = np.argsort(-np.linalg.norm(null[:h], axis=1))[:r]
        if np.linalg.matrix_rank(null[pivots]) < r:
            return None
    for choice in range(1 << r):
        flip = np.array([(choice >> q) & 1 for q in range(r)], bool)
        target = np.where(flip[:, None], -a[pivots], 0.0) - lin[pivots]
        t = np.linalg.solve(null[pivots], target) if r else np.zeros((0, lin.shape[1]))
        got = lin + null @ t
        off_plus = np.linalg.norm(got[:h], axis=1)
        off_minus = np.linalg.norm(got[:h] + a, axis=1)
        if np.minimum(off_plus, off_minus).max() <= SIDE_CLEAR * size.min():
            found.append((np.where(off_minus < off_plus, -1.0, 1.0), got))
    return found[0] if len(found) == 1 else None


def _completed_by_parts(signed: Layered, rows: np.ndarray, gapped: list, x: np.ndarray,
                        y: np.ndarray) -> Optional[np.ndarray]:
    """:func:`completed` in two steps, for a layer as wide as the one before (its ``z`` span
    every affine function of that layer's outputs, so the entries' parts cannot be told from
    the orientations' in one fit: random 40-20-10-10-1 s5, a layer-3 unit of 21 kinks with
    one entry unseen), or units that share an unseen entry (one fit cannot part them). The
    answers where every unseen entry's unit is off fit the units with
    those entries 0 and give each unit's orientation (the part linear in ``z`` is 0 or minus
    the ``relu`` part); the others then give the entries, linear in them where their unit is
    on; the completed units must fit every answer."""
    n_full = rows.shape[0]
    model = with_rows(signed, np.concatenate([rows, np.array([r for r, _ in gapped])]))
    z = model.preacts(x)[-1]
    hm = np.maximum(signed.preacts(x)[-1], 0.0)
    cols = np.concatenate([g for _, g in gapped])
    part = (hm[:, cols] == 0).all(1)
    h = z.shape[1]
    if part.sum() < 2 * (2 * h + 1) or part.all():
        return None
    feats = either_side(z[part])
    coef, fits = affine_fit(feats, y[part])
    if not fits:
        return None
    # where the entries' units are off, the z and 1 span fewer dimensions than they count:
    # the part linear in z is known up to their null space, and the orientations pick it
    lin = feats[:, h:] / np.maximum(np.linalg.norm(feats[:, h:], axis=0), 1e-300)
    # (the reduced factors: lin has more rows than columns, and the full U of a fit of
    # 66,749 answers needed 33 GiB: random 100-50-50-50-10 s4 died of it)
    _, sv, vt = np.linalg.svd(lin, full_matrices=False)
    null = (vt[np.sum(sv > GAP_COND * sv[0]):] /
            np.maximum(np.linalg.norm(feats[:, h:], axis=0), 1e-300)).T      # (h + 1, r)
    if null.shape[1] > MAX_NULL:
        return None
    a = coef[:h]
    sides = _sides(a, coef[h:], null)
    if sides is None:
        return None                               # orientations the fit does not tell
    s, lin_coef = sides
    resid = y - (np.maximum(z, 0.0) @ a + z @ lin_coef[:h] + lin_coef[h])
    # unit j on (with its entries 0) where its unseen entries' units are on: there its
    # relu(s z_j) gains s w . h_gaps, times its output weights
    feats, idx = [], []
    for j, (_, gaps) in enumerate(gapped):
        u = n_full + j
        on = s[u] * z[:, u] > 0
        for i in gaps:
            feats.append((on * s[u] * hm[:, i])[:, None] * a[u][None, :])
            idx.append((u, int(i)))
    # one unknown per entry, one equation per answer and output
    big = np.stack([f.ravel() for f in feats], 1)
    if np.linalg.matrix_rank(big) < big.shape[1]:
        return None
    w_read = np.linalg.lstsq(big, resid.ravel(), rcond=None)[0]
    w_new, b_new = model.weights[-1].copy(), model.biases[-1].copy()
    for (u, i), value in zip(idx, w_read):
        w_new[u, i] = value
    done = Layered(model.weights[:-1] + (w_new,), model.biases)
    if not fits_outputs(done, x, y):
        return None
    return np.concatenate([rows, w_new[n_full:] / b_new[n_full:, None]])
