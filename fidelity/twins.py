"""Units the lines cannot tell apart: twins, parallel rows, spurious units.

Twins (rows that differ by ~1e-7) kink a hair apart on every line, and the region between is too
thin for a gradient: :func:`separate_twins` measures them again far out, where their hyperplanes
have fanned apart; :func:`merge_twins` keeps them as one unit when even that fails. When the
sign system is singular, :func:`resolve_singular` drops units with nil output weights or merges
two parallel rows, and the fit goes on.
"""

from __future__ import annotations

import numpy as np

from . import estimates, recover, search
from .context import Run
from .measure import region_noise
from .results import Kind

# kinks on one line closer than this (times t_max) belong to a candidate pair of twins
TWIN_CLOSE = 1e-6
# ... whose rows agree to |cos| above this, or one of which is this imprecise
TWIN_ALIKE_COS = 0.99
TWIN_IMPRECISE = 1e-3
# pairs measured per call
TWIN_PAIRS = 4
# the far line: at this many t_max from the origin, this long (relative), tries
TWIN_REACH = 30.0
TWIN_SPAN = 1e-4
TWIN_TRIES = 3
# a coordinate step stays within this share of the room to the region's bounds
TWIN_ROOM = 0.25
# output coefficients below this share of the largest: a spurious unit
VOID_TOL = 1e-9
# rows with 1 - |cos| below this are one hyperplane direction
PARALLEL_TOL = 1e-6
# a unit's jump this many times its noise from rank one is two neurons (name_rank_two);
# measured: 0.4-3.0 on every k > 1 victim of benchmarks/core.py, 12.9-150 on the generator's
# merged twins with different output weights (combined 20-8-3 s14, s16, 40-6-4 s29)
RANK_TWO = 8.0


def separate_twins(run: Run, max_rounds: int) -> bool:
    """Re-measures two units whose kinks on one line are closer than it can resolve.

    Their hyperplanes fan out with the distance from where they meet, so a short line along
    the better row's normal far out (``|x| ~ TWIN_REACH T``) crosses them further apart; the
    gradients of the three regions there, with each coordinate step kept inside its region,
    give both rows. True when a pair was measured.
    """
    ev, model = run.evidence, run.model
    if len(ev.jumps) < 2:
        return False
    lines = np.array([j.line for j in ev.jumps])
    ts = np.array([j.t for j in ev.jumps])
    close = np.abs(ts[:, None] - ts[None, :]) <= TWIN_CLOSE * run.t_max
    close &= (lines[:, None] == lines[None, :]) & ~np.eye(len(ts), dtype=bool)
    est = estimates.unit_error(run, by_size=False)
    w_all = model.rows[:, :-1]
    # twins, not two units that happen to kink close on this line: their rows agree, or
    # one of them could not be measured in the thin region between
    alike = ((np.abs(w_all @ w_all.T) > TWIN_ALIKE_COS)
             | (np.maximum(est[:, None], est[None, :]) > TWIN_IMPRECISE))
    pairs = [(a, b) for a, b in zip(*np.nonzero(np.triu(close & alike)))
             if ev.pair_id(a, b) not in ev.twins_done]
    measured = False
    for a, b in pairs[:TWIN_PAIRS]:
        ev.twins_done.add(ev.pair_id(a, b))
        new = _far_pair(run, a, b, est, max_rounds)
        if new is not None:
            ev.replace_jump(a, new[0])
            ev.replace_jump(b, new[1])          # the next fit restarts from the jumps
            measured = True
            run.note(Kind.TWINS_SEPARATED,
                     f"units {a} and {b} are twins (their kinks nearly coincide); "
                     f"measured again {new[2]:.2g} apart far out", units=(int(a), int(b)))
    return measured


def _far_pair(run: Run, a: int, b: int, est: np.ndarray, max_rounds: int):
    """Both rows of twins ``a`` and ``b`` from a short line far out: ``(jump_a, jump_b, gap)``
    or ``None`` when no try crossed both."""
    rows = run.model.rows
    keep = a if est[a] <= est[b] else b
    w, b0 = rows[keep, :-1], rows[keep, -1]
    n = w / np.linalg.norm(w)
    reach = TWIN_REACH * run.t_max
    tau = TWIN_SPAN * reach
    for _ in range(TWIN_TRIES):                # the fan opens along an unknown direction
        xr = run.rng.normal(size=run.d)
        xr *= reach / np.linalg.norm(xr)
        x0 = xr - (w @ xr + b0) / (w @ w) * w
        run.lines += 1
        res = search.search_lines(
            run.query("search"), x0[None], n[None], tau, delta=1e-6 * tau,
            min_delta=1e-12 * tau, noise_factor=run.tol.rel / search.EPS,
            max_rounds=max_rounds)[0]
        if res.t.size >= 2:
            break
    else:
        return None
    t1, t2 = np.sort(res.t[np.argsort(np.abs(res.t))[:2]])
    bounds = np.array([-tau, t1, t2, tau])
    mids = 0.5 * (bounds[:-1] + bounds[1:])
    base = x0 + mids[:, None] * n
    others = run.model.geometry().without([a, b])
    steps = []
    for r, mid in enumerate(mids):
        st = others.safe_steps(base[r], run.step_cap)
        room = min(mid - bounds[r] if r else np.inf,
                   bounds[r + 1] - mid if r < 2 else np.inf)
        with np.errstate(divide="ignore"):
            limit = TWIN_ROOM * room / np.abs(n)
        steps.append(np.sign(st) * np.minimum(np.abs(st), limit))
    regions, complete = recover.measure_points(
        run.query("gradients"), base, np.array(steps), np.full(3, run.lines - 1),
        bounds[:-1], bounds[1:], remaining=run.remaining)
    if not complete:
        raise run.out_of_budget("while separating twins")
    run.evidence.add_regions(regions)
    aff = regions.affine()
    noise = region_noise(run, regions)
    new = recover.jumps_to_rows(aff[:2], aff[1:], n, run.lines - 1, np.array([t1, t2]),
                                4 * np.maximum(noise[:2], noise[1:]))
    if len(new) == 2 and min(abs(j.row[:-1] @ n) for j in new) > TWIN_ALIKE_COS:
        return new[0], new[1], t2 - t1
    return None


