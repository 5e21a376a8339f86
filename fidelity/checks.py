"""Stage 5: check lines, and extending the model where one disagrees.

A check line compares fresh answers with the model. Where they disagree, the line is searched
and every kink that no unit of the model explains (each unit kinks at most once on a line) is
measured as a new unit. What counts as explained, and what happens when nothing new is found,
is the regime's to say (see :mod:`fidelity.regimes`).
"""

from __future__ import annotations

from typing import Optional, Protocol

import numpy as np

from .context import Run
from .geometry import Hyperplanes
from .measure import MeasureConfig, measure_line, merge_kinks, search_line

POINT_RADII = (0.3, 1.0, 3.0, 10.0, 30.0)   # radii (times input_scale) of fresh check inputs:
                          # a deeper unit on for 0.8% of inputs at radius 1 is on for 6% at 0.3
                          # and never at 10 (random 9-9-8-2 s5490)


def fresh_points(run: Run, n: int, radii=POINT_RADII, rng=None) -> np.ndarray:
    """``n`` Gaussian inputs, their radii cycling through ``radii`` (times ``input_scale``),
    from ``rng`` (the run's stream by default)."""
    radius = np.resize(np.array(radii), n) * run.input_scale
    return (run.rng if rng is None else rng).normal(size=(n, run.d)) * radius[:, None]


def point_error(run: Run, network, x: np.ndarray,
                tol: float) -> tuple[np.ndarray, np.ndarray]:
    """``network`` against the answers at ``x`` (asked as checks): ``(answers, each one's
    error relative to the largest answer)``. The answers join the run's check log (group
    ``points``, allowed ``tol`` of the largest answer), which :func:`output_bound` reads."""
    y = run.query("checks")(x)
    size = max(float(np.abs(y).max()), 1e-300)
    run.check_log.append(("points", x, y, tol * size))
    return y, np.abs(network(x) - y).max(1) / size


# a verified kink this close (times t_max) to an explained one bounds a region too thin for a
# row: it is left to the twins' treatment
CLOSE = 1e-7
# this many (and this share) of the model's hyperplanes missing their kink on a searched line,
# within BENT_RANGE t_max of its centre, say the victim is deeper than one hidden layer
BENT_MIN = 3
BENT_SHARE = 0.25
BENT_RANGE = 0.999
# a unit counts for the bent-boundary test when its slope jump on the line is this many times
# the search's slope tolerance
VISIBLE = 16
# a disagreeing line where the search found nothing new is searched again with this many
# times its slope step
COARSE = 1e3
# a check relative to the answers' spread allows at least this many times their rounding
SPREAD_FLOOR = 64


