"""The extraction driver: noise floor -> first line -> fit -> check lines (extend) -> settle.

Each step is a stage module; this file only orders them (see README, *How it works*):

* noise floor (:mod:`fidelity.noise`) picks the regime (:mod:`fidelity.regimes`);
* the first line is searched and its regions measured (:mod:`fidelity.measure`), and the
  model fitted (:mod:`fidelity.fit`);
* fresh check lines compare answers with the model; a disagreeing one is searched for new
  units (:mod:`fidelity.checks`);
* once enough lines agree, the regime settles the model (float64: the polish of
  :mod:`fidelity.polish`; noisy answers: the regression of :mod:`fidelity.noisy`);
* an oracle that answers in mpmath may then refine flagged units (:mod:`fidelity.mp`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Optional

import jax
import numpy as np

from . import checks, deep, estimates, fit, measure, mp, noise, probabilities
from .config import ExtractConfig
from .context import Run
from .curvature import curvature
from .errors import FidelityError, QueryBudgetExceeded, UnsupportedArchitecture
from .oracle import Oracle
from .probabilities import SaturatedProbabilities
from .regimes import make_regime
from .results import Event, Extraction, ExtractionError, Kind, NeuronInfo, Status

log = logging.getLogger("fidelity")

# softmax answers that saturate inside the planned domain: restarts in a domain 4x smaller
SATURATION_RESTARTS = 2
# probability answers: the polish spends at least this share of the queries (see
# _probability_config)
PROBABILITY_POLISH_FRAC = 0.38


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
        **options: fields of :class:`ExtractConfig` or of its stages' configs, by name.

    Returns:
        An :class:`Extraction`; its ``network`` equals the victim up to permutation and positive
        scaling of hidden units.

    Raises:
        QueryBudgetExceeded: the budget ran out; ``.result`` is the partial extraction.
        OracleError: the victim answered NaN/inf or a wrong shape, or answers labels only.
        JournalError: ``journal`` was written by another run (seed, options or victim).
        UnsupportedArchitecture: the hidden layer cannot be recovered exactly.
        TypeError, ValueError: an unknown option, or one out of range.

    Example:
        >>> victim = ReLUNetwork.random(0, [10, 8, 1])
        >>> result = extract(Oracle(victim))
        >>> result.hidden_size
        8
    """
    cfg = ExtractConfig.from_options(**options)
    if not isinstance(oracle, Oracle):
        raise TypeError("extract needs a fidelity.Oracle; wrap the victim in Oracle(...)")
    if precision not in ("auto", "float64", "mp"):
        raise ValueError(f"precision must be 'auto', 'float64' or 'mp', got {precision!r}")
    if precision == "mp" and oracle.precision != "mp":
        raise ValueError("precision='mp' needs an oracle made with Oracle(..., precision='mp')")
    oracle.require_scores()
    if journal is not None:
        oracle.attach_journal(journal)
    t_max = cfg.t_max(oracle.input_dim)
    run = Run(oracle, seed=seed, t_max=t_max, input_scale=cfg.input_scale,
              step_cap=cfg.measure.step_max * cfg.input_scale,
              check_reserve=cfg.patience * cfg.check_points,
              crossing_rel_error=cfg.fit.crossing_rel_error, progress=progress)
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        try:
            nf = None if oracle.answers == "softmax" else _noise_floor(run, cfg)
            for restart in range(SATURATION_RESTARTS + 1):
                try:
                    if oracle.answers == "softmax":   # probabilities: lines kept unsaturated
                        cfg = _probability_domain(run, cfg, restart)
                        nf = probabilities.rounded_noise(_noise_floor(run, cfg), oracle.quantum)
                    try:
                        status = _drive(run, cfg, nf)
                    except UnsupportedArchitecture as exc:   # the one-layer signs are singular
                        run.layers = _deepen(run, cfg, str(exc))
                        if run.layers is None:
                            # say that depth was tried too: a deep victim refused with the
                            # one-layer message alone read as an expansive one-layer net
                            raise UnsupportedArchitecture(
                                f"{exc}; tried layer by layer as a deeper network too, but no "
                                "kink fit a unit of a second layer") from exc
                    break
                except SaturatedProbabilities as exc:   # a row underflowed all the same
                    if restart == SATURATION_RESTARTS:
                        raise
                    run.note(Kind.PROBABILITIES, f"{exc}; restarting in a domain 4x smaller")
                    _restart(run)
            if run.layers is not None:
                return _deep_result(run, cfg, run.layers, t0, throw, precision)
        except QueryBudgetExceeded as exc:
            if run.deep_partial is not None:
                raise QueryBudgetExceeded(str(exc), result=_deep_partial(run, t0)) from None
            ev, model = run.evidence, run.model
            if ev.jumps and (model.network is None or model.stale(ev.version)):
                try:  # fit what was measured before the budget ran out
                    fit.fit(run, cfg.fit)
                except FidelityError:
                    pass
            partial = _summarize(run, Status.PARTIAL, t0)
            raise QueryBudgetExceeded(str(exc), result=partial) from None
    unexplained = run.count(Kind.NO_NEW_KINK)
    if unexplained:
        run.note(Kind.UNIT_MAY_BE_MISSING,
                 f"{unexplained} check lines disagreed without a new kink: a unit too small to "
                 "locate (output weights below ~1e-6 of the largest) or never crossed by a line "
                 f"may be missing; the model's last check error is {run.check_error:.1e}",
                 lines=unexplained)
    result = _summarize(run, status, t0)
    worst = checks.disagreement(run, result.network) \
        if status == Status.OK and run.nf.float64 else None
    if worst is not None:
        # the last check lines agreed, but an earlier one's answers still disagree with the
        # final network by more than that line allowed: not verified
        run.note(Kind.CHECKS_DISAGREE,
                 f"the final network disagrees with earlier check answers by {worst[0]:.1e} "
                 f"of their range, more than they allowed ({worst[1]:.1e})", error=worst[0],
                 allowed=worst[1])
        status = Status.UNVERIFIED
        result = _summarize(run, status, t0)
    if status == Status.OK and run.nf.float64:
        status = _point_verdict(run, cfg)
        if run.layers is not None:     # the fresh answers showed a deeper victim
            return _deep_result(run, cfg, run.layers, t0, throw, precision)
        result = _summarize(run, status, t0)
    if status == Status.OK and oracle.precision == "mp" and precision != "float64":
        result = _escalate(result, oracle, precision, dps, seed, cfg, t0)
    if status != Status.OK:
        log.warning("extraction ended with status %s: %s", status, "; ".join(result.notes))
        if throw:
            raise ExtractionError(
                f"extraction could not be verified after {cfg.max_lines} lines "
                f"(check error {run.check_error:.2e}); pass throw=False to get the result",
                result)
    return result