def merge_twins(run: Run) -> bool:
    """Twins that a far line could not tell apart (hyperplanes parallel and closer than
    float64 resolves) are kept as one unit: the worse-measured jump is dropped and the refit
    gives the survivor both output weights. True when a pair was merged."""
    ev = run.evidence
    est = estimates.unit_error(run, by_size=False)
    for pair in sorted(ev.twins_done):
        if pair in ev.twins_merged:
            continue
        ev.twins_merged.add(pair)
        a, b = ev.pair_index(pair)
        ev.drop_jump(a if est[a] > est[b] else b)
        run.note(Kind.TWINS_MERGED,
                 f"units {a} and {b} could not be separated at this precision (twin "
                 "hyperplanes closer than float64 resolves); kept as one unit carrying both "
                 "output weights", units=(int(a), int(b)))
        return True
    return False


def name_rank_two(run: Run) -> None:
    """Notes each unit of the final model whose jump is not rank one (``Model.rank_two``
    above ``RANK_TWO``): two neurons whose hyperplanes this precision cannot separate (twins
    merged at their first kink, never measured apart) but whose output weights differ, which
    one unit carries together. The network stays what the checks verified; this names where
    its error comes from (combined 40-6-4 s29: a pair 1e-7 apart, 8e-10 of the range)."""
    model = run.model
    if model.rank_two is None or model.rank_two.shape != (model.size,):
        return
    units = np.flatnonzero(model.rank_two > RANK_TWO)
    for i in units:
        run.note(Kind.TWINS_MERGED,
                 f"unit {int(i)} carries two neurons this precision cannot separate: its jump "
                 f"is rank two ({model.rank_two[i]:.3g} times its noise), so their output "
                 "weights differ while their hyperplanes coincide to the precision of the "
                 "answers", units=(int(i),))


def resolve_singular(run: Run, rows: np.ndarray, coef: np.ndarray) -> bool:
    """The sign system of the fit ``(rows, coef)`` (one per jump) is singular, though the layer
    need not be expansive: drop units with nil output weights, or else merge the two most
    nearly parallel rows. True when a jump was dropped (the fit then restarts)."""
    return _drop_void_units(run, coef) or _merge_parallel(run, rows)


def _drop_void_units(run: Run, coef: np.ndarray) -> bool:
    """Drops the jumps of units whose fitted output coefficients are below ``VOID_TOL`` of the
    largest: no answer moves with them (a kink measured across a region too thin to give a
    row: trained 784-1024-10 with ``input_scale=0.3`` took two, at 2e-10 of the largest, and
    their rows left the sign system singular)."""
    if not len(coef):
        return False
    size = np.linalg.norm(coef, axis=1)
    void = np.flatnonzero(size < VOID_TOL * size.max())
    for i in void[::-1]:
        run.evidence.drop_jump(int(i))
    if void.size:
        run.note(Kind.VOID_DROPPED, f"{void.size} units with nil output weights (below "
                 f"{VOID_TOL:.0e} of the largest) dropped as spurious",
                 units=tuple(int(i) for i in void))
    return bool(void.size)


def _merge_parallel(run: Run, rows: np.ndarray) -> bool:
    """Drops the jump of one of the two most nearly parallel rows (``1 - |cos| <=
    PARALLEL_TOL``); the refit gives the other both output weights."""
    if rows.shape[0] < 2:
        return False
    w = rows[:, :-1] / np.linalg.norm(rows[:, :-1], axis=1)[:, None]
    cos = np.abs(w @ w.T) - 2 * np.eye(w.shape[0])
    a, b = np.unravel_index(np.argmax(cos), cos.shape)
    if cos[a, b] < 1 - PARALLEL_TOL:
        return False
    a, b = min(a, b), max(a, b)
    run.evidence.drop_jump(b)
    run.note(Kind.PARALLEL_MERGED,
             f"units {a} and {b} have parallel rows (1 - |cos| = {1 - cos[a, b]:.1e}) that this "
             "precision cannot separate; kept as one unit carrying both output weights",
             units=(int(a), int(b)))
    return True
