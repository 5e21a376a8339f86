"""Stages 1-2 on one line: search its kinks, then measure the gradients of its regions.

The search runs on the host (:func:`fidelity.search.search_lines`, batched queries) or, when the
oracle can hand over an opaque in-process JAX function, inside ``jit``
(:func:`fidelity.jitsearch.search_lines_jit`): same kinks, same rows. Each region's gradient
must reproduce the slope along the line that the search measured for free; a region that does
not (a coordinate probe crossed a hyperplane lying close to the line) is measured again with a
smaller step.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass
from typing import Callable, Optional

import jax
import numpy as np

from . import jitsearch, recover, search
from .context import Run
from .recover import Jump, Regions
from .results import Kind
from .validation import at_least, positive


# a jump whose row misses its own kink by more than this (times t_max) is measured again
# closer to the kink (clean jumps miss by 1e-12 to 1e-9 of t_max), each round CLOSER times nearer
OWN_MISS = 1e-7
CLOSER = 8.0
# ... while each round cuts the miss by this factor (a neighbour's pollution goes at once: 1e-2
# to 2e-9 in one round on a 784-32-1 generator victim; rounding far out does not move)
CLOSER_GAIN = 2.0
# ... and dropped when its best row still misses by more than this: a kink far out, where the
# answers' rounding drowns a small unit's jump (a 784-32-1 victim took a row 8e-2 off for one,
# missing by 2.4e-3; rows that miss by less, 1.8e-4 far out on a 784-32-10, are kept rough and
# polished later)
DROP_MISS = 1e-3
CLOSER_ROUNDS = 3


@dataclass(frozen=True)
class MeasureConfig:
    """Tuning of the search and of the gradient measurements.

    Attributes:
        slope_step: relative step ``delta / T`` for the search's one-sided slopes.
        noise_factor: float64 answers are trusted to ``noise_factor * eps * |f|``.
        max_rounds: bound on batched search rounds per line.
        step_frac: gradient step as a fraction of the region's half-width.
        step_max: cap on the gradient step (in units of ``input_scale``).
        remeasure_rounds: bound on re-measuring a region whose gradient disagrees with the
            slope along the line found by the search.
        remeasure_shrink: step reduction for such a region.
    """

    slope_step: float = 1e-6
    noise_factor: float = 256.0
    max_rounds: int = 200
    step_frac: float = 0.02
    step_max: float = 1.0
    remeasure_rounds: int = 3
    remeasure_shrink: float = 16.0

    def __post_init__(self):
        positive(self, "slope_step", "noise_factor", "step_frac", "step_max",
                 "remeasure_shrink")
        at_least(self, 1, "max_rounds")
        at_least(self, 0, "remeasure_rounds")
        if self.step_frac > 1:
            raise ValueError("step_frac is a fraction of a region's half-width: at most 1")


def search_line(run: Run, x0: np.ndarray, v: np.ndarray, *, max_rounds: int,
                use_jit: Optional[bool], coarse: float = 1.0,
                hints: Optional[np.ndarray] = None) -> search.LineKinks:
    """The kinks of the victim on the line ``x0 + t v``, ``|t| <= t_max``.

    ``hints``: where a model predicts kinks on it (see :func:`fidelity.search.search_lines`);
    the jitted search does without them (same kinks, more rows).

    ``coarse`` multiplies the slope step (and the resolution): a one-sided slope from a step
    ``delta`` is trusted to ``noise / delta``, so kinks whose slope jump is below that are
    taken for noise; a step ``coarse`` times longer sees jumps ``coarse`` times smaller.
    """
    tol = run.tol
    opts = dict(delta=tol.delta * coarse, min_delta=tol.min_delta * coarse,
                noise_factor=tol.rel / search.EPS,
                noise_abs=tol.abs, max_rounds=max_rounds)
    fn = run.oracle.jax_function()
    if use_jit is None:
        use_jit = jax.default_backend() != "cpu"
    if use_jit and fn is not None:
        # slots for the kinks: what the model knows of, grown by the search when short
        hint = 2 * max(run.model.size, len(run.evidence.jumps), 8)
        lines, rows, complete = jitsearch.search_lines_jit(
            fn, x0[None], v[None], run.t_max, row_budget=run.remaining, capacity=hint, **opts)
        run.oracle.charge(rows)
        run.stage["search"] += rows
        if not complete:
            raise run.out_of_budget("while searching")
        res = lines[0]
    else:
        res = search.search_lines(run.query("search"), x0[None], v[None], run.t_max,
                                  hints=None if hints is None else [hints], **opts)[0]
    if res.unresolved:
        run.note(Kind.UNRESOLVED, f"line {run.lines - 1}: {res.unresolved} intervals left "
                 "unresolved after max_rounds", line=run.lines - 1, intervals=res.unresolved)
    return res


def measure_line(run: Run, cfg: MeasureConfig, x0: np.ndarray, v: np.ndarray,
                 kinks: search.LineKinks, wanted_kinks=None,
                 keep: Optional[Callable[[list[Jump]], list[Jump]]] = None) -> int:
    """Measures regions on the current line (all of them, or those next to ``wanted_kinks``)
    and adds them and the jumps across those kinks to the evidence; ``keep`` filters the jumps
    first. Returns the number of jumps added.

    When the budget runs out the jumps measured so far are added unfiltered (a partial result
    is fitted from all of them), then :class:`~fidelity.errors.QueryBudgetExceeded` is raised.
    """
    kinks_t = kinks.t
    lo, hi, mid, step = recover.plan_regions(kinks_t, run.t_max, cfg.step_frac, run.step_cap)
    idx = np.arange(lo.size)
    if wanted_kinks is not None:
        idx = np.unique(np.concatenate([wanted_kinks, wanted_kinks + 1]))
    line = run.lines - 1
    query = run.query("gradients")
    regions, complete = recover.measure_regions(
        query, x0, v, line, lo[idx], hi[idx], mid[idx], step[idx], remaining=run.remaining)
    if regions.size == 0:        # (the budget left no room for one region: nothing to add)
        if not complete:
            raise run.out_of_budget("while measuring gradients")
        return 0
    for _ in range(cfg.remeasure_rounds):
        if not complete:
            break
        bad = _slope_mismatch(run, regions, v, kinks.slopes[idx[:regions.size]])
        if not bad.any():
            break
        sel = np.flatnonzero(bad)
        again, complete = recover.measure_regions(
            query, x0, v, line, regions.t_lo[sel], regions.t_hi[sel],
            0.5 * (regions.t_lo[sel] + regions.t_hi[sel]),
            regions.step[sel] / cfg.remeasure_shrink, remaining=run.remaining)
        if again.size:           # (none when the budget ran out first)
            regions = regions.replace(sel[:again.size], again)
    aff = regions.affine()
    noise = region_noise(run, regions)
    measured = idx[:regions.size]
    pos = {int(r): i for i, r in enumerate(measured)}
    kink_ids = (np.arange(kinks_t.size) if wanted_kinks is None
                else np.asarray(wanted_kinks))
    left, right, ts, nz = [], [], [], []
    for kid in kink_ids:
        if int(kid) in pos and int(kid) + 1 in pos:
            a, b = pos[int(kid)], pos[int(kid) + 1]
            left.append(aff[a]); right.append(aff[b]); ts.append(kinks_t[kid])
            nz.append(4 * max(noise[a], noise[b]))
    jumps = []
    if left:
        jumps = recover.jumps_to_rows(np.array(left), np.array(right), v, line,
                                      np.array(ts), np.array(nz))
    used, close = None, None
    if complete and run.nf.float64:
        jumps, complete, used, close = _closer(run, cfg, x0, v, kinks_t, jumps, regions,
                                               aff, noise)
    run.evidence.add_regions(regions, used)
    if close is not None:
        run.evidence.add_regions(close)
    if not complete:
        run.evidence.add_jumps(jumps)
        raise run.out_of_budget("while measuring gradients")
    if keep is not None:
        jumps = keep(jumps)
    run.evidence.add_jumps(jumps)
    return len(jumps)


def own_miss(row: np.ndarray, x0: np.ndarray, v: np.ndarray, t: float) -> float:
    """How far along the line ``x0 + t v`` the hyperplane ``row`` passes from its kink at
    ``t`` (the distance to its crossing)."""
    slope = abs(float(row[:-1] @ v))
    z = abs(float(row[:-1] @ (x0 + t * v) + row[-1]))
    return z / slope if slope > 0 else np.inf


def _closer(run: Run, cfg: MeasureConfig, x0: np.ndarray, v: np.ndarray, kinks_t: np.ndarray,
            jumps: list[Jump], regions: Regions, aff: np.ndarray, noise: np.ndarray
            ) -> tuple[list[Jump], bool, np.ndarray, Optional[Regions]]:
    """Jumps whose row misses its own kink, measured again closer to it.

    A region holding a kink too small for the search (output weights ~1e-6 of the largest
    behind an offset) gives a gradient that belongs to one side of that kink only: the jump
    across its measured neighbour then adds the small unit's, and its row no longer passes
    through the neighbour's kink (rows 5e-4 off on the generator's 20-8-1 victims). Such a
    jump is measured again from two regions beside its kink, ``CLOSER`` times nearer each
    round (at most ``CLOSER_ROUNDS``), while its row misses by more than ``OWN_MISS t_max``;
    the best measurement is kept. A first region whose gradient differs from the close one
    beside it lies across the small kink: the fit would give it the wrong units, so it is
    left out of the fits (with the rounds' regions but the best). A jump whose best row still
    misses by more than ``DROP_MISS t_max`` is dropped, and the regions beside its kink are
    left out too. ``aff`` and ``noise`` are the regions' affine maps and noise levels, as
    measured. Returns the jumps, whether the budget held, which of ``regions`` the fits keep,
    and the close regions (or None)."""
    out, keep, extra = [], np.ones(regions.size, bool), []
    for n, j in enumerate(jumps):
        best, miss, close = j, own_miss(j.row, x0, v, j.t), None
        k = int(np.searchsorted(kinks_t, j.t))
        prev = kinks_t[k - 1] if k > 0 else -run.t_max
        nxt = kinks_t[k + 1] if k + 1 < kinks_t.size else run.t_max
        gap = min(j.t - prev, nxt - j.t)
        for r in range(CLOSER_ROUNDS):
            if miss <= OWN_MISS * run.t_max:
                break
            if not run.room(2 * recover.region_queries(run.d)):
                return out + [best] + jumps[n + 1:], False, keep, _joined(extra, close)
            g = gap * CLOSER ** -(r + 1)
            lo, hi = np.array([j.t - g, j.t]), np.array([j.t, j.t + g])
            step = np.minimum(cfg.step_frac * 0.5 * g, run.step_cap)
            again, complete = recover.measure_regions(
                run.query("gradients"), x0, v, j.line, lo, hi, 0.5 * (lo + hi),
                np.full(2, step), remaining=run.remaining)
            if not complete:
                return out + [best] + jumps[n + 1:], False, keep, _joined(extra, close)
            near = again.affine()
            row = recover.jumps_to_rows(near[:1], near[1:], v, j.line, np.array([j.t]),
                                        np.array([4 * region_noise(run, again).max()]))
            gained = own_miss(row[0].row, x0, v, j.t) if row else np.inf
            if gained < miss:
                best, close = row[0], again
            if gained > miss / CLOSER_GAIN:
                miss = min(miss, gained)
                break                 # not a neighbour's pollution: rounding (a kink far out)
            miss = gained
        beside = [(side, i) for side, at in ((0, regions.t_hi == j.t), (1, regions.t_lo == j.t))
                  for i in np.flatnonzero(at & (regions.line == j.line))]
        if miss <= DROP_MISS * run.t_max:
            out.append(best)
            if close is not None:
                extra.append(close)
                near, nz = close.affine(), region_noise(run, close)
                for side, i in beside:
                    if np.abs(aff[i][:, :-1] - near[side][:, :-1]).max() > \
                            4 * max(noise[i], nz[side]):
                        keep[i] = False
        else:
            # no row for this kink (the answers' rounding, far out on the line): the jump and
            # the regions beside its kink are left out of the fits (kept, a far-out pair of
            # them sent a 784-32-1 generator victim's crossing corrections moving rows by 0.17
            # a pass); other lines find the unit
            for _, i in beside:
                keep[i] = False
            run.note(Kind.JUMP_DROPPED,
                     f"line {j.line}: the kink at t = {j.t:.6g} gave no row through itself "
                     f"(misses it by {miss / run.t_max:.1e} of the line); left to other lines",
                     line=j.line, t=float(j.t), miss=miss / run.t_max)
    return out, True, keep, _joined(extra, None)


def _joined(extra: list[Regions], close: Optional[Regions]) -> Optional[Regions]:
    parts = extra + ([close] if close is not None else [])
    return Regions.concat(parts) if parts else None


# a diagonal probe that disagrees with its region's differences by more than this many times
# the answers' noise crossed a hyperplane (its rounding reading is not used)
COMMON_MODE_TOL = 64.0


def common_mode_tol(run: Run, regions: Regions) -> np.ndarray:
    """``(R,)`` the largest shared rounding of a region's gradient entries that
    :func:`fidelity.recover.common_mode` takes out."""
    return COMMON_MODE_TOL * run.nf.sigma(regions.scale())


def region_noise(run: Run, regions: Regions) -> np.ndarray:
    """``(R,)`` what each region's gradient entries are trusted to."""
    return run.tol(np.abs(regions.f_probe).max((1, 2))) / regions.step_rms()


def merge_kinks(fine: search.LineKinks, coarse: search.LineKinks,
                close: float) -> search.LineKinks:
    """The kinks of ``fine`` and the verified ones of ``coarse`` (the same line searched with
    a longer slope step) farther than ``close`` from all of them; the pieces next to an added kink get
    NaN slopes (unknown)."""
    if not coarse.t.size:
        return fine
    far = coarse.verified.copy()
    if fine.t.size:
        far &= np.abs(coarse.t[:, None] - fine.t[None, :]).min(1) > close
    if not far.any():
        return fine
    t = np.concatenate([fine.t, coarse.t[far]])
    ok = np.concatenate([fine.verified, coarse.verified[far]])
    added = np.concatenate([np.zeros(fine.t.size, bool), np.ones(int(far.sum()), bool)])
    order = np.argsort(t)
    t, ok, added = t[order], ok[order], added[order]
    # piece j lies between kinks j-1 and j: keep the fine slope of a piece bounded by fine
    # kinks only, in the fine piece that contains it
    piece = np.searchsorted(fine.t, np.concatenate([[-np.inf], t]), side="right")
    piece = np.minimum(piece, fine.slopes.shape[0] - 1)
    slopes = fine.slopes[piece].copy()
    near_added = np.concatenate([[False], added]) | np.concatenate([added, [False]])
    slopes[near_added] = np.nan
    return dataclasses.replace(fine, t=t, verified=ok, slopes=slopes,
                               unresolved=fine.unresolved + coarse.unresolved)


def _slope_mismatch(run: Run, regions: Regions, v: np.ndarray, slopes) -> np.ndarray:
    g = regions.affine()[:, :, :-1] @ v                      # (R, k)
    noise = run.tol(regions.scale())
    tol = noise * (4 * np.sqrt(run.d) / regions.step_rms() + 8 / run.tol.delta)
    err = np.abs(g - slopes).max(1)
    return np.where(np.isnan(err), False, err > tol)