def _drive(run: Run, cfg: ExtractConfig, nf: noise.NoiseFloor) -> Status:
    """The stages in order; the status the checks end with."""
    regime = make_regime(nf, cfg, run.t_max)
    run.nf, run.tol = nf, regime.tol
    x0, v = run.new_line()
    kinks = measure.search_line(run, x0, v, max_rounds=cfg.measure.max_rounds,
                                use_jit=cfg.jit_search)
    run.report(stage="search", kinks=int(kinks.t.size))
    measure.measure_line(run, cfg.measure, x0, v, kinks)
    fit.fit(run, cfg.fit)
    run.report(stage="fit")
    regime.start(run)
    clean = 0
    while run.lines < cfg.max_lines:
        ok, x0, v = checks.check_line(run, cfg.check_points, regime.check_tol(run),
                                         spread=regime.float64)
        if ok:
            clean += 1
            if clean >= cfg.patience:
                status = regime.settle(run)
                if status is not None:
                    return status
                clean = cfg.patience - 1          # the settled model is checked once more
            continue
        clean = 0
        grew = checks.extend(run, regime, cfg.measure, x0, v, cfg.jit_search)
        if run.bent and not run.deep_tried:    # the boundaries bend: layer by layer (once)
            run.deep_tried = True
            run.layers = _deepen(run, cfg, run.bent)
            if run.layers is not None:
                return Status.OK       # extract builds the deep result from run.layers
        if grew:                       # (otherwise one hidden layer after all: go on)
            regime.units_added(run)
        run.report(stage="extend")
    return Status.UNVERIFIED