class Extender(Protocol):
    """What :func:`extend` asks of the regime."""

    def predicted_kinks(self, run: Run, x0: np.ndarray, v: np.ndarray,
                        t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where the model's units kink on the line, and the tolerance per found kink ``t``."""

    def nothing_new(self, run: Run) -> bool:
        """A disagreeing line held no new kink; True when the model was changed otherwise."""

    def keep_new(self, run: Run, jumps: list) -> list:
        """The jumps of the new kinks that are really new units."""


def check_line(run: Run, points: int, tol: float,
               spread: bool = False) -> tuple[bool, np.ndarray, np.ndarray]:
    """Compares ``points`` answers on a fresh line with the model: ``(agree, x0, v)``.

    ``run.check_error`` is the largest disagreement relative to the answers' size ``max |f|``,
    or with ``spread`` (float64 answers) to their spread on the line, ``max f_i - min f_i``:
    an output offset (1e3 over outputs that vary by ~1) would otherwise hide errors 1e3 times
    the tolerance. The spread test never asks for less than ``SPREAD_FLOOR`` times the answers'
    rounding (``run.tol`` at ``max |f|``).
    """
    x0, v = run.new_line()
    if not spread:
        t = run.t_max * run.rng.uniform(-1, 1, points)
        pts = x0 + t[:, None] * v
        y = run.query("checks")(pts)
        size = max(float(np.abs(y).max()), 1e-300)
        run.check_error = float(np.abs(y - run.model.network(pts)).max()) / size
        run.check_log.append(("far", pts, y, tol * size))
        return run.check_error <= tol, x0, v
    # half the points near the line's origin (inputs of the victim's own scale, whose outputs
    # vary ~100x less than far out on the line): each half against its own range, the spread
    # of its answers on all check lines so far
    # (the run's stream draws what it always drew, so that later lines and placements stay
    # the same; the near offsets come from a stream of their own)
    near = points // 2
    far = run.t_max * run.rng.uniform(-1, 1, points)[:points - near]
    own = np.random.default_rng([run.seed, 15, run.lines])
    t = np.concatenate([far, run.input_scale * own.normal(size=near)])
    pts = x0 + t[:, None] * v
    y = run.query("checks")(pts)
    diff = np.abs(y - run.model.network(pts)).max(1)
    ok, worst = True, 0.0
    for group, part in (("far", slice(0, points - near)), ("near", slice(points - near, points))):
        if not diff[part].size:
            continue
        yp = y[part]
        # the range of this group's answers on every check line so far: near the origins,
        # that is the range of the outputs over inputs of the victim's own scale
        pooled = np.concatenate([e[2] for e in run.check_log if e[0] == group] + [yp])
        width = max(float((pooled.max(0) - pooled.min(0)).max()), 1e-300)
        size = max(float(np.abs(yp).max()), 1e-300)
        allowed = max(tol * width, SPREAD_FLOOR * float(run.tol(size)))
        err = float(diff[part].max())
        ok &= err <= allowed
        worst = max(worst, err / width)
        run.check_log.append((group, pts[part], yp, allowed))
    run.check_error = worst
    return bool(ok), x0, v


def _groups(run: Run, network) -> dict:
    """``{group: (max |f - f_hat| / range, allowed / range, answers)}`` over the check
    answers of each group (see :func:`output_bound`)."""
    out = {}
    for group in ("far", "near", "points"):
        logs = [entry for entry in run.check_log if entry[0] == group]
        if not logs:
            continue
        pts = np.concatenate([e[1] for e in logs])
        y = np.concatenate([e[2] for e in logs])
        width = max(float((y.max(0) - y.min(0)).max()), 1e-300)
        out[group] = (float(np.abs(y - network(pts)).max()) / width,
                      max(e[3] for e in logs) / width, pts.shape[0])
    return out


def output_bound(run: Run, network) -> tuple[float, int, float]:
    """What the check answers say about ``network`` without a new query:
    ``(max |f - f_hat| / range, answers used, resolution)``.

    Every check answer (fresh random inputs, counted as ``checks``) is compared with the final
    network, in three groups: the check lines' answers pooled over all lines, far out on the
    lines and near their origins (for float64 answers, i.e. inputs of the victim's own scale),
    and the point checks' answers (:func:`point_error`: Gaussian inputs at the radii
    :data:`POINT_RADII`), each relative to its range, the largest spread ``max f_i - min f_i``
    of one output over the group. The resolution is the largest disagreement the check lines
    allowed (the point checks' where there are no check lines: a deep result), relative to
    the same range: a unit that moves the outputs by less than that at every checked point
    (e.g. output weights ~1e-8 of the others) could be missing and still pass every check.
    (The point checks' own allowance is no part of it where lines were checked: they are a
    second test a unit must also pass, and behind an output offset of 1e3 their small range
    made it 1e-7 to 8e-7 of theirs, against the lines' 1e-8.)
    """
    if network is None or not run.check_log:
        return float("nan"), 0, float("nan")
    groups = _groups(run, network)
    err = max(g[0] for g in groups.values())
    count = sum(g[2] for g in groups.values())
    lines = [groups[g][1] for g in ("far", "near") if g in groups]
    res = max(lines) if lines else groups["points"][1]
    return err, count, res


def disagreement(run: Run, network) -> Optional[tuple[float, float]]:
    """``(error, allowed)`` of the check group whose answers ``network`` misses by the most
    against what that group allowed (each relative to the group's range), or None when every
    group agrees."""
    if network is None or not run.check_log:
        return None
    worst = max(_groups(run, network).values(), key=lambda g: g[0] / max(g[1], 1e-300))
    return (worst[0], worst[1]) if worst[0] > worst[1] else None


def extend(run: Run, regime: Extender, cfg: MeasureConfig, x0: np.ndarray, v: np.ndarray,
           use_jit) -> bool:
    """A check line disagreed: search it and add units whose kinks are new. True when the
    evidence changed (units added, or measured again by the regime)."""
    res = search_line(run, x0, v, max_rounds=cfg.max_rounds, use_jit=use_jit)
    pred, tol = regime.predicted_kinks(run, x0, v, res.t)
    if getattr(regime, "float64", False) and not run.deep_tried and run.evidence.jumps:
        # the rows as measured at their kinks, not the fitted ones: a fit over lines on which
        # some units are still unknown (and on or off for the whole line) can move every row
        # (short lines of a probability domain: 45 rows at cos 0.5-0.99 of the victim's, from
        # jumps exact to 1e-16), and a bent boundary is then taken for a deeper layer
        rows = run.evidence.jump_rows()
        coef = np.array([j.coef for j in run.evidence.jumps])
        at = Hyperplanes.of_rows(rows).kinks(x0, v)
        run.bent = _bent(run, res.t, at[_visible(run, x0, v, rows, coef)], tol)
        if run.bent:
            return False                    # the driver goes on layer by layer
    new = unexplained(res.t, res.verified, pred, tol, close=CLOSE * run.t_max)
    added = 0
    if new:
        added = measure_line(run, cfg, x0, v, res, np.array(new),
                             keep=lambda jumps: regime.keep_new(run, jumps))
    if not added and getattr(regime, "float64", False):
        # a unit whose slope jump is below the search's slope noise (output weights ~1e-6 of
        # the largest, answers 1e3 times their spread) stays invisible to the fine step; a
        # coarse one sees it. Only its verified kinks away from every fine one are added (its
        # secant slopes place the others less precisely: taken as new, a random 784-32-1
        # measured 30 known units again). Also searched when the fine step's "new" kinks were
        # known units again (a model still missing the small unit places them roughly)
        seen = res
        coarse = search_line(run, x0, v, max_rounds=cfg.max_rounds, use_jit=False,
                             coarse=COARSE)
        res = merge_kinks(res, coarse, CLOSE * COARSE * run.t_max)
        pred, tol = regime.predicted_kinks(run, x0, v, res.t)
        again = set(seen.t[new]) if new else set()
        new = [i for i in unexplained(res.t, res.verified, pred, tol, close=CLOSE * run.t_max)
               if res.t[i] not in again]
        if new:
            added = measure_line(run, cfg, x0, v, res, np.array(new),
                                 keep=lambda jumps: regime.keep_new(run, jumps))
    if not added:       # nothing new, or the "new" kinks were known units again
        return regime.nothing_new(run)
    return True


def _visible(run: Run, x0: np.ndarray, v: np.ndarray, rows: np.ndarray,
             coef: np.ndarray) -> np.ndarray:
    """``(h,)`` which of the units ``rows``, ``coef`` the search can see on the line: their
    slope jump along it, ``|c_i| |w_i . v|``, stands ``VISIBLE`` times above the slope noise
    of the search's step (a unit with output weights 1e-6 of the largest, or answers 1e3
    times their spread, kinks below it; such a unit missing its kink says nothing about
    depth)."""
    network = run.model.network
    ends = x0 + np.array([-run.t_max, run.t_max])[:, None] * v
    size = float(np.abs(network(ends)).max()) if network is not None else 0.0
    noise = float(run.tol(size))
    jump = np.abs(coef).max(1) * np.abs(rows[:, :-1] @ v)
    return jump > VISIBLE * 8 * noise / run.tol.delta


def _bent(run: Run, found: np.ndarray, pred: np.ndarray, tol) -> Optional[str]:
    """Why the victim looks deeper than one hidden layer, when many of the model's hyperplanes
    cross the line where the victim has no kink (their boundaries bend; a one-layer victim's
    every hyperplane kinks where predicted); None otherwise."""
    pred = np.asarray(pred, np.float64)
    pred = pred[np.isfinite(pred) & (np.abs(pred) < BENT_RANGE * run.t_max)]
    if not pred.size:
        return None
    width = float(np.max(tol)) if np.size(tol) else 0.0
    if found.size:
        missed = int((np.abs(pred[:, None] - found[None, :]).min(1) > width).sum())
    else:
        missed = pred.size
    if missed >= max(BENT_MIN, BENT_SHARE * pred.size):
        return (f"{missed} of the {pred.size} hyperplanes crossing line {run.lines - 1} have "
                "no kink there: the victim's boundaries bend (more than one hidden layer)")
    return None


def unexplained(found: np.ndarray, verified: np.ndarray, pred: np.ndarray,
                tol: np.ndarray, close: float = 0.0) -> list[int]:
    """Indices of the ``found`` kinks that no predicted kink explains (within ``tol``, per
    found kink).

    Each unit kinks at most once on a line, so a predicted kink explains at most one verified
    kink: those pairs are matched nearest first, one to one. Matching each kink to its nearest
    prediction alone took units whose kinks lie within ``tol`` of a known unit's for that unit
    (a trained 784-1024-10 had 4 of its 11 units missing from the first line hidden this way on
    the second, 2e-3 to 2e-2 from a neighbour's kink). A kink the search only located to its
    resolution (``verified`` False) is explained by any prediction within ``tol``: where two
    kinks lie closer than the resolution, the search may report more kinks than there are (31
    such extras on that line, which one-to-one matching would have measured as new). So is a
    kink within ``close`` of an explained one: the region between them is too thin to give a
    row (twin hyperplanes, left to :func:`fidelity.twins.separate_twins`; the parallel twins
    of ``benchmarks/precision.py`` kink 3e-6 apart and came back as five spurious units).
    """
    found = np.asarray(found, np.float64)
    verified = np.asarray(verified, bool)
    pred = np.asarray(pred, np.float64)
    pred = pred[np.isfinite(pred)]
    tol = np.broadcast_to(np.asarray(tol, np.float64), found.shape)
    if not pred.size:
        return list(range(found.size))
    order = np.sort(pred)
    lo = np.searchsorted(order, found - tol, side="left")
    hi = np.searchsorted(order, found + tol, side="right")
    pairs = sorted((abs(order[j] - t), i, j) for i, t in enumerate(found)
                   for j in range(lo[i], hi[i]))
    used_f, used_p = set(), set()
    for _, i, j in pairs:
        if not verified[i]:
            used_f.add(i)
        elif i not in used_f and j not in used_p:
            used_f.add(i)
            used_p.add(j)
    matched = np.array(sorted(used_f), int)
    return [i for i in range(found.size) if i not in used_f
            and not (matched.size and np.abs(found[matched] - found[i]).min() <= close)]
