"""Stage 6 (float64 answers): once verified, measure the least precise units again.

Three steps, each asked of the verified model's geometry:

* :func:`anchor`: locate each unit's kink near the origin to pin its bias;
* :func:`precision_line`: when hundreds of units are imprecise (trained victims of 512 units
  and more), one more line near the origin measures them all again with steps that cross no
  boundary;
* :func:`polish`: the least precise units get two regions each, next to their own boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import estimates, recover
from .context import Run
from .fit import with_anchors
from .geometry import step_rms
from .measure import search_line
from .results import Kind

# a kink is located from answers at these offsets (times tau) along the unit's normal
ANCHOR_OFFSETS = np.array([-1.0, -0.5, 0.5, 1.0])
# ... when its slope jump stands this many noise levels above the noise
ANCHOR_SIGNIFICANCE = 64
# a precision line's kink explains a unit's prediction within max(this * t_max, 8 delta)
PRECISION_MATCH = 1e-7


@dataclass(frozen=True)
class PolishConfig:
    """Tuning of the polish and of the precision line.

    Attributes:
        polish_tol: estimated standard error of a normalised row above which the unit is
            measured again next to its own hyperplane once the network is verified.
        polish_frac: those measurements spend at most this fraction of the queries so far,
            plus ``polish_small_frac`` more on units whose output coefficients are below
            ``polish_small`` of the largest (a unit with small output weights reads its row
            from a small jump: a trained 784-128-1 left such a unit, 2.4e-4 of the largest and
            8th in line, at 4.8e-9 with 0.10 alone).
        polish_small_frac: see ``polish_frac``.
        polish_small: see ``polish_frac``.
        precision_est: once verified, a unit whose error estimate (the polish's) exceeds this
            counts as imprecise; see :func:`precision_line`.
        precision_share: more imprecise units than this share of all (and than the polish can
            take, and than ``precision_min``) call for a precision line near the origin before
            the polish.
        precision_min: see ``precision_share``. A precision line costs a search and about one
            region per imprecise unit: trained even/odd 784-64-1 and 784-128-1 (41 and 74
            imprecise units) meet the 1e-9 bar without one at 1.25 queries per parameter, and
            would pay 2.1 with one.
        polish_radius: spread (in units of ``input_scale``) of the random points projected
            onto a hyperplane to place them.
        polish_tries: candidate points per unit; the one farthest from other hyperplanes wins.
        again_above: once polished and checked, check answers that still miss the network by
            more than this share of their range (the black-box output bound) call for a second
            polish, of up to ``again_frac`` of the queries so far.
        again_frac: see ``again_above``.
    """

    polish_tol: float = 3e-11
    polish_frac: float = 0.1
    polish_small_frac: float = 0.03
    polish_small: float = 1e-2
    precision_est: float = 1e-6
    precision_share: float = 1 / 3
    precision_min: int = 200
    polish_radius: float = 0.1
    polish_tries: int = 8
    again_above: float = 6e-10
    again_frac: float = 0.5

    def __post_init__(self):
        for name in ("polish_tol", "polish_frac", "polish_small_frac", "polish_small",
                     "precision_est", "precision_share", "polish_radius", "again_above",
                     "again_frac"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)!r}")
        for name, low in (("precision_min", 0), ("polish_tries", 1)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise ValueError(f"{name} must be an int >= {low}, got {getattr(self, name)!r}")


def anchor(run: Run, cfg: PolishConfig) -> bool:
    """Locates each unit's kink on a short line along its normal near the origin.

    A bias fitted from regions far out is the row's error extrapolated back to the origin; a
    kink located near the origin pins it instead. Four answers per unit, two on each side at
    ``+-tau/2, +-tau`` where the model puts no other boundary within ``2 tau``; the two lines
    meet at the kink to about ``eps |f| / |slope jump|``. Units whose jump is lost in the noise
    or whose kink lands off the short line keep their fitted bias. True when answers were spent.
    """
    model = run.model
    h = model.size
    if h == 0 or not run.room(4 * h):
        return False
    geo = model.geometry()
    w = model.rows[:, :-1]
    centre, taus = np.zeros((h, run.d)), np.zeros(h)
    for i in range(h):
        for t in range(cfg.polish_tries):
            xs, tau = geo.boundary_point(i, _near_origin(run, cfg, t == 0), run.input_scale)
            if tau > taus[i]:
                centre[i], taus[i] = xs, tau
    offs = ANCHOR_OFFSETS
    pts = centre[:, None, :] + (taus[:, None] * offs)[:, :, None] * w[:, None, :]
    y = run.query("gradients")(pts.reshape(-1, run.d)).reshape(h, 4, -1)
    s_left = (y[:, 1] - y[:, 0]) / (0.5 * taus[:, None])
    s_right = (y[:, 3] - y[:, 2]) / (0.5 * taus[:, None])
    jump = s_left - s_right                                 # (h, k)
    rhs = y[:, 2] - y[:, 1] - 0.5 * taus[:, None] * (s_left + s_right)
    noise = run.tol(np.abs(y).max((1, 2))) / np.maximum(taus, 1e-300)
    ok = (np.abs(jump).max(1) > ANCHOR_SIGNIFICANCE * noise) & (taus > 0)
    t_star = np.where(ok, (jump * rhs).sum(1) / np.maximum((jump ** 2).sum(1), 1e-300), 0.0)
    ok &= np.abs(t_star) < 0.5 * taus
    run.model = with_anchors(model, {i: centre[i] + t_star[i] * w[i] for i in np.flatnonzero(ok)})
    run.evidence.add_anchor_answers(pts.reshape(-1, run.d), y.reshape(4 * h, -1))
    if (~ok).any():
        run.note(Kind.BIAS_NOT_ANCHORED, f"{int((~ok).sum())} units kept their fitted bias "
                 "(kink not located near the origin)", units=int((~ok).sum()))
    return True


def _near_origin(run: Run, cfg: PolishConfig, origin: bool) -> np.ndarray:
    """The origin, or a random point near it (spread ``polish_radius * input_scale``)."""
    if origin:
        return np.zeros(run.d)
    return run.rng.normal(size=run.d) * run.input_scale * cfg.polish_radius


def polish(run: Run, cfg: PolishConfig, precision_missed) -> bool:
    """Measures the least precise units again, on both sides of their own boundary.

    A unit's row is only as precise as the regions next to its kink: a kink far out on the
    line (large answers, and a bias extrapolated back to the origin) or squeezed between others
    (small steps) leaves it noisy. Each flagged unit (estimated error above the polish
    tolerance) gets two regions at ``x* -+ tau n``, with ``x*`` a point of its boundary near
    the origin, ``n`` its normal and ``tau`` half the distance to the nearest other boundary
    along ``n``. Each coordinate probe takes the sign and the largest step (up to ``step_max``)
    that keeps it inside the region by the now-verified model, so no crossing term is needed.
    After a precision line only the imprecise units it did not cross (``precision_missed``,
    ``None`` when there was none) are flagged. True when anything was measured.
    """
    anchored = anchor(run, cfg)
    model = run.model
    est = estimates.unit_error(run)
    order = [int(i) for i in np.argsort(-est) if est[i] > run.tol.polish_tol]
    if precision_missed is not None:   # the precision line measured the others again
        order = [i for i in order if i in precision_missed]
    per = 2 * recover.region_queries(run.d)
    room = np.inf if run.remaining is None else run.remaining - run.check_reserve
    spent = run.oracle.queries - run.stage["precision"]   # the precision line's aside
    first = int(min(cfg.polish_frac * spent, room)) // per
    extra = int(min(cfg.polish_small_frac * spent, room - first * per)) // per
    size = np.linalg.norm(model.coef, axis=1)
    small = [i for i in order[first:] if size[i] < cfg.polish_small * size.max()]
    order = order[:max(first, 0)] + small[:max(extra, 0)]
    if not order:
        return anchored
    geo = model.geometry()
    w = geo.w
    cap = run.step_cap
    base, steps = [], []
    for i in order:
        best = (-1.0, None, None)
        for _ in range(cfg.polish_tries):
            xs, tau = geo.boundary_point(i, _near_origin(run, cfg, False), cap)
            pts = np.array([xs - tau * w[i], xs + tau * w[i]])
            st = np.array([geo.safe_steps(p, cap) for p in pts])
            score = step_rms(st).min()
            if score > best[0]:
                best = (score, pts, st)
        base.append(best[1])
        steps.append(best[2])
    base = np.concatenate(base)
    n = base.shape[0]
    regions, complete = recover.measure_points(
        run.query("gradients"), base, np.concatenate(steps), np.full(n, -1),
        np.zeros(n), np.zeros(n), remaining=run.remaining)
    run.evidence.add_regions(regions)
    run.note(Kind.POLISHED, f"polished {len(order)} units ({regions.size} regions)",
             units=len(order), regions=regions.size)
    if not complete:
        raise run.out_of_budget("while polishing")
    return True


def precision_line(run: Run, cfg: PolishConfig, max_rounds: int, step_frac: float,
                   use_jit) -> Optional[tuple[set, bool]]:
    """Measures the regions next to imprecise units' kinks again on a line near the origin.

    Once the network is verified, a unit counts as imprecise when the polish's error estimate
    (:func:`fidelity.estimates.unit_error`, conservative: actual errors are 1e-4..1e-2 of it)
    exceeds ``precision_est``. Such units are left to :func:`polish` unless there are more than
    it can take, more than ``precision_share`` of all units and more than ``precision_min``
    (trained victims, whose output weights are mostly 1-5% of the largest: 295 (58%) and 817
    (80%) units of trained 784-512-10 and 784-1024-10, against 20% of random 784-1024-10).
    Then the first line's own noise is the cause: its regions lie between dense kinks, so its
    coordinate steps are tiny, and the noise grows about as h^2 (answers sum ~h terms, kinks
    lie ~1/h apart). One more line then serves them all at about one region each: it passes
    within ``polish_radius`` of the origin (small answers), and each of its regions next to an
    imprecise unit's kink takes the crossing-free coordinate steps of the verified model
    (median 25x larger than the first line's on trained 784-1024-10).

    Returns ``None`` when no line was searched, else the imprecise units the line did not cross
    (left to the polish) and whether any region was measured. The caller runs it at most once
    per extraction (the estimate does not shrink with it).
    """
    model = run.model
    h = model.size
    if not h:
        return None
    imprecise = np.flatnonzero(estimates.unit_error(run) > cfg.precision_est)
    per = 2 * recover.region_queries(run.d)
    capacity = int(cfg.polish_frac * run.oracle.queries) // per
    if imprecise.size <= max(capacity, cfg.precision_share * h, cfg.precision_min):
        return None
    x0, v = run.new_line(radius=cfg.polish_radius)
    res = search_line(run, x0, v, max_rounds=max_rounds, use_jit=use_jit)
    geo = model.geometry()
    pred = geo.select(imprecise).kinks(x0, v)
    tol = max(PRECISION_MATCH * run.t_max, 8 * run.tol.delta)
    near = np.clip(np.searchsorted(res.t, pred), 1, max(res.t.size - 1, 1)) if res.t.size \
        else np.zeros(0, int)
    kinks, missed = [], set()
    for u, p, j in zip(imprecise, pred, near):
        cand = [i for i in (j - 1, j) if 0 <= i < res.t.size]
        best = min(cand, key=lambda i: abs(res.t[i] - p)) if cand else None
        if best is not None and abs(res.t[best] - p) <= tol:
            kinks.append(best)
        else:
            missed.add(int(u))
    if not kinks:
        return missed, False
    lo, hi, mid, _ = recover.plan_regions(res.t, run.t_max, step_frac, run.step_cap)
    idx = np.unique(np.concatenate([kinks, np.array(kinks) + 1]))
    base = x0 + mid[idx, None] * v
    steps = np.array([geo.safe_steps(p, run.step_cap) for p in base])
    regions, complete = recover.measure_points(
        run.query("precision"), base, steps, np.full(idx.size, run.lines - 1),
        lo[idx], hi[idx], remaining=run.remaining)
    run.evidence.add_regions(regions)
    run.note(Kind.PRECISION_LINE,
             f"{imprecise.size} of {h} units imprecise (error estimate above "
             f"{cfg.precision_est:.0e}); {len(kinks)} of their kinks measured again on a line "
             f"near the origin ({regions.size} regions)",
             imprecise=int(imprecise.size), kinks=len(kinks), regions=regions.size)
    if not complete:
        raise run.out_of_budget("on the precision line")
    return missed, True