def _deepen(run: Run, cfg: ExtractConfig, why: str, aims=None, known=None,
            candidates=None):
    """One hidden layer did not explain the victim (its boundaries bend, or its signs could
    not be resolved): try the layer-by-layer recovery of :mod:`fidelity.deep` (float64 answers
    only). None when the victim has one hidden layer after all (the one-layer verdict
    stands)."""
    if not run.nf.float64:
        raise UnsupportedArchitecture(
            f"{why}; a deeper victim would need float64 answers (these are noisier)")
    out = deep.extract_layers(run, cfg.deep, cfg.measure, cfg.jit_search, aims,
                              known, candidates)
    if out is None:
        run.note(Kind.DEEP, f"{why}; but no kink fits a second layer: one hidden layer, the "
                 "one-layer verdict stands")
    else:
        run.note(Kind.DEEP, f"{len(out[2])} hidden layers (widths "
                 f"{[i.width for i in out[2]]}), recovered layer by layer",
                 widths=[i.width for i in out[2]])
    return out


def _deep_result(run: Run, cfg: ExtractConfig, layers, t0: float, throw: bool,
                 precision: str) -> Extraction:
    net, check_error, infos = layers
    run.check_error = check_error
    if run.oracle.precision == "mp" and precision != "float64":
        run.note(Kind.DEEP, "mp refinement supports one hidden layer: the deep network is "
                 "float64")
    status = Status.OK if check_error <= cfg.deep.check_tol else Status.UNVERIFIED
    bound, points, resolution = checks.output_bound(run, net)
    result = Extraction(
        network=net, queries=run.oracle.queries, hidden_size=net.weights[0].shape[0],
        status=status, stage_queries=dict(run.stage), neurons=(), lines=run.lines,
        check_error=check_error, events=tuple(run.events),
        seconds=time.perf_counter() - t0, noise=run.nf, layers=infos, output_error=bound,
        output_error_points=points, resolution=resolution)
    if status != Status.OK and throw:
        raise ExtractionError(f"the deep network could not be verified (check error "
                              f"{check_error:.2e}); pass throw=False to get the result", result)
    return result


def _deep_partial(run: Run, t0: float) -> Extraction:
    """The budget ran out during the layer-by-layer recovery: no network (its output layer was
    not fitted; the one-layer model is not the victim's shape), the layers found so far."""
    infos = run.deep_partial
    run.note(Kind.DEEP, f"the budget ran out during the layer-by-layer recovery, with "
             f"{len(infos)} hidden layers found so far (widths {[i.width for i in infos]}, the "
             "last possibly incomplete) and no output layer: no network is returned",
             widths=[i.width for i in infos])
    return Extraction(network=None, queries=run.oracle.queries, hidden_size=0,
                      status=Status.PARTIAL, stage_queries=dict(run.stage), lines=run.lines,
                      events=tuple(run.events), seconds=time.perf_counter() - t0,
                      noise=run.nf, layers=infos)


def _restart(run: Run) -> None:
    """Forgets what ``run`` measured (its queries, stage counts and events stay)."""
    fresh = Run(run.oracle, seed=run.seed, t_max=run.t_max, input_scale=run.input_scale,
                step_cap=run.step_cap, check_reserve=run.check_reserve,
                crossing_rel_error=run.crossing_rel_error, progress=run.progress)
    fresh.events, fresh.stage = run.events, run.stage
    vars(run).update(vars(fresh))


