"""The noisy regime: answers rounded above float64 (float32 victims, rounded outputs).

Finite-difference rows are then too rough to check against or to predict kinks far out. They
are oriented on answers at random points, and the whole network is fitted to those answers by
Gauss-Newton (:mod:`fidelity.regress`), again after each unit added. The model is verified when
the check lines agree to a few noise levels and the regression's residual is at the noise floor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import regress, solve
from .context import Run, Tolerances
from .geometry import Hyperplanes
from .network import ReLUNetwork
from .noise import NoiseFloor
from .results import Kind, Status

# a unit whose regressed row error estimate exceeds this is undetermined (spurious)
UNDETERMINED = 0.05
# two rows agreeing within this many of their error estimates are one unit found twice
DUPLICATE_SIGMAS = 10
# greedy orientation sweeps
ORIENT_SWEEPS = 2
# kinks predicted from the rows measured at the kinks: within 2 delta plus this share of |t|
KINK_SPREAD = 0.02
# a new jump is kept when it is rank one to this ratio, and not along a known normal
NEW_RANK_RATIO = 0.1
NEW_MAX_COS = 0.99
# the regressed model is checked against this many noise levels (relative)
FINAL_CHECK_SIGMAS = 64


@dataclass(frozen=True)
class NoisyConfig:
    """Settings used when the answers are noisier than float64.

    Attributes:
        noisy_sign_tol: ``sign_tol`` used instead of the float64 one.
        noisy_check_tol: check tolerance of the finite-difference model (it only has to show
            that no unit is missing); the regressed model is then checked against
            ``max(check_tol, 64 sigma / |f|)``.
        regress_factor: the whole network is fitted by Gauss-Newton to the answers at
            ``regress_factor * P / k`` random points (``P`` parameters, ``k`` outputs).
        noisy_fit_rms: a noisy extraction is verified only if the regression's weighted RMS
            residual (1 at the noise floor) is at most this.
    """

    noisy_sign_tol: float = 0.5
    noisy_check_tol: float = 0.05
    regress_factor: float = 2.0
    noisy_fit_rms: float = 2.0

    def __post_init__(self):
        for name in ("noisy_sign_tol", "noisy_check_tol", "regress_factor", "noisy_fit_rms"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")


class NoisyRegime:
    """Steps, tolerances and stages for answers with noise floor ``nf`` (sigma = a + r |f|).

    Tolerances are a few sigma wide; the search step is ``delta = T sqrt(sigma / |f|)`` at the
    far end of the line (the geometric middle between resolving nearby kinks and keeping the
    slopes' noise ``sigma / delta`` well below the kinks' slope jumps); the sign rounding is
    looser and the check loose until the regression has fitted the answers.
    """

    float64 = False

    def __init__(self, nf: NoiseFloor, cfg: NoisyConfig, *, t_max: float, slope_step: float,
                 check_tol: float, polish_tol: float):
        self.cfg = cfg
        ratio = float(nf.sigma(nf.scale_far) / max(nf.scale_far, 1e-300))
        delta = max(slope_step, np.sqrt(ratio)) * t_max
        self.tol = Tolerances(rel=3 * nf.relative, abs=3 * nf.absolute, delta=delta,
                              min_delta=delta * 1e-3, sign_tol=cfg.noisy_sign_tol,
                              check_tol=cfg.noisy_check_tol,
                              polish_tol=max(polish_tol, ratio))
        self.final_check_tol = max(check_tol, FINAL_CHECK_SIGMAS * nf.ratio)

    # ------------------------------------------------------------------ the driver's hooks
    def check_tol(self, run: Run) -> float:
        return self.tol.check_tol if run.model.regression is None else self.final_check_tol

    def start(self, run: Run) -> None:
        """After the first fit: orient the rows on the answers, regress now."""
        orient(run, self.cfg)
        regress_model(run, self.cfg)

    def settle(self, run: Run) -> Optional[Status]:
        """Enough clean check lines: regress once (then check again), or decide."""
        if run.model.regression is None:
            regress_model(run, self.cfg)
            run.report(stage="regression")
            return Status.UNVERIFIED if run.model.regression is None else None
        info = run.model.regression
        if info.final_rms > self.cfg.noisy_fit_rms:
            # check lines weigh the far, large answers; the regression's residual at Gaussian
            # points is the stricter test of a noisy model
            run.note(Kind.NOISY_RESIDUAL,
                     f"the regressed model leaves a weighted RMS residual of "
                     f"{info.final_rms:.3g} (1 = the noise floor) at its random points: a unit "
                     "is missing, spurious or imprecise", rms=float(info.final_rms))
            return Status.UNVERIFIED
        return Status.OK

    def units_added(self, run: Run) -> None:
        if add_units(run, self.cfg) and run.model.regression is not None:
            regress_model(run, self.cfg)         # new units join the regressed model

    # ------------------------------------------------------------------ extend's hooks
    def predicted_kinks(self, run, x0, v, t):
        if run.evidence.jumps:
            # a regression that still lacks a unit bends every row to make up for it; the rows
            # measured at the kinks are rougher but unbiased (errors grow with |t|)
            geo = Hyperplanes.of_rows(run.evidence.jump_rows())
            return geo.kinks(x0, v), 2 * self.tol.delta + KINK_SPREAD * np.abs(t)
        tol = max(1e-7 * run.t_max, 8 * self.tol.delta)
        return run.model.geometry().kinks(x0, v), tol + 0.0 * np.abs(t)

    def nothing_new(self, run: Run) -> bool:
        run.note(Kind.NOISY_DISAGREEMENT,
                 f"line {run.lines - 1}: answers disagree with the noisy model (relative "
                 f"{run.check_error:.2e}); no new unit on it", line=run.lines - 1,
                 check_error=run.check_error)
        return False

    def keep_new(self, run: Run, jumps: list) -> list:
        # noisy rows predict kinks loosely, so some candidates are known units: drop jumps
        # along a known unit's normal, and jumps that are not rank one (merged kinks)
        known = np.array([j.row[:-1] for j in run.evidence.jumps])
        return [j for j in jumps if j.rank_ratio < NEW_RANK_RATIO
                and (not known.size or np.abs(known @ j.row[:-1]).max() < NEW_MAX_COS)]


# ---------------------------------------------------------------------- stages
def draw_regression_points(run: Run, cfg: NoisyConfig) -> None:
    """Tops the regression's random points up to ``regress_factor * P / k`` (the points are
    drawn once and kept, so a refit after new units were found reuses them)."""
    net = run.model.network
    ev = run.evidence
    want = int(np.ceil(cfg.regress_factor * net.num_params / net.output_dim))
    need = want - ev.reg_x.shape[0]
    if run.remaining is not None:
        need = min(need, run.remaining - run.check_reserve)
    if need > 0:
        rng = np.random.default_rng([run.seed, 2, ev.reg_x.shape[0]])
        x = rng.normal(size=(need, run.d)) * run.input_scale
        ev.add_regression_answers(x, run.query("regression")(x))


def regress_model(run: Run, cfg: NoisyConfig) -> None:
    """Fits every parameter to the answers at random points (Gauss-Newton)."""
    ev, net = run.evidence, run.model.network
    if net is None or net.weights[0].shape[0] == 0:    # no unit found yet: nothing to fit
        return
    draw_regression_points(run, cfg)
    if ev.reg_y is None or ev.reg_x.shape[0] * net.output_dim < net.num_params:
        run.note(Kind.TOO_FEW_ANSWERS,
                 "too few answers left in the budget to regress the noisy model")
        return
    size = np.maximum(np.abs(ev.reg_y).max(1), 1e-2 * np.abs(ev.reg_y).max())
    net, info = regress.gauss_newton(net, ev.reg_x, ev.reg_y, run.nf.sigma(size))
    run.model = dataclasses.replace(run.model, network=net, regression=info)
    run.note(Kind.REGRESSED,
             f"regressed all parameters on {ev.reg_x.shape[0]} answers: {info.steps} "
             f"Gauss-Newton steps, weighted RMS residual {info.start_rms:.3g} -> "
             f"{info.final_rms:.3g} (1 = the noise floor)", steps=info.steps,
             rms=float(info.final_rms))
    _merge_duplicates(run, cfg)


def _merge_duplicates(run: Run, cfg: NoisyConfig) -> None:
    """A unit found twice (its two rows agree to within ``DUPLICATE_SIGMAS`` of their error
    estimates) becomes one, carrying both output weights; a unit whose row the answers do not
    determine (error estimate above ``UNDETERMINED``: a spurious kink whose output weights the
    regression drove to ~0) is dropped."""
    model = run.model
    net, info = model.network, model.regression
    err = info.unit_error
    if info.final_rms > cfg.noisy_fit_rms:   # not at the noise floor
        return
    w, b = net.weights[0], net.biases[0]
    norm = np.linalg.norm(w, axis=1)
    rows = np.concatenate([w, b[:, None]], 1) / np.where(norm > 0, norm, 1.0)[:, None]
    a2 = net.weights[1].copy()
    keep = err <= UNDETERMINED
    dropped = int((~keep).sum())
    if dropped:
        run.note(Kind.UNDETERMINED_DROPPED,
                 f"dropped {dropped} units the answers do not determine (row error estimate "
                 f"above {UNDETERMINED:g}: spurious kinks)", units=dropped)
    for i in range(w.shape[0]):
        for j in range(i + 1, w.shape[0]):
            if keep[i] and keep[j] and (np.abs(rows[i] - rows[j]).max()
                                        <= DUPLICATE_SIGMAS * max(err[i], err[j])):
                a2[:, i] += a2[:, j] * norm[j] / norm[i]
                keep[j] = False
    if keep.all():
        return
    if (~keep).sum() > dropped:
        run.note(Kind.DUPLICATES_MERGED,
                 f"merged {int((~keep).sum()) - dropped} units into others whose rows agree "
                 "within their error estimates (a unit found twice, or twins that this "
                 "precision cannot separate)", units=int((~keep).sum()) - dropped)
    run.model = dataclasses.replace(
        model, network=ReLUNetwork([w[keep], a2[:, keep]], [b[keep], net.biases[1]]),
        unit_src=model.unit_src[keep],
        regression=dataclasses.replace(info, unit_error=err[keep]))


def orient(run: Run, cfg: NoisyConfig) -> None:
    """The orientation of each row chosen by the answers themselves.

    The sign statistic ``rho`` of :mod:`fidelity.solve` rests on the affine term of the fit,
    which noisy rows (and a unit still missing) leave too rough to round. Starting from it,
    each row is flipped in turn and kept flipped when the least-squares output layer then
    explains the regression's answers better; no unit is split.
    """
    draw_regression_points(run, cfg)
    model = run.model
    rows = model.rows.copy()
    rows[model.signs.rho > 0.5] *= -1
    run.model = dataclasses.replace(model, network=_oriented(run, rows),
                                    unit_src=np.arange(rows.shape[0]),
                                    network_from=run.evidence.version)


def add_units(run: Run, cfg: NoisyConfig) -> bool:
    """Adds the units of jumps found since the network was built.

    A regression that lacked a unit bent every other row to make up for it, and does not unbend
    from there; so the network restarts from the rows measured at the kinks (rough but
    unbiased), all oriented again on the regression's answers (``c relu(z)`` and
    ``c relu(-z) + c z`` kink alike), and the regression then refits everything. True when
    units were added.
    """
    ev = run.evidence
    if run.model.network_from == ev.version:
        return False
    if ev.reg_y is None:      # answers to choose orientations by: the regression's
        draw_regression_points(run, cfg)
    run.model = dataclasses.replace(run.model, network=_oriented(run, ev.jump_rows()),
                                    unit_src=np.arange(len(ev.jumps)),
                                    network_from=ev.version)
    return True


def _oriented(run: Run, rows: np.ndarray) -> ReLUNetwork:
    """Greedy flips of ``rows`` that lower the output layer's residual on the regression's
    answers, and the network with that output layer."""
    rows = rows.copy()
    x, y = run.evidence.reg_x, run.evidence.reg_y

    def rss(r):
        design = np.concatenate([np.maximum(x @ r[:, :-1].T + r[:, -1], 0.0),
                                 np.ones((x.shape[0], 1))], 1)
        sol, *_ = np.linalg.lstsq(design, y, rcond=None)
        return float(((design @ sol - y) ** 2).sum())

    best = rss(rows)
    for _ in range(ORIENT_SWEEPS):
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
