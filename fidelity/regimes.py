"""The two regimes of an extraction, behind one interface: float64 answers and noisy ones.

The driver's loop (:func:`fidelity.pipeline.extract`) is the same for both; a regime says what
its answers are trusted to (:class:`~fidelity.context.Tolerances`), what follows the first fit,
what a verified model still needs (``settle``), what to do when units are added, and how a
disagreeing check line is read (the hooks of :func:`fidelity.checks.extend`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Protocol, Union

import numpy as np

from . import checks, fit, polish, search, twins
from .config import ExtractConfig
from .context import Run, Tolerances
from .geometry import Hyperplanes
from .measure import own_miss
from .noise import NoiseFloor
from .noisy import NoisyRegime
from .results import Kind, Status

# a kink within max(KINK_MATCH t_max, 8 delta) of a unit's predicted kink is that unit's
KINK_MATCH = 1e-7
# a new jump whose row matches a known one to this (max abs, up to sign) is that unit again
KNOWN_ROW = 1e-4
# ... and one that matches to this may still be that unit, measured roughly once: see
# :func:`_same_unit`
SAME_UNIT = 1e-2
# a row passes through a kink when it places it within this (times t_max) on its line
SAME_KINK = 1e-7


class Regime(Protocol):
    """What the driver asks of a regime (besides the hooks of :class:`fidelity.checks.Extender`)."""

    float64: bool
    tol: Tolerances

    def check_tol(self, run: Run) -> float: ...
    def start(self, run: Run) -> None: ...
    def settle(self, run: Run) -> Optional[Status]: ...
    def units_added(self, run: Run) -> None: ...


class Float64Regime:
    """Answers exact to float64 rounding: the configured tolerances; a verified model is
    polished once (and again after units are added), twins are measured apart or merged."""

    float64 = True

    def __init__(self, cfg: ExtractConfig, t_max: float):
        self.cfg = cfg
        delta = cfg.measure.slope_step * t_max
        self.tol = Tolerances(rel=cfg.measure.noise_factor * search.EPS, abs=0.0, delta=delta,
                              min_delta=delta * 1e-6, sign_tol=cfg.fit.sign_tol,
                              check_tol=cfg.check_tol, polish_tol=cfg.polish.polish_tol)
        self.polished = False
        self.polished_again = False
        self.precision: Optional[tuple[set, bool]] = None   # the precision line, once run

    def check_tol(self, run: Run) -> float:
        return self.tol.check_tol

    def start(self, run: Run) -> None:
        pass

    def settle(self, run: Run) -> Optional[Status]:
        """Enough clean check lines: polish once (then check again), or decide."""
        cfg = self.cfg
        if not self.polished:
            self.polished = True
            lined = False
            if self.precision is None:
                self.precision = polish.precision_line(
                    run, cfg.polish, cfg.measure.max_rounds, cfg.measure.step_frac,
                    cfg.jit_search)
                lined = self.precision is not None and self.precision[1]
            missed = None if self.precision is None else self.precision[0]
            # the precision line's regions join the polish's final fit
            if polish.polish(run, cfg.polish, missed) or lined:
                fit.fit(run, cfg.fit, final=True)
                run.report(stage="polish")
                return None                      # the polished model is checked once more
            fit.fit(run, cfg.fit, final=True)    # no new answers: refit only
        elif not self.polished_again:
            # the check answers so far still miss by more than ``again_above`` of their range
            # (PolishConfig): the least precise units get a larger share once more (combined
            # 50-12-1 s28: 1.2e-9 of the range after one polish of one unit, 6e-12 after all)
            self.polished_again = True
            bound = checks.output_bound(run, run.model.network)[0]
            again = dataclasses.replace(cfg.polish, polish_frac=cfg.polish.again_frac)
            if bound > cfg.polish.again_above and polish.polish(run, again, None):
                fit.fit(run, cfg.fit, final=True)
                run.report(stage="polish")
                return None
        twins.name_rank_two(run)
        return Status.OK

    def units_added(self, run: Run) -> None:
        fit.fit(run, self.cfg.fit)
        self.polished = False                    # the new model is polished again

    # ------------------------------------------------------------------ extend's hooks
    def predicted_kinks(self, run, x0, v, t):
        # one boundary per unit of the unsigned model (the network holds a unit whose sign is
        # undecided twice, as relu(z) and relu(-z): two predictions of one kink)
        # ... and where the rows measured at their kinks put them, where that differs: a fit
        # over lines on which some units are still unknown (on or off along a whole line) can
        # move every row. On short lines (probabilities, whose domain ends where they
        # underflow) a trained 784-64-10 had 47 of 47 kinks of a line unexplained by 62
        # fitted rows, all of them known units: 37k queries to measure them again
        tol = max(KINK_MATCH * run.t_max, 8 * self.tol.delta)
        pred = run.model.geometry().kinks(x0, v)
        jumps = run.evidence.jumps
        if jumps:
            measured = Hyperplanes.of_rows(run.evidence.jump_rows()).kinks(x0, v)
            if measured.size == pred.size:
                with np.errstate(invalid="ignore"):
                    measured = measured[~(np.abs(measured - pred) <= tol)]
            pred = np.concatenate([pred, measured])
        return pred, tol + 0.0 * np.abs(t)

    def nothing_new(self, run: Run) -> bool:
        if twins.separate_twins(run, self.cfg.measure.max_rounds) or twins.merge_twins(run):
            return True
        run.note(Kind.NO_NEW_KINK,
                 f"line {run.lines - 1}: answers disagree with the model (relative "
                 f"{run.check_error:.2e}) but no new kink was found", line=run.lines - 1,
                 check_error=run.check_error)
        return False

    def keep_new(self, run: Run, jumps: list) -> list:
        # a known unit whose row is still rough can kink just outside the tolerance: its jump
        # repeats a known row (and would make the fit rank-deficient); drop it. A row a few
        # 1e-3 off may still be a known unit's: then the row that passes through both kinks
        # is kept (a region that held a kink too small for the search gives a rough jump)
        kept = []
        for j in jumps:
            known = run.evidence.jump_rows()
            if known.size:
                diff = np.abs(np.abs(known) - np.abs(j.row)).max(1)
                i = int(np.argmin(diff))
                if diff[i] <= KNOWN_ROW:
                    continue
                same = _same_unit(run, run.evidence.jumps[i], j) if diff[i] <= SAME_UNIT \
                    else None
                if same == "new":
                    old = run.evidence.jumps[i]
                    run.evidence.replace_jump(i, j)
                    run.note(Kind.REMEASURED,
                             f"unit {i} (line {old.line}) was measured again on line {j.line}: "
                             f"its first row was off by {diff[i]:.1e} (a kink too small to find "
                             "lay beside it) and is replaced", unit=i, row_change=float(diff[i]))
                if same is not None:
                    continue
            kept.append(j)
        return kept


def _same_unit(run: Run, old, new) -> Optional[str]:
    """Whether jump ``new`` is the unit of jump ``old`` measured again, and which of the two
    rows to keep: ``"new"`` when only its row passes through both kinks, ``"old"`` when
    ``old``'s row passes through ``new``'s kink (a line crosses a hyperplane once: distinct
    units kink apart), None for another unit."""
    def miss(row, jump) -> float:
        if not 0 <= jump.line < len(run.drawn):
            return np.inf             # a line this run did not draw
        return own_miss(row, *run.drawn[jump.line], jump.t)

    tol = SAME_KINK * run.t_max
    old_there, new_there = miss(old.row, new), miss(new.row, old)
    if new_there <= tol and miss(new.row, new) <= tol and old_there > 10 * tol:
        return "new"
    if old_there <= tol:
        return "old"
    return None


def make_regime(nf: NoiseFloor, cfg: ExtractConfig,
                t_max: float) -> Union[Float64Regime, NoisyRegime]:
    """The regime for answers with noise floor ``nf``."""
    if nf.float64:
        return Float64Regime(cfg, t_max)
    return NoisyRegime(nf, cfg.noisy, t_max=t_max, slope_step=cfg.measure.slope_step,
                       check_tol=cfg.check_tol, polish_tol=cfg.polish.polish_tol)
