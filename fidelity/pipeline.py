"""The extraction driver: oracle -> search -> recover -> solve -> refine -> checked network."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import jax
import numpy as np

from . import noise, recover, refine, regress, search, solve
from .errors import FidelityError, QueryBudgetExceeded, UnsupportedArchitecture
from .network import ReLUNetwork
from .oracle import Oracle

log = logging.getLogger("fidelity")


@dataclass(frozen=True)
class ExtractConfig:
    """Options of :func:`extract`; every loop is bounded by one of them.

    Attributes:
        line_length: half-length ``T`` of each search line; ``None`` means
            ``100 * sqrt(d) * input_scale`` (a unit's kink lies at ``~ sqrt(d)`` times a Cauchy
            variable from the line's centre, so this catches all but ~1/150 of them per line).
        input_scale: standard deviation of the random line origins.
        slope_step: relative step ``delta / T`` for the search's one-sided slopes.
        noise_factor: answers are trusted to ``noise_factor * eps * |f|``.
        max_rounds: bound on batched search rounds per line.
        step_frac: gradient step as a fraction of the region's half-width.
        step_max: cap on the gradient step (in units of ``input_scale``).
        remeasure_rounds: bound on re-measuring a region whose gradient disagrees with the
            slope along the line found by the search.
        remeasure_shrink: step reduction for such a region.
        refine_iters: bound on crossing-correction passes (no queries).
        refine_stop: stop refining when no normalised row moves more than this (or than a
            tenth of its own standard error).
        max_lines: bound on lines (the first included).
        check_points: answers compared with the model on each check line.
        patience: consecutive clean check lines needed to stop.
        check_tol: relative tolerance of those comparisons.
        sign_tol: ``|rho - round(rho)|`` below which a row's sign is decided.
        crossing_rel_error: assumed relative error of the rows used for crossing corrections
            (weights regions by how many large crossings their probes make).
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
            counts as imprecise; see :meth:`_Run.precision_line`.
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
        jit_search: run the critical-point search inside ``jax.jit`` (see
            :mod:`fidelity.jitsearch`; same kinks and row counts as the host search) when the
            oracle wraps a ReLUNetwork in-process; ``None``: only where JAX's default backend is
            not the CPU (on a CPU the host-driven search is faster and compiles nothing).
        detect_noise: measure the noise floor of the answers first (48 queries) and, when it
            is above float64 rounding (a float32 or rounding victim), derive steps, tolerances
            and weights from it; False assumes float64 answers.
        noisy_sign_tol: ``sign_tol`` used instead when the answers are noisier than float64.
        noisy_check_tol: check tolerance of the finite-difference model when the answers are
            noisy (it only has to show that no unit is missing); the regressed model is then
            checked against ``max(check_tol, 64 sigma / |f|)``.
        regress_factor: noisy answers: the whole network is fitted by Gauss-Newton to the
            answers at ``regress_factor * P / k`` random points (``P`` parameters, ``k``
            outputs); see :mod:`fidelity.regress`.
        noisy_fit_rms: a noisy extraction is verified only if the regression's weighted RMS
            residual (1 at the noise floor) is at most this.
    """

    line_length: Optional[float] = None
    input_scale: float = 1.0
    slope_step: float = 1e-6
    noise_factor: float = 256.0
    max_rounds: int = 200
    step_frac: float = 0.02
    step_max: float = 1.0
    remeasure_rounds: int = 3
    remeasure_shrink: float = 16.0
    refine_iters: int = 12
    refine_stop: float = 1e-11
    max_lines: int = 12
    check_points: int = 16
    patience: int = 2
    check_tol: float = 1e-8
    sign_tol: float = 1e-3
    crossing_rel_error: float = 1e-10
    polish_tol: float = 3e-11
    polish_frac: float = 0.1
    polish_small_frac: float = 0.03
    polish_small: float = 1e-2
    precision_est: float = 1e-6
    precision_share: float = 1 / 3
    precision_min: int = 200
    polish_radius: float = 0.1
    polish_tries: int = 8
    detect_noise: bool = True
    jit_search: Optional[bool] = None
    noisy_sign_tol: float = 0.5
    noisy_check_tol: float = 0.05
    regress_factor: float = 2.0
    noisy_fit_rms: float = 2.0


@dataclass(frozen=True)
class NeuronInfo:
    """Diagnostics of one recovered hidden unit (indices follow ``network`` rows)."""

    line: int               # the line whose kink revealed it
    t: float                # kink position on that line
    rank_ratio: float       # 2nd/1st singular value of its jump (k > 1); ~0 for one clean unit
    rho: float              # sign statistic: ~0 kept, ~1 flipped, else part of a split pair
    row_change: float       # change of its normalised row in the last refinement pass
    fit_residual: float     # weighted residual of the regions it is active in
    out_weight: float       # max |A2[:, i]| * |w_i| (its size as seen at the outputs)
    error_estimate: float   # estimated error of its normalised row and output weights:
                            # float64, the LS standard error or the crossing corrections' error
                            # (conservative: measured errors are at most 2% of it); noisy
                            # answers, the regression's calibrated estimate; mp, see mp.refine
    anchored: bool          # its bias comes from a kink located near the origin


@dataclass(frozen=True)
class Extraction:
    """What :func:`extract` returns. ``status`` is ``'ok'``, ``'partial'`` (budget ran out) or
    ``'unverified'`` (check lines still disagreed when ``max_lines`` ran out)."""

    network: Optional[ReLUNetwork]
    queries: int
    hidden_size: int
    status: str
    stage_queries: dict = field(default_factory=dict)
    neurons: tuple = ()
    lines: int = 0
    check_error: float = float("nan")   # max relative disagreement on the last check line
    notes: tuple = ()
    seconds: float = 0.0
    noise: Optional[noise.NoiseFloor] = None   # the answers' measured noise floor

    @property
    def error_estimate(self) -> float:
        """Overall confidence: the largest per-unit error estimate (normalised parameters),
        NaN when there is no unit."""
        est = [n.error_estimate for n in self.neurons]
        return float(max(est)) if est else float("nan")


class ExtractionError(FidelityError):
    """The extraction ended with a bad status (``throw=True``); ``.result`` has it."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


class _Run:
    """Mutable bookkeeping of one extraction (private; the public result is frozen)."""

    def __init__(self, oracle: Oracle, cfg: ExtractConfig, seed: int,
                 progress: Optional[Callable[[dict], None]]):
        self.oracle = oracle
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.d = oracle.input_dim
        self.seed = seed
        self.t_max = cfg.line_length or 100.0 * np.sqrt(self.d) * cfg.input_scale
        self.stage = {"noise": 0, "search": 0, "gradients": 0, "regression": 0, "checks": 0,
                      "precision": 0}
        self.reg_x = np.zeros((0, self.d))          # noisy answers: the regression's points
        self.reg_y: Optional[np.ndarray] = None
        self.reg_info: Optional[regress.RegressionInfo] = None   # set while the model is regressed
        self.jumps_modelled = 0                     # noisy: jumps the current model is built from
        self.use_noise(noise.NoiseFloor.exact())
        self.regions: list[recover.Regions] = []
        self.jumps: list[recover.Jump] = []
        self.lines = 0
        self.notes: list[str] = []
        self.progress = progress
        # current model
        self.rows = np.zeros((0, self.d + 1))
        self.coef = None
        self.network: Optional[ReLUNetwork] = None
        self.unit_src = np.zeros(0, int)
        self.signs: Optional[solve.Signs] = None
        self.row_change = np.zeros(0)
        self.sigma: Optional[np.ndarray] = None
        self.twins_done: set = set()                  # pairs of units already re-measured
        self.precision_done = False                   # a precision line was measured
        self.precision_missed: set = set()            # imprecise units it did not cross
        self.twins_merged: set = set()
        self.anchors: dict[int, np.ndarray] = {}     # unit -> a point located on its hyperplane
        self.anchor_x = np.zeros((0, self.d))         # points answered while anchoring
        self.anchor_y: Optional[np.ndarray] = None
        self.fit_resid = np.zeros(0)
        self.check_error = float("nan")

    # --------------------------------------------------------------- noise floor
    def use_noise(self, nf: noise.NoiseFloor):
        """Steps, tolerances and weights for answers with noise floor ``nf``.

        Float64 answers keep the configured values. Noisier answers (sigma = a + r |f|) get
        tolerances a few sigma wide, a search step ``delta = T sqrt(sigma / |f|)`` at the far
        end of the line (the geometric middle between resolving nearby kinks and keeping the
        slopes' noise ``sigma / delta`` well below the kinks' slope jumps), a looser sign
        rounding and a loose check until the regression (:meth:`regress`) has fitted them.
        """
        cfg = self.cfg
        self.nf = nf
        if nf.float64:
            self.tol_rel, self.tol_abs = cfg.noise_factor * search.EPS, 0.0
            self.delta = cfg.slope_step * self.t_max
            self.min_delta = self.delta * 1e-6
            self.step_frac, self.polish_frac = cfg.step_frac, cfg.polish_frac
            self.sign_tol, self.check_tol = cfg.sign_tol, cfg.check_tol
            self.polish_tol = cfg.polish_tol
            return
        ratio = float(nf.sigma(nf.scale_far) / max(nf.scale_far, 1e-300))
        self.tol_rel, self.tol_abs = 3 * nf.relative, 3 * nf.absolute
        self.delta = max(cfg.slope_step, np.sqrt(ratio)) * self.t_max
        self.min_delta = self.delta * 1e-3
        self.step_frac, self.polish_frac = cfg.step_frac, cfg.polish_frac
        self.sign_tol = cfg.noisy_sign_tol
        self.check_tol = cfg.noisy_check_tol
        self.final_check_tol = max(cfg.check_tol, 64 * nf.ratio)
        self.polish_tol = max(cfg.polish_tol, ratio)

    def tolerance(self, scale):
        """What an answer of size ``scale`` is trusted to (a few noise deviations)."""
        return self.tol_abs + self.tol_rel * np.asarray(scale)

    def detect_noise(self):
        """Measures the answers' noise floor (its own random stream: the lines stay the same)."""
        if not self.cfg.detect_noise:
            return
        rng = np.random.default_rng([self.seed, 1])
        x = rng.normal(size=self.d) * self.cfg.input_scale
        v = rng.normal(size=self.d)
        v /= np.linalg.norm(v)
        nf = noise.measure(self.query("noise"), x, x + self.t_max * v, v,
                           spacing=1e-2 * self.cfg.input_scale, rng=rng)
        self.use_noise(nf)
        if not nf.float64:
            self.notes.append(
                f"answers are noisier than float64: sigma = {nf.absolute:.2g} + "
                f"{nf.relative:.2g} |f| (about {nf.bits:.0f} bits); steps "
                "and tolerances follow from it")

    # --------------------------------------------------------------- queries by stage
    def query(self, stage):
        def q(x):
            y = self.oracle(x)
            self.stage[stage] += x.shape[0]
            return y
        return q

    def report(self, **info):
        if self.progress is not None:
            self.progress(dict(queries=self.oracle.queries, budget=self.oracle.budget,
                               neurons=len(self.jumps), lines=self.lines, **info))

    def new_line(self):
        x0 = self.rng.normal(size=self.d) * self.cfg.input_scale
        v = self.rng.normal(size=self.d)
        self.lines += 1
        return x0, v / np.linalg.norm(v)

    # --------------------------------------------------------------- stages
    def search(self, x0, v) -> search.LineKinks:
        opts = dict(delta=self.delta, min_delta=self.min_delta,
                    noise_factor=self.tol_rel / search.EPS, noise_abs=self.tol_abs,
                    max_rounds=self.cfg.max_rounds)
        net = self.oracle.jax_victim()
        use_jit = self.cfg.jit_search
        if use_jit is None:
            use_jit = jax.default_backend() != "cpu"
        if use_jit and net is not None:
            from . import jitsearch
            lines, rows, complete = jitsearch.search_lines_jit(
                net, x0[None], v[None], self.t_max, row_budget=self.oracle.remaining, **opts)
            self.oracle.charge(rows)
            self.stage["search"] += rows
            if not complete:
                raise QueryBudgetExceeded(
                    f"budget of {self.oracle.budget} rows ran out while searching")
            res = lines[0]
        else:
            res = search.search_lines(self.query("search"), x0[None], v[None], self.t_max,
                                      **opts)[0]
        if res.unresolved:
            self.notes.append(f"line {self.lines - 1}: {res.unresolved} intervals left "
                              "unresolved after max_rounds")
        return res

    def measure(self, x0, v, kinks: search.LineKinks, wanted_kinks=None):
        """Measures regions on a line; ``wanted_kinks`` limits it to regions next to those.

        Each region's gradient must reproduce the slope along the line that the search
        measured for free; a region that does not (a coordinate probe crossed a hyperplane
        lying close to the line) is measured again with a step ``remeasure_shrink`` times
        smaller, at most ``remeasure_rounds`` times.
        """
        kinks_t = kinks.t
        lo, hi, mid, step = recover.plan_regions(kinks_t, self.t_max, self.step_frac,
                                                 self.cfg.step_max * self.cfg.input_scale)
        idx = np.arange(lo.size)
        if wanted_kinks is not None:
            idx = np.unique(np.concatenate([wanted_kinks, wanted_kinks + 1]))
        line = self.lines - 1
        query = self.query("gradients")
        regions, complete = recover.measure_regions(
            query, x0, v, line, lo[idx], hi[idx], mid[idx], step[idx],
            remaining=self.oracle.remaining)
        for _ in range(self.cfg.remeasure_rounds):
            bad = self._slope_mismatch(regions, v, kinks.slopes[idx[:regions.size]])
            if not bad.any() or not complete:
                break
            sel = np.flatnonzero(bad)
            again, complete = recover.measure_regions(
                query, x0, v, line, regions.t_lo[sel], regions.t_hi[sel],
                0.5 * (regions.t_lo[sel] + regions.t_hi[sel]),
                regions.step[sel] / self.cfg.remeasure_shrink, remaining=self.oracle.remaining)
            regions = regions.replace(sel[:again.size], again)
        self.regions.append(regions)
        aff = regions.affine()
        noise = self.tolerance(np.abs(regions.f_probe).max((1, 2))) / regions.step_rms()
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
        if left:
            self.jumps += recover.jumps_to_rows(np.array(left), np.array(right), v, line,
                                                np.array(ts), np.array(nz))
        if not complete:
            raise QueryBudgetExceeded(
                f"budget of {self.oracle.budget} rows ran out while measuring gradients")

    def _slope_mismatch(self, regions: recover.Regions, v, slopes) -> np.ndarray:
        g = regions.affine()[:, :, :-1] @ v                      # (R, k)
        noise = self.tolerance(regions.scale())
        tol = noise * (4 * np.sqrt(self.d) / regions.step_rms() + 8 / self.delta)
        err = np.abs(g - slopes).max(1)
        return np.where(np.isnan(err), False, err > tol)

    def _weights(self, regions: recover.Regions, exposure: Optional[np.ndarray]) -> np.ndarray:
        """Inverse noise per region: rounding of the answers, plus the crossing terms' error.

        (A float64 answer is rounded to the size of the terms it sums, ``sum_j |a_j|
        relu(z_j)``, 3-4x |f| at trained 784-1024-10. Weights from that size calibrate the LS
        errors 4x better there, but did not make rows more precise, and they turned the
        ``parallel`` twins of ``benchmarks/precision.py`` from 'unverified' into a verified
        network with 37 units for 32; so the weights keep |f|.)
        """
        noise = 2 * self.nf.sigma(regions.scale()) / regions.step_rms()
        if exposure is not None:
            noise = noise + self.cfg.crossing_rel_error * exposure
        return 1.0 / noise

    def fit(self, final: bool = False):
        """Unsigned least squares over every region, signs, output layer, refinement.

        Fits before the polish only have to pass the check lines: they refine at most
        ``refine_iters // 2`` passes and solve the biases with the gradients' weights.
        """
        regions = recover.Regions.concat(self.regions)
        weight = self._weights(regions, None)
        bias_scale = 1.0 + np.linalg.norm(regions.base, axis=1) if final else None
        passes = self.cfg.refine_iters if final else self.cfg.refine_iters // 2
        if not self.jumps:
            self.rows = np.zeros((0, self.d + 1))
            self.coef = np.zeros((0, regions.f_base.shape[1]))
        correction = None
        if self.jumps and (self.coef is None or self.rows.shape[0] != len(self.jumps)):
            self.rows = np.array([j.row for j in self.jumps])
            self.coef = np.array([j.coef for j in self.jumps])
            # kinks located for another set of units (one was missing, or indices shifted) may
            # belong to a unit they were not meant for: they pin no bias any more
            self.anchors = {}
        elif self.jumps:   # same units as the current model: start from its crossing terms
            correction, exposure = refine.crossing_correction(
                regions, self.rows[:, :-1], self.rows[:, -1], self.coef.T)
            weight = self._weights(regions, exposure)
        unit_line = np.array([j.line for j in self.jumps], int)
        unit_t = np.array([j.t for j in self.jumps])
        self.row_change = np.full(self.rows.shape[0], np.nan)
        m = np.zeros((regions.size, 0), bool)
        resid = np.zeros(regions.size)
        aff0 = None
        for it in range(passes + 1):
            if not self.rows.shape[0]:
                break
            prev = self.rows.copy()
            aff = regions.affine(correction)
            m = recover.masks(self.rows, regions, unit_line, unit_t)
            fit_in = (aff, weight, m)   # later passes start from the rows of the one before
            self.rows, self.coef, aff0, _, self.sigma = recover.fit_rows(
                *fit_in, self.coef, bias_scale=bias_scale, iters=1,
                rows=self.rows if it else None, residual=False)
            fitted = (self.rows.copy(), self.coef, aff0)
            for i, x in self.anchors.items():   # a located kink pins the bias near the origin
                self.rows[i, -1] = -self.rows[i, :-1] @ x
            if it:
                self.row_change = np.abs(self.rows - prev).max(1)
                settled = np.maximum(self.cfg.refine_stop, 0.1 * self.sigma[:, 0])
                if np.all(self.row_change <= settled):
                    break
            # the crossing terms are the same in the unsigned model: refine before signs
            used_weight = weight
            used = 0.0 if correction is None else correction   # None: no crossing term
            correction, exposure = refine.crossing_correction(
                regions, self.rows[:, :-1], self.rows[:, -1], self.coef.T)
            weight = self._weights(regions, exposure)
            if np.all(correction == used) and np.array_equal(weight, used_weight):
                # the crossing terms and weights came out as this pass used them (no probe
                # crosses a hyperplane, or the model did not move): the next pass would solve
                # the same data (784-1024-10: one pass of ~2.5 s saved per fit)
                self.row_change = np.zeros(self.rows.shape[0])
                break
        if aff0 is None:                    # no unit: the victim is affine everywhere
            aff0 = regions.affine().mean(0)
        else:                               # residual of the last solve (before anchoring)
            resid = recover.region_residual(*fit_in, *fitted)
        self.reg_info = None
        try:
            self.signs = solve.resolve_signs(self.rows, self.coef, aff0, tol=self.sign_tol)
        except UnsupportedArchitecture:
            # two rows of one hyperplane direction (parallel twins) leave the sign system
            # singular, though the layer is not expansive: keep them as one unit and refit;
            # so does a spurious unit whose fitted output weights are nil
            if not (self._drop_void_units() or self._merge_parallel()):
                raise
            return self.fit(final)
        w1, self.unit_src = solve.signed_units(self.rows, self.coef, self.signs)
        self.fit_resid = np.array([resid[m[:, i]].max() if m[:, i].any() else 0.0
                                   for i in range(self.rows.shape[0])])
        a2, b2 = solve.output_layer(self.rows, self.coef, aff0, self.signs)
        if self.anchor_y is not None:    # answers near the origin pin the output bias
            feats = np.maximum(self.anchor_x @ w1[:, :-1].T + w1[:, -1], 0.0)
            b2 = np.mean(self.anchor_y - feats @ a2.T, axis=0)
        self.network = ReLUNetwork([w1[:, :-1], a2], [w1[:, -1], b2])

    def polish(self) -> bool:
        """Measures the least precise units again, on both sides of their own hyperplane.

        A unit's row is only as precise as the regions next to its kink: a kink far out on the
        line (large answers, and a bias extrapolated back to the origin) or squeezed between
        others (small steps) leaves it noisy. Each flagged unit (estimated error above
        ``polish_tol``) gets two regions at ``x* -+ tau n``, with ``x*`` a point of its
        hyperplane near the origin, ``n`` its normal and ``tau`` half the distance to the
        nearest other hyperplane along ``n``. Each coordinate probe takes the sign and the
        largest step (up to ``step_max``) that keeps it inside the region by the now-verified
        model, so no crossing term is needed. After a precision line (:meth:`precision_line`)
        only the imprecise units that it did not cross are flagged. True when anything was
        measured.
        """
        cfg = self.cfg
        anchored = self._anchor()
        est = self._unit_error()
        order = [int(i) for i in np.argsort(-est) if est[i] > self.polish_tol]
        if self.precision_done:   # the precision line measured the others again
            order = [i for i in order if i in self.precision_missed]
        per = 2 * (self.d + 1)
        room = np.inf if self.oracle.remaining is None else (
            self.oracle.remaining - cfg.patience * cfg.check_points)
        spent = self.oracle.queries - self.stage["precision"]   # the precision line's aside
        first = int(min(self.polish_frac * spent, room)) // per
        extra = int(min(cfg.polish_small_frac * spent,
                        room - first * per)) // per
        size = np.linalg.norm(self.coef, axis=1)
        small = [i for i in order[first:] if size[i] < cfg.polish_small * size.max()]
        order = order[:max(first, 0)] + small[:max(extra, 0)]
        if not order:
            return anchored
        w, b = self.rows[:, :-1], self.rows[:, -1]
        cap = cfg.step_max * cfg.input_scale
        base, steps = [], []
        for i in order:
            best = (-1.0, None, None)
            for _ in range(cfg.polish_tries):
                xs, tau = self._plane_point(i, cap, origin=False)
                pts = np.array([xs - tau * w[i], xs + tau * w[i]])
                st = np.array([_safe_steps(p, w, b, cap) for p in pts])
                score = (1.0 / np.sqrt(np.mean(st ** -2.0, axis=1))).min()
                if score > best[0]:
                    best = (score, pts, st)
            base.append(best[1])
            steps.append(best[2])
        base = np.concatenate(base)
        n = base.shape[0]
        regions, complete = recover.measure_points(
            self.query("gradients"), base, np.concatenate(steps), np.full(n, -1),
            np.zeros(n), np.zeros(n), remaining=self.oracle.remaining)
        self.regions.append(regions)
        self.notes.append(f"polished {len(order)} units ({regions.size} regions)")
        if not complete:
            raise QueryBudgetExceeded(
                f"budget of {self.oracle.budget} rows ran out while polishing")
        return True

    def precision_line(self) -> bool:
        """Measures the regions next to imprecise units' kinks again on a line near the origin.

        Once the network is verified, a unit counts as imprecise when the polish's error
        estimate (:meth:`_unit_error`, conservative: actual errors are 1e-4..1e-2 of it)
        exceeds ``precision_est``. Such units are left to :meth:`polish` unless there are more
        than it can take, more than ``precision_share`` of all units and more than
        ``precision_min`` (trained victims, whose output weights are mostly 1-5% of the
        largest: 295 (58%) and 817 (80%) units of trained 784-512-10 and 784-1024-10, against
        20% of random 784-1024-10). Then the first line's own noise is the cause: its regions
        lie between dense kinks, so its coordinate steps are tiny, and the noise grows about
        as h^2 (answers sum ~h terms, kinks lie ~1/h apart). One more line then
        serves them all at about one region each: it passes within ``polish_radius`` of the
        origin (small answers), and each of its regions next to an imprecise unit's kink takes
        the crossing-free coordinate steps of the verified model (:func:`_safe_steps`: median
        25x larger than the first line's on trained 784-1024-10). At most one such line per
        extraction (the estimate does not shrink with it). True when anything was measured.
        """
        cfg = self.cfg
        h = self.rows.shape[0]
        if not h or not self.nf.float64 or self.precision_done:
            return False
        imprecise = np.flatnonzero(self._unit_error() > cfg.precision_est)
        per = 2 * (self.d + 1)
        capacity = int(cfg.polish_frac * self.oracle.queries) // per
        if imprecise.size <= max(capacity, cfg.precision_share * h, cfg.precision_min):
            return False
        self.precision_done = True
        cap = cfg.step_max * cfg.input_scale
        x0 = self.rng.normal(size=self.d) * cfg.input_scale * cfg.polish_radius
        v = self.rng.normal(size=self.d)
        v /= np.linalg.norm(v)
        self.lines += 1
        res = self.search(x0, v)
        w, b = self.rows[:, :-1], self.rows[:, -1]
        with np.errstate(divide="ignore", invalid="ignore"):
            pred = -(w[imprecise] @ x0 + b[imprecise]) / (w[imprecise] @ v)
        tol = max(1e-7 * self.t_max, 8 * self.delta)
        near = np.clip(np.searchsorted(res.t, pred), 1, max(res.t.size - 1, 1)) if res.t.size \
            else np.zeros(0, int)
        kinks = []
        for u, p, j in zip(imprecise, pred, near):
            cand = [i for i in (j - 1, j) if 0 <= i < res.t.size]
            best = min(cand, key=lambda i: abs(res.t[i] - p)) if cand else None
            if best is not None and abs(res.t[best] - p) <= tol:
                kinks.append(best)
            else:
                self.precision_missed.add(int(u))
        if not kinks:
            return False
        lo, hi, mid, _ = recover.plan_regions(res.t, self.t_max, self.step_frac, cap)
        idx = np.unique(np.concatenate([kinks, np.array(kinks) + 1]))
        base = x0 + mid[idx, None] * v
        steps = np.array([_safe_steps(p, w, b, cap) for p in base])
        regions, complete = recover.measure_points(
            self.query("precision"), base, steps, np.full(idx.size, self.lines - 1),
            lo[idx], hi[idx], remaining=self.oracle.remaining)
        self.regions.append(regions)
        self.notes.append(f"{imprecise.size} of {h} units imprecise (error estimate above "
                          f"{cfg.precision_est:.0e}); {len(kinks)} of their kinks measured "
                          f"again on a line near the origin ({regions.size} regions)")
        if not complete:
            raise QueryBudgetExceeded(
                f"budget of {self.oracle.budget} rows ran out on the precision line")
        return True

    def _plane_point(self, i: int, cap: float, origin: bool):
        """A point of unit ``i``'s hyperplane (the one nearest the origin, or a random point
        projected onto it) and half the distance along its normal to the nearest other
        hyperplane (at most ``cap``)."""
        w, b = self.rows[:, :-1], self.rows[:, -1]
        xr = np.zeros(self.d) if origin else (
            self.rng.normal(size=self.d) * self.cfg.input_scale * self.cfg.polish_radius)
        xs = xr - (w[i] @ xr + b[i]) * w[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            along = np.abs((w @ xs + b) / (w @ w[i]))
        along[i] = np.inf
        return xs, 0.5 * min(np.nanmin(along), cap)

    def _ls_error(self, with_bias: bool = False) -> np.ndarray:
        """``(h,)`` LS standard error of each unit's normalised row and coefficients, and of
        its bias unless a located kink pins it (``with_bias``)."""
        h = self.rows.shape[0]
        if self.sigma is None or h == 0:
            return np.zeros(h)
        est = np.maximum(self.sigma[:, 0], self.sigma[:, 2])
        if with_bias:
            fitted = np.array([i not in self.anchors for i in range(h)])
            est = np.maximum(est, np.where(fitted, self.sigma[:, 1], 0.0))
        return est

    def _unit_error(self, by_size: bool = True) -> np.ndarray:
        """``(h,)`` rough error of each unit's normalised row and coefficients.

        The LS standard errors, and ``crossing_rel_error * step_max / s`` with ``s`` the
        smallest step of the two regions beside the unit's kink: a kink squeezed next to another
        leaves a tiny region whose probes cross both, an error the covariance does not see. That
        error comes from the other units' crossing terms, so it is scaled by the largest unit's
        output coefficient over this unit's: a unit with small output weights has a small jump
        to read its row from (784-128-1 seed 0: units at 3e-4 and 3e-3 of the largest were
        left unpolished at 2.9e-8 while larger units with smaller errors were polished).
        ``by_size=False`` leaves that factor out (the twin tests ask how well a kink's own
        region was measured, not how large the unit is).
        """
        h = self.rows.shape[0]
        est = self._ls_error()
        if h == 0 or self.sigma is None:
            return est
        regions = recover.Regions.concat(self.regions)
        steps = regions.step_rms()
        tol = 1e-12 * self.t_max
        cap = self.cfg.step_max * self.cfg.input_scale
        ratio = np.ones(h)
        if by_size and self.coef is not None and self.coef.shape[0] == h:
            size = np.linalg.norm(self.coef, axis=1)
            ratio = size.max() / np.maximum(size, 1e-300 * size.max())
        for i, j in enumerate(self.jumps[:h]):
            beside = (regions.line == j.line) & ((np.abs(regions.t_hi - j.t) <= tol)
                                                 | (np.abs(regions.t_lo - j.t) <= tol))
            if beside.any():
                est[i] = max(est[i], self.cfg.crossing_rel_error * cap * ratio[i]
                             / steps[beside].min())
        return est

    def _anchor(self) -> bool:
        """Locates each unit's kink on a short line along its normal near the origin.

        A bias fitted from regions far out is the row's error extrapolated back to the origin;
        a kink located near the origin pins it instead. Four answers per unit, two on each side
        at ``+-tau/2, +-tau`` where the model puts no other hyperplane within ``2 tau``; the two
        lines meet at the kink to about ``eps |f| / |slope jump|``. Units whose jump is lost in
        the noise or whose kink lands off the short line keep their fitted bias.
        """
        cfg = self.cfg
        h = self.rows.shape[0]
        if h == 0 or (self.oracle.remaining is not None and self.oracle.remaining
                      < 4 * h + cfg.patience * cfg.check_points):
            return False
        w = self.rows[:, :-1]
        centre, taus = np.zeros((h, self.d)), np.zeros(h)
        for i in range(h):
            for t in range(cfg.polish_tries):
                xs, tau = self._plane_point(i, cfg.input_scale, origin=t == 0)
                if tau > taus[i]:
                    centre[i], taus[i] = xs, tau
        offs = np.array([-1.0, -0.5, 0.5, 1.0])
        pts = centre[:, None, :] + (taus[:, None] * offs)[:, :, None] * w[:, None, :]
        y = self.query("gradients")(pts.reshape(-1, self.d)).reshape(h, 4, -1)
        s_left = (y[:, 1] - y[:, 0]) / (0.5 * taus[:, None])
        s_right = (y[:, 3] - y[:, 2]) / (0.5 * taus[:, None])
        jump = s_left - s_right                                 # (h, k)
        rhs = y[:, 2] - y[:, 1] - 0.5 * taus[:, None] * (s_left + s_right)
        noise = self.tolerance(np.abs(y).max((1, 2))) / np.maximum(taus, 1e-300)
        ok = (np.abs(jump).max(1) > 64 * noise) & (taus > 0)
        t_star = np.where(ok, (jump * rhs).sum(1) / np.maximum((jump ** 2).sum(1), 1e-300), 0.0)
        ok &= np.abs(t_star) < 0.5 * taus
        self.anchors = {i: centre[i] + t_star[i] * w[i] for i in np.flatnonzero(ok)}
        self.anchor_x = pts.reshape(-1, self.d)
        self.anchor_y = y.reshape(4 * h, -1)
        if (~ok).any():
            self.notes.append(f"{int((~ok).sum())} units kept their fitted bias (kink not "
                              "located near the origin)")
        return True

    def regress(self):
        """Noisy answers: fits every parameter to answers at random points (Gauss-Newton).

        The points are drawn once (``regress_factor * P / k`` of them, within the budget) and
        kept, so a refit after new units were found reuses them.
        """
        self.draw_regression_points()
        net = self.network
        if self.reg_y is None or self.reg_x.shape[0] * net.output_dim < net.num_params:
            self.notes.append("too few answers left in the budget to regress the noisy model")
            return
        size = np.maximum(np.abs(self.reg_y).max(1), 1e-2 * np.abs(self.reg_y).max())
        self.network, self.reg_info = regress.gauss_newton(
            net, self.reg_x, self.reg_y, self.nf.sigma(size))
        info = self.reg_info
        self.notes.append(
            f"regressed all parameters on {self.reg_x.shape[0]} answers: {info.steps} "
            f"Gauss-Newton steps, weighted RMS residual {info.start_rms:.3g} -> "
            f"{info.final_rms:.3g} (1 = the noise floor)")
        self._merge_duplicates()

    def _merge_duplicates(self, undetermined: float = 0.05):
        """Noisy answers: a unit found twice (its two rows agree to within ten of their error
        estimates) becomes one, carrying both output weights; a unit whose row the answers do
        not determine (error estimate above ``undetermined``: a spurious kink whose output
        weights the regression drove to ~0) is dropped."""
        net, err = self.network, self.reg_info.unit_error
        if self.reg_info.final_rms > self.cfg.noisy_fit_rms:   # not at the noise floor
            return
        w, b = net.weights[0], net.biases[0]
        norm = np.linalg.norm(w, axis=1)
        rows = np.concatenate([w, b[:, None]], 1) / np.where(norm > 0, norm, 1.0)[:, None]
        a2 = net.weights[1].copy()
        keep = err <= undetermined
        dropped = int((~keep).sum())
        if dropped:
            self.notes.append(f"dropped {dropped} units the answers do not determine (row "
                              f"error estimate above {undetermined:g}: spurious kinks)")
        for i in range(w.shape[0]):
            for j in range(i + 1, w.shape[0]):
                if keep[i] and keep[j] and (np.abs(rows[i] - rows[j]).max()
                                            <= 10 * max(err[i], err[j])):
                    a2[:, i] += a2[:, j] * norm[j] / norm[i]
                    keep[j] = False
        if keep.all():
            return
        if (~keep).sum() > dropped:
            self.notes.append(
                f"merged {int((~keep).sum()) - dropped} units into others whose rows agree "
                "within their error estimates (a unit found twice, or twins that this "
                "precision cannot separate)")
        self.network = ReLUNetwork([w[keep], a2[:, keep]], [b[keep], net.biases[1]])
        self.unit_src = self.unit_src[keep]
        self.reg_info = dataclasses.replace(self.reg_info, unit_error=err[keep])

    def draw_regression_points(self):
        """Tops the regression's random points up to ``regress_factor * P / k``."""
        cfg = self.cfg
        net = self.network
        want = int(np.ceil(cfg.regress_factor * net.num_params / net.output_dim))
        need = want - self.reg_x.shape[0]
        if self.oracle.remaining is not None:
            need = min(need, self.oracle.remaining - cfg.patience * cfg.check_points)
        if need > 0:
            rng = np.random.default_rng([self.seed, 2, self.reg_x.shape[0]])
            x = rng.normal(size=(need, self.d)) * cfg.input_scale
            y = self.query("regression")(x)
            self.reg_x = np.concatenate([self.reg_x, x])
            self.reg_y = y if self.reg_y is None else np.concatenate([self.reg_y, y])

    def orient(self, sweeps: int = 2):
        """Noisy answers: the orientation of each row chosen by the answers themselves.

        The sign statistic ``rho`` of :mod:`fidelity.solve` rests on the affine term of the fit,
        which noisy rows (and a unit still missing) leave too rough to round. Starting from it,
        each row is flipped in turn and kept flipped when the least-squares output layer then
        explains the regression's answers better; no unit is split.
        """
        self.draw_regression_points()
        rows = self.rows.copy()
        rows[self.signs.rho > 0.5] *= -1
        self.network = self._oriented(rows, sweeps)
        self.unit_src = np.arange(rows.shape[0])
        self.jumps_modelled = len(self.jumps)

    def _oriented(self, rows: np.ndarray, sweeps: int = 2) -> ReLUNetwork:
        """Greedy flips of ``rows`` that lower the output layer's residual on the regression's
        answers, and the network with that output layer."""
        rows = rows.copy()
        x, y = self.reg_x, self.reg_y

        def rss(r):
            design = np.concatenate([np.maximum(x @ r[:, :-1].T + r[:, -1], 0.0),
                                     np.ones((x.shape[0], 1))], 1)
            sol, *_ = np.linalg.lstsq(design, y, rcond=None)
            return float(((design @ sol - y) ** 2).sum())

        best = rss(rows)
        for _ in range(sweeps):
            changed = False
            for i in range(rows.shape[0]):
                rows[i] *= -1
                trial = rss(rows)
                if trial < best:
                    best, changed = trial, True
                else:
                    rows[i] *= -1
            if not changed:
                break
        a2, b2, _ = solve.fit_output_layer(rows, x, y)
        return ReLUNetwork([rows[:, :-1], a2], [rows[:, -1], b2])

    def add_units(self) -> bool:
        """Noisy answers: adds the units of jumps found since the model was fitted.

        A regression that lacked a unit bent every other row to make up for it, and does not
        unbend from there; so the model restarts from the rows measured at the kinks (rough but
        unbiased), all oriented again on the regression's answers (``c relu(z)`` and
        ``c relu(-z) + c z`` kink alike), and the regression then refits everything.
        """
        if len(self.jumps) <= self.jumps_modelled:
            return False
        if self.reg_y is None:      # answers to choose orientations by: the regression's
            self.draw_regression_points()
        self.network = self._oriented(np.array([j.row for j in self.jumps]))
        self.unit_src = np.arange(len(self.jumps))
        self.jumps_modelled = len(self.jumps)
        return True

    def check_line(self):
        """Compares answers with the model on a fresh line; True when they agree."""
        x0, v = self.new_line()
        t = self.t_max * self.rng.uniform(-1, 1, self.cfg.check_points)
        pts = x0 + t[:, None] * v
        y = self.query("checks")(pts)
        pred = self.network(pts)
        scale = max(np.abs(y).max(), 1e-300)
        self.check_error = float(np.abs(y - pred).max() / scale)
        tol = self.check_tol if self.reg_info is None else self.final_check_tol
        return self.check_error <= tol, x0, v

    def extend(self, x0, v):
        """A check line disagreed: search it and add units whose kinks are new."""
        res = self.search(x0, v)
        # one hyperplane per unit of the unsigned model (the network holds a unit whose sign
        # is undecided twice, as relu(z) and relu(-z): two predictions of one kink)
        w, b = self.rows[:, :-1], self.rows[:, -1]
        tol = max(1e-7 * self.t_max, 8 * self.delta)
        spread = 0.0
        if not self.nf.float64 and self.jumps:
            # noisy: a regression that still lacks a unit bends every row to make up for it;
            # the rows measured at the kinks are rougher but unbiased (errors grow with |t|)
            rows = np.array([j.row for j in self.jumps])
            w, b, spread = rows[:, :-1], rows[:, -1], 0.02
            tol = 2 * self.delta
        with np.errstate(divide="ignore", invalid="ignore"):
            pred = -(w @ x0 + b) / (w @ v)
        new = _unexplained(res.t, res.verified, pred, tol + spread * np.abs(res.t),
                           close=1e-7 * self.t_max)
        if not new:
            if self.nf.float64 and (self.separate_twins() or self.merge_twins()):
                return True
            if self.nf.float64:
                self.notes.append(f"line {self.lines - 1}: answers disagree with the model "
                                  f"(relative {self.check_error:.2e}) but no new kink was found")
            else:
                self.notes.append(f"line {self.lines - 1}: answers disagree with the noisy "
                                  f"model (relative {self.check_error:.2e}); no new unit on it")
            return False
        before = len(self.jumps)
        self.measure(x0, v, res, np.array(new))
        if self.nf.float64:
            # a known unit whose row is still rough can kink just outside the tolerance: its
            # jump repeats a known row (and would make the fit rank-deficient); drop it
            known = np.array([j.row for j in self.jumps[:before]])
            self.jumps = self.jumps[:before] + [
                j for j in self.jumps[before:]
                if not known.size or np.abs(np.abs(known) - np.abs(j.row)).max(1).min() > 1e-4]
            return len(self.jumps) > before
        # noisy rows predict kinks loosely, so some candidates are known units: drop jumps
        # along a known unit's normal, and jumps that are not rank one (merged kinks)
        known = np.array([j.row[:-1] for j in self.jumps[:before]])
        fresh = [j for j in self.jumps[before:] if j.rank_ratio < 0.1
                 and (not known.size or np.abs(known @ j.row[:-1]).max() < 0.99)]
        self.jumps = self.jumps[:before] + fresh
        return len(self.jumps) > before

    def separate_twins(self) -> bool:
        """Re-measures two units whose kinks on one line are closer than it can resolve.

        Twins (rows that differ by ~1e-7) kink a hair apart on every line, and the region
        between is too thin for a gradient. Their hyperplanes fan out with the distance from
        where they meet, so a short line along the better row's normal far out (``|x| ~ 30 T``)
        crosses them further apart; the gradients of the three regions there, with each
        coordinate step kept inside its region, give both rows. True when a pair was measured.
        """
        if len(self.jumps) < 2:
            return False
        lines = np.array([j.line for j in self.jumps])
        ts = np.array([j.t for j in self.jumps])
        close = np.abs(ts[:, None] - ts[None, :]) <= 1e-6 * self.t_max
        close &= (lines[:, None] == lines[None, :]) & ~np.eye(len(ts), dtype=bool)
        est = self._unit_error(by_size=False)
        w_all = self.rows[:, :-1]
        # twins, not two units that happen to kink close on this line: their rows agree, or
        # one of them could not be measured in the thin region between
        alike = (np.abs(w_all @ w_all.T) > 0.99) | (np.maximum(est[:, None], est[None, :]) > 1e-3)
        pairs = [(a, b) for a, b in zip(*np.nonzero(np.triu(close & alike)))
                 if (a, b) not in self.twins_done]
        if not pairs:
            return False
        measured = False
        for a, b in pairs[:4]:
            self.twins_done.add((a, b))
            keep = a if est[a] <= est[b] else b
            w, b0 = self.rows[keep, :-1], self.rows[keep, -1]
            n = w / np.linalg.norm(w)
            reach = 30 * self.t_max
            tau = 1e-4 * reach
            for _ in range(3):                # the fan opens along an unknown direction
                xr = self.rng.normal(size=self.d)
                xr *= reach / np.linalg.norm(xr)
                x0 = xr - (w @ xr + b0) / (w @ w) * w
                self.lines += 1
                res = search.search_lines(
                    self.query("search"), x0[None], n[None], tau, delta=1e-6 * tau,
                    min_delta=1e-12 * tau, noise_factor=self.tol_rel / search.EPS,
                    max_rounds=self.cfg.max_rounds)[0]
                if res.t.size >= 2:
                    break
            else:
                continue
            t1, t2 = np.sort(res.t[np.argsort(np.abs(res.t))[:2]])
            bounds = np.array([-tau, t1, t2, tau])
            mids = 0.5 * (bounds[:-1] + bounds[1:])
            base = x0 + mids[:, None] * n
            others = np.array([m for m in range(self.rows.shape[0]) if m not in (a, b)])
            cap = self.cfg.step_max * self.cfg.input_scale
            steps = []
            for r, mid in enumerate(mids):
                st = (_safe_steps(base[r], self.rows[others, :-1], self.rows[others, -1], cap)
                      if others.size else np.full(self.d, cap))
                room = min(mid - bounds[r] if r else np.inf,
                           bounds[r + 1] - mid if r < 2 else np.inf)
                with np.errstate(divide="ignore"):
                    limit = 0.25 * room / np.abs(n)
                steps.append(np.sign(st) * np.minimum(np.abs(st), limit))
            regions, complete = recover.measure_points(
                self.query("gradients"), base, np.array(steps), np.full(3, self.lines - 1),
                bounds[:-1], bounds[1:], remaining=self.oracle.remaining)
            if not complete:
                raise QueryBudgetExceeded(
                    f"budget of {self.oracle.budget} rows ran out while separating twins")
            self.regions.append(regions)
            aff = regions.affine()
            noise = self.tolerance(np.abs(regions.f_probe).max((1, 2))) / regions.step_rms()
            new = recover.jumps_to_rows(aff[:2], aff[1:], n, self.lines - 1,
                                        np.array([t1, t2]),
                                        4 * np.maximum(noise[:2], noise[1:]))
            if len(new) == 2 and min(abs(j.row[:-1] @ n) for j in new) > 0.99:
                self.jumps[a], self.jumps[b] = new
                self.coef = None              # refit from the jumps, the twins' new rows first
                measured = True
                self.notes.append(f"units {a} and {b} are twins (their kinks nearly coincide); "
                                  f"measured again {t2 - t1:.2g} apart far out")
        return measured

    def _drop_void_units(self, tol: float = 1e-9) -> bool:
        """Drops the jumps of units whose fitted output coefficients are below ``tol`` of the
        largest: no answer moves with them (a kink measured across a region too thin to give a
        row: trained 784-1024-10 with ``input_scale=0.3`` took two, at 2e-10 of the largest,
        and their rows left the sign system singular). True when a jump was dropped."""
        if self.coef is None or self.rows.shape[0] != len(self.jumps) or not len(self.jumps):
            return False
        size = np.linalg.norm(self.coef, axis=1)
        void = np.flatnonzero(size < tol * size.max())
        for i in void[::-1]:
            self._drop_jump(int(i))
        if void.size:
            self.notes.append(f"{void.size} units with nil output weights (below {tol:.0e} of "
                              "the largest) dropped as spurious")
        return bool(void.size)

    def _merge_parallel(self, tol: float = 1e-6) -> bool:
        """Drops the jump of one of the two most nearly parallel rows (``1 - |cos| <= tol``);
        the refit gives the other both output weights. True when a jump was dropped."""
        if self.rows.shape[0] < 2 or self.rows.shape[0] != len(self.jumps):
            return False
        w = self.rows[:, :-1] / np.linalg.norm(self.rows[:, :-1], axis=1)[:, None]
        cos = np.abs(w @ w.T) - 2 * np.eye(w.shape[0])
        a, b = np.unravel_index(np.argmax(cos), cos.shape)
        if cos[a, b] < 1 - tol:
            return False
        a, b = min(a, b), max(a, b)
        self._drop_jump(b)
        self.notes.append(f"units {a} and {b} have parallel rows (1 - |cos| = "
                          f"{1 - cos[a, b]:.1e}) that this precision cannot separate; kept as "
                          "one unit carrying both output weights")
        return True

    def _drop_jump(self, i: int):
        """Forgets unit ``i`` (its jump); the next fit starts again from the jumps."""
        del self.jumps[i]

        def shift(pairs):
            return {(p - (p > i), q - (q > i)) for p, q in pairs if i not in (p, q)}
        self.twins_done, self.twins_merged = shift(self.twins_done), shift(self.twins_merged)
        self.coef = None

    def merge_twins(self) -> bool:
        """Twins that a far line could not tell apart (hyperplanes parallel and closer than
        float64 resolves) are kept as one unit: the worse-measured jump is dropped and the
        refit gives the survivor both output weights. True when a pair was merged."""
        est = self._unit_error(by_size=False)
        for a, b in sorted(self.twins_done):
            if (a, b) in self.twins_merged or max(a, b) >= len(self.jumps):
                continue
            self.twins_merged.add((a, b))
            self._drop_jump(a if est[a] > est[b] else b)
            self.notes.append(f"units {a} and {b} could not be separated at this precision "
                              "(twin hyperplanes closer than float64 resolves); kept as one unit "
                              "carrying both output weights")
            return True
        return False

    def result(self, status: str, t0: float) -> Extraction:
        net = self.network
        infos = []
        if net is not None and self.signs is not None:
            est = np.maximum(self._ls_error(with_bias=True), self._unit_error())
            w, a2 = net.weights[0], net.weights[1]
            if self.reg_info is not None:     # the regression's own estimate, per network unit
                est = self.reg_info.unit_error
            for i, src in enumerate(self.unit_src):
                j = self.jumps[src] if src < len(self.jumps) else None
                infos.append(NeuronInfo(
                    line=j.line if j else -1, t=j.t if j else float("nan"),
                    rank_ratio=j.rank_ratio if j else float("nan"),
                    rho=_at(self.signs.rho, src),
                    row_change=_at(self.row_change, src),
                    fit_residual=_at(self.fit_resid, src),
                    out_weight=float(np.abs(a2[:, i]).max() * np.linalg.norm(w[i])),
                    error_estimate=float(est[i] if self.reg_info is not None else est[src])
                    if src < est.size else float("nan"),
                    anchored=int(src) in self.anchors))
        return Extraction(
            network=net, queries=self.oracle.queries,
            hidden_size=0 if net is None else net.weights[0].shape[0], status=status,
            stage_queries=dict(self.stage), neurons=tuple(infos), lines=self.lines,
            check_error=self.check_error, notes=tuple(self.notes),
            seconds=time.perf_counter() - t0, noise=self.nf)


def _escalate(result: Extraction, oracle: Oracle, precision: str, dps: int, seed: int,
              cfg: ExtractConfig, t0: float) -> Extraction:
    """Refines all units (``precision='mp'``) or the flagged ones (``'auto'``) in mpmath."""
    from . import mp          # mpmath work only when asked for

    units = None
    if precision == "auto":
        units = [i for i, n in enumerate(result.neurons) if n.error_estimate > cfg.polish_tol]
        if not units:
            return result
        if len(units) == len(result.neurons):
            units = None              # all of them: the output bias is refined too
    try:
        out = mp.refine(result, oracle, dps=dps, units=units, seed=seed,
                        input_scale=cfg.input_scale, step_max=cfg.step_max)
    except QueryBudgetExceeded as exc:
        raise QueryBudgetExceeded(str(exc), result=exc.result) from None
    if precision == "auto":
        flagged = "all units" if units is None else f"units {units}"
        out = dataclasses.replace(out, notes=out.notes + (
            f"{flagged} were flagged as imprecise in float64 and refined in mp ({dps} digits)",))
    return dataclasses.replace(out, seconds=time.perf_counter() - t0)


def _at(values: np.ndarray, i: int) -> float:
    """``values[i]``, NaN past the end (units added after the last finite-difference fit)."""
    return float(values[i]) if i < values.size else float("nan")


def _unexplained(found: np.ndarray, verified: np.ndarray, pred: np.ndarray,
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
    row (twin hyperplanes, left to :meth:`_Run.separate_twins`; the parallel twins of
    ``benchmarks/precision.py`` kink 3e-6 apart and came back as five spurious units).
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


def _safe_steps(p: np.ndarray, w: np.ndarray, b: np.ndarray, cap: float,
                frac: float = 0.5) -> np.ndarray:
    """``(d,)`` signed coordinate steps from ``p`` that cross none of the hyperplanes ``(w, b)``:
    per coordinate the side with the farther hyperplane (either, when both are beyond
    ``cap / frac``), ``frac`` of the way to it, at most ``cap``.

    Coordinate ``i`` meets plane ``m`` at ``-z_m / w_mi``; only planes with
    ``|z_m| < (cap / frac) max_i |w_mi|`` can come nearer than ``cap / frac`` (at 784-1024-10 a
    sixth of them), and the nearest one on each side is ``1 / max_m (-+ w_mi / z_m)``.
    """
    z = w @ p + b
    near = (np.abs(z) < (cap / frac) * np.abs(w).max(1)) & (z != 0)
    q = w[near] / z[near, None]                          # (c, d): -1 / (where e_i meets m)
    with np.errstate(divide="ignore"):
        fwd = 1.0 / np.maximum(-q, 0.0).max(0, initial=0.0)
        back = 1.0 / np.maximum(q, 0.0).max(0, initial=0.0)
    return np.where(fwd >= back, 1.0, -1.0) * np.minimum(frac * np.maximum(fwd, back), cap)


def extract(oracle: Oracle, *, seed: int = 0, throw: bool = True,
            progress: Optional[Callable[[dict], None]] = None, journal=None,
            precision: str = "auto", dps: int = 50, **options) -> Extraction:
    """Recovers a one-hidden-layer ReLU network from query access alone.

    Args:
        oracle: the counting :class:`Oracle` around the victim (the only access used).
        seed: seeds every random choice (lines, check points); same seed, same queries.
        throw: raise :class:`ExtractionError` when the status is ``'unverified'``.
        progress: optional callback receiving a dict after each stage.
        journal: optional path of a query journal (see :mod:`fidelity.journal`): every answered
            chunk is written to it durably before use, and a rerun with the same seed and options
            replays it without querying, then continues. ``oracle.paid`` counts the rows sent.
        precision: ``"float64"``: a float64 network. ``"mp"``: the float64 recovery is then
            refined in mpmath at ``dps`` digits (the oracle must be made with
            ``precision="mp"``; see :func:`fidelity.mp.refine`), and the network holds object
            arrays of ``mpmath.mpf``. ``"auto"`` (default): like ``"float64"``, except that
            when the oracle answers in mp, the units the float64 pass flags as imprecise
            (error estimate above ``polish_tol``) are refined in mp, and only those.
        dps: decimal digits of the mp refinement.
        **options: fields of :class:`ExtractConfig`.

    Returns:
        An :class:`Extraction`; its ``network`` equals the victim up to permutation and positive
        scaling of hidden units.

    Raises:
        QueryBudgetExceeded: the budget ran out; ``.result`` is the partial extraction.
        OracleError: the victim answered NaN/inf or a wrong shape, or answers labels only.
        JournalError: ``journal`` was written by another run (seed, options or victim).
        UnsupportedArchitecture: the hidden layer cannot be recovered exactly.

    Example:
        >>> victim = ReLUNetwork.random(0, [10, 8, 1])
        >>> result = extract(Oracle(victim))
        >>> result.hidden_size
        8
    """
    unknown = set(options) - {f.name for f in dataclasses.fields(ExtractConfig)}
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}; see fidelity.ExtractConfig")
    cfg = ExtractConfig(**options)
    if not isinstance(oracle, Oracle):
        raise TypeError("extract needs a fidelity.Oracle; wrap the victim in Oracle(...)")
    if precision not in ("auto", "float64", "mp"):
        raise ValueError(f"precision must be 'auto', 'float64' or 'mp', got {precision!r}")
    if precision == "mp" and oracle.precision != "mp":
        raise ValueError("precision='mp' needs an oracle made with Oracle(..., precision='mp')")
    oracle.require_scores()
    if journal is not None:
        oracle.attach_journal(journal)
    run = _Run(oracle, cfg, seed, progress)
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        try:
            run.detect_noise()
            x0, v = run.new_line()
            kinks = run.search(x0, v)
            run.report(stage="search", kinks=int(kinks.t.size))
            run.measure(x0, v, kinks)
            run.fit()
            run.report(stage="fit")
            if not run.nf.float64:
                # noisy: finite-difference rows are too rough to check against or to predict
                # kinks far out; orient them on the regression's answers, regress now, and
                # again after each unit added
                run.orient()
                run.regress()
            clean = 0
            polished = False
            status = "unverified"
            while run.lines < cfg.max_lines:
                ok, x0, v = run.check_line()
                if ok:
                    clean += 1
                    if clean >= cfg.patience:
                        if not run.nf.float64 and run.reg_info is None:
                            run.regress()
                            run.report(stage="regression")
                            clean = cfg.patience - 1       # checked once more, tighter
                            if run.reg_info is None:
                                break
                            continue
                        if not polished and run.nf.float64:
                            polished = True
                            # the precision line's regions join the polish's final fit
                            lined = run.precision_line()
                            if run.polish() or lined:
                                run.fit(final=True)
                                run.report(stage="polish")
                                clean = cfg.patience - 1   # the polished model is checked once
                                continue
                            run.fit(final=True)            # no new answers: refit only
                        status = "ok"
                        if run.reg_info is not None and run.reg_info.final_rms > cfg.noisy_fit_rms:
                            # check lines weigh the far, large answers; the regression's
                            # residual at Gaussian points is the stricter test of a noisy model
                            status = "unverified"
                            run.notes.append(
                                f"the regressed model leaves a weighted RMS residual of "
                                f"{run.reg_info.final_rms:.3g} (1 = the noise floor) at its "
                                "random points: a unit is missing, spurious or imprecise")
                        break
                    continue
                clean = 0
                if run.extend(x0, v):
                    if run.nf.float64:
                        run.fit()
                        polished = False               # the new model is polished again
                    elif run.add_units() and run.reg_info is not None:
                        run.regress()          # noisy: new units join the regressed model
                run.report(stage="extend")
        except QueryBudgetExceeded as exc:
            if run.jumps and (run.network is None or len(run.rows) != len(run.jumps)):
                try:  # fit what was measured before the budget ran out
                    run.fit()
                except FidelityError:
                    pass
            partial = run.result("partial", t0)
            raise QueryBudgetExceeded(str(exc), result=partial) from None
    unexplained = sum("no new kink was found" in n for n in run.notes)
    if unexplained:
        run.notes.append(
            f"{unexplained} check lines disagreed without a new kink: a unit too small to locate "
            "(output weights below ~1e-6 of the largest) or never crossed by a line may be "
            f"missing; the model's last check error is {run.check_error:.1e}")
    result = run.result(status, t0)
    if status == "ok" and oracle.precision == "mp" and precision != "float64":
        result = _escalate(result, oracle, precision, dps, seed, cfg, t0)
    if status != "ok":
        log.warning("extraction ended with status %s: %s", status, "; ".join(run.notes))
        if throw:
            raise ExtractionError(
                f"extraction could not be verified after {cfg.max_lines} lines "
                f"(check error {run.check_error:.2e}); pass throw=False to get the result",
                result)
    return result