def _probability_domain(run: Run, cfg: ExtractConfig, restart: int = 0) -> ExtractConfig:
    """Softmax answers: where the lines may go before probabilities underflow (see
    :func:`fidelity.probabilities.plan_domain`); the config and run follow it. A restart after
    a saturated row divides the planned domain by 4 (per restart) instead."""
    oracle = run.oracle
    # a noise floor measured before the answers were known to be probabilities is not theirs
    run.events[:] = [e for e in run.events if e.kind != Kind.NOISY_ANSWERS]
    if restart:
        t_max, scale = cfg.t_max(run.d) / 4, cfg.input_scale
        if t_max < 3 * scale * np.sqrt(run.d):
            scale /= 4
        run.t_max, run.input_scale = t_max, scale
        run.step_cap = cfg.measure.step_max * scale
        return _probability_config(cfg, t_max, scale)

    def ask(x):
        run.stage["noise"] += x.shape[0]
        return oracle.scores(x)

    rng = np.random.default_rng([run.seed, 2])
    limit = probabilities.spread_limit(oracle.quantum, oracle.output_dim or 2)
    t_max, scale, info = probabilities.plan_domain(ask, run.d, cfg.input_scale, run.t_max, rng,
                                                   limit=limit)
    how = "detected: rows non-negative, summing to 1" if oracle.detected else "declared"
    rounded = f", rounded to steps of {oracle.quantum:g}" if oracle.quantum else ""
    moved = "" if (t_max, scale) == (run.t_max, cfg.input_scale) else (
        f"; lines shortened to half-length {t_max:.3g} (origins at scale {scale:.3g}) to keep "
        f"the logits' spread below {limit:.3g}, where no probability " + (
            "underflows" if not oracle.quantum else
            f"falls below {probabilities.floor(oracle.quantum):.2g}"))
    run.note(Kind.PROBABILITIES,
             f"answers are class probabilities ({how}{rounded}): extracted from their centred "
             "logarithms, so the network's logits equal the victim's minus their mean over "
             f"classes (same probabilities, same labels){moved}",
             detected=oracle.detected, quantum=oracle.quantum, t_max=t_max, input_scale=scale,
             **info)
    run.t_max, run.input_scale = t_max, scale
    run.step_cap = cfg.measure.step_max * scale
    return _probability_config(cfg, t_max, scale)


def _probability_config(cfg: ExtractConfig, t_max: float, scale: float) -> ExtractConfig:
    """The lines of the probability domain, and a larger polish (at least
    :data:`PROBABILITY_POLISH_FRAC` of the queries): probabilities are asked equal to 1e-10 on
    inputs far out, where the trained digits 784-64-10 (training seeds 0 and 1) were off by
    1.6e-10 and 1.8e-10 after the default polish (0.1), and by 5.0e-11 and 2.2e-11 with 0.3,
    at 1.19x the queries (1.31x the logit extraction's). 784-128-10 (training seed 1) was
    still off by 2.0e-10 with 0.3; with 0.38 by 8.4e-11, at 1.42x the logit queries (the
    other 784-wide victims of ``benchmarks/softmax.py``: 1.28x to 1.47x)."""
    polish = dataclasses.replace(cfg.polish, polish_frac=max(cfg.polish.polish_frac,
                                                             PROBABILITY_POLISH_FRAC))
    return dataclasses.replace(cfg, line_length=t_max, input_scale=scale, polish=polish)


def _noise_floor(run: Run, cfg: ExtractConfig) -> noise.NoiseFloor:
    """Measures the answers' noise floor (its own random stream: the lines stay the same). It
    is the first query: when it shows softmax answers, it is measured again once their domain
    is known (rows that saturated are zeros here, never used)."""
    if not cfg.detect_noise:
        return noise.NoiseFloor.exact()
    rng = np.random.default_rng([run.seed, 1])
    seen = []

    def ask(pts):     # known probabilities must not saturate; the first answers may
        y, bad = (run.oracle(pts), np.zeros(len(pts), bool)) if run.oracle.answers == \
            "softmax" else run.oracle.scores(pts)
        run.stage["noise"] += pts.shape[0]
        seen.append((pts, y, bad))
        return np.where(bad[:, None], 0.0, y)

    def measured():   # along a line of its own, drawn from rng
        x = rng.normal(size=run.d) * cfg.input_scale
        v = rng.normal(size=run.d)
        v /= np.linalg.norm(v)
        return noise.measure(ask, x, x + run.t_max * v, v,
                             spacing=1e-2 * cfg.input_scale, rng=rng), v

    nf, v = measured()
    pts, y, bad = seen[0]
    for seg in (slice(0, nf.queries // 2), slice(nf.queries // 2, nf.queries)):
        why = None if bad[seg].any() else curvature(pts[seg] @ v, y[seg])
        if why:      # a smooth activation: no kink to find
            raise UnsupportedArchitecture(
                f"the victim is not piecewise linear ({why}): a smooth activation (softplus, "
                "GELU, ...) has no kinks, so no ReLU network equals it; direct recovery is "
                "refused (fidelity.learn can fit a surrogate)")
    if not nf.float64 and nf.ratio <= noise.SECOND_LOOK:
        # float64 rounding measured on one line scatters with the answers' cancellation there
        # (random 80-40-20-1 s105: 2.6e-14 on the first line, 2e-16-5e-14 on seven others,
        # and refused as noisy answers), while rounding to decimals reads alike on every line
        # (a 64-16-10 rounded to 12 decimals: 5.6e-14-1.2e-13): a second line, the lower kept
        again = measured()[0]
        kept = again if again.ratio < nf.ratio else nf
        nf = dataclasses.replace(kept, queries=nf.queries + again.queries)
    if not nf.float64:
        run.note(Kind.NOISY_ANSWERS,
                 f"answers are noisier than float64: sigma = {nf.absolute:.2g} + "
                 f"{nf.relative:.2g} |f| (about {nf.bits:.0f} bits); steps and tolerances "
                 "follow from it", absolute=nf.absolute, relative=nf.relative)
    return nf


def _point_verdict(run: Run, cfg: ExtractConfig) -> Status:
    """A one-layer model that its check lines confirmed, checked on the deep check's fresh
    inputs (:data:`fidelity.checks.POINT_RADII`): a few lines can miss where a deeper unit
    switches. Random 10-3-3-2-2 s6775, flat on 91% of inputs, came back 'ok' and affine after
    95 queries; random 6-3-2-1 s3014, whose layer-2 unit is off for 1-4% of inputs, 'ok' with
    3 units and 3e-2 off. Where the answers are far off (more than ``deep.AIM_ABOVE`` times
    the tolerance), the layer-by-layer recovery is tried from lines through those inputs
    (``run.layers`` holds its network when it succeeds)."""
    n, tol, net = cfg.deep.check_points, cfg.deep.check_tol, run.model.network
    units = net.weights[0].shape[0]
    model = f"the one-layer model ({units} units)" if units else "the affine model"
    if run.remaining is not None and run.remaining < n:
        run.note(Kind.UNIT_MAY_BE_MISSING, f"the budget left no room for the {n} fresh "
                 f"answers that would check {model}: not verified")
        return Status.UNVERIFIED
    radii = checks.POINT_RADII
    if run.oracle.answers == "softmax":   # probabilities: where the lines kept them unsaturated
        reach = run.t_max / (run.input_scale * np.sqrt(run.d))
        radii = tuple(min(r, reach) for r in radii)
    x = checks.fresh_points(run, n, radii)
    y, err = checks.point_error(run, net, x, tol)
    wrong = int((err > tol).sum())
    if not wrong:
        return Status.OK
    far = np.argsort(-err)[:int((err > deep.AIM_ABOVE * tol).sum())]
    run.note(Kind.UNIT_MAY_BE_MISSING, f"the check lines agreed, but {wrong} of {n} fresh "
             f"answers disagree with {model} (up to {err.max():.1e} of the largest): units "
             "that no line revealed (a deeper victim?)", inputs=wrong)
    if far.size and not run.deep_tried:
        run.deep_tried = True
        try:
            run.layers = _deepen(run, cfg, "fresh answers disagree with one hidden layer",
                                 aims=x[far[:deep.AIM_LINES]], known=(x, y),
                                 candidates=np.column_stack([net.weights[0], net.biases[0]]))
        except UnsupportedArchitecture as exc:    # the one-layer model is what there is
            run.note(Kind.DEEP, f"the layer-by-layer recovery was tried and refused: {exc}; "
                     f"{model} is returned, not verified")
    return Status.UNVERIFIED


def _summarize(run: Run, status: Status, t0: float) -> Extraction:
    """The frozen result of ``run``, with per-unit diagnostics."""
    model, jumps = run.model, run.evidence.jumps
    net = model.network
    infos = []
    if net is not None and model.signs is not None:
        flag = np.maximum(estimates.ls_error(run, with_bias=True), estimates.unit_error(run))
        w, a2 = net.weights[0], net.weights[1]
        regressed = model.regression is not None
        if regressed:                 # the regression's own estimate, per network unit
            est = model.regression.unit_error
        else:   # the bootstrap of the last fit; the conservative figure where there is none
            inputs = fit.final_inputs(run)
            est = flag if inputs is None else estimates.reported_error(run, inputs)
        for i, src in enumerate(model.unit_src):
            j = jumps[src] if src < len(jumps) else None
            infos.append(NeuronInfo(
                line=j.line if j else -1, t=j.t if j else float("nan"),
                rank_ratio=j.rank_ratio if j else float("nan"),
                rho=_at(model.signs.rho, src),
                row_change=_at(model.row_change, src),
                fit_residual=_at(model.fit_resid, src),
                out_weight=float(np.abs(a2[:, i]).max() * np.linalg.norm(w[i])),
                error_estimate=float(est[i] if regressed else est[src])
                if src < est.size else float("nan"),
                anchored=int(src) in model.anchors,
                flag_estimate=float(flag[src]) if not regressed and src < flag.size
                else float("nan"),
                rank_two=float("nan") if model.rank_two is None or a2.shape[0] == 1
                else _at(model.rank_two, src)))
    bound, points, resolution = checks.output_bound(run, net)
    return Extraction(
        network=net, queries=run.oracle.queries,
        hidden_size=0 if net is None else net.weights[0].shape[0], status=status,
        stage_queries=dict(run.stage), neurons=tuple(infos), lines=run.lines,
        check_error=run.check_error, events=tuple(run.events),
        seconds=time.perf_counter() - t0, noise=run.nf, output_error=bound,
        output_error_points=points, resolution=resolution)


def _at(values: np.ndarray, i: int) -> float:
    """``values[i]``, NaN past the end (units added after the last finite-difference fit)."""
    return float(values[i]) if i < values.size else float("nan")


def _escalate(result: Extraction, oracle: Oracle, precision: str, dps: int, seed: int,
              cfg: ExtractConfig, t0: float) -> Extraction:
    """Refines all units (``precision='mp'``) or the flagged ones (``'auto'``) in mpmath."""
    units = None
    if precision == "auto":
        units = [i for i, n in enumerate(result.neurons)
                 if (n.error_estimate if np.isnan(n.flag_estimate) else n.flag_estimate)
                 > cfg.polish.polish_tol]
        if not units:
            return result
        if len(units) == len(result.neurons):
            units = None              # all of them: the output bias is refined too
    try:
        out = mp.refine(result, oracle, dps=dps, units=units, seed=seed,
                        input_scale=cfg.input_scale, step_max=cfg.measure.step_max)
    except QueryBudgetExceeded as exc:
        raise QueryBudgetExceeded(str(exc), result=exc.result) from None
    if precision == "auto":
        flagged = "all units" if units is None else f"units {units}"
        out = dataclasses.replace(out, events=out.events + (Event(
            Kind.MP_REFINED, f"{flagged} were flagged as imprecise in float64 and refined in "
            f"mp ({dps} digits)", {"units": units}),))
    return dataclasses.replace(out, seconds=time.perf_counter() - t0)
