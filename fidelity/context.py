"""The state one extraction carries between stages: oracle ledger, random stream, tolerances,
events, evidence and the current model (private to :func:`fidelity.extract`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .errors import QueryBudgetExceeded
from .evidence import Evidence
from .model import Model
from .noise import NoiseFloor
from .oracle import Oracle
from .results import Event, Kind

STAGES = ("noise", "search", "gradients", "regression", "checks", "precision", "output")


@dataclass(frozen=True)
class Tolerances:
    """What the answers are trusted to, and the steps that follow (set by the regime).

    An answer of size ``s`` is trusted to ``abs + rel * s``; ``delta`` and ``min_delta`` are the
    search's slope step and resolution; the others are the sign rounding, the check lines'
    relative tolerance and the polish's threshold on a unit's estimated error.
    """

    rel: float
    abs: float
    delta: float
    min_delta: float
    sign_tol: float
    check_tol: float
    polish_tol: float

    def __call__(self, scale):
        return self.abs + self.rel * np.asarray(scale)


class Run:
    """Mutable bookkeeping of one extraction.

    Args:
        oracle: the counting oracle (the only access to the victim).
        seed: seeds the run's random stream (lines, check points, placements).
        t_max: half-length of the search lines.
        input_scale: spread of the inputs (line origins, placements).
        step_cap: largest coordinate step of a gradient.
        check_reserve: rows kept back for the check lines when a budget is set.
        crossing_rel_error: assumed relative error of the rows used for crossing corrections
            (weights regions, and bounds the error of units beside squeezed kinks).
        progress: optional callback receiving a dict after each stage.
    """

    def __init__(self, oracle: Oracle, *, seed: int, t_max: float, input_scale: float,
                 step_cap: float, check_reserve: int, crossing_rel_error: float,
                 progress: Optional[Callable[[dict], None]] = None):
        self.oracle = oracle
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.d = oracle.input_dim
        self.t_max = t_max
        self.input_scale = input_scale
        self.step_cap = step_cap
        self.check_reserve = check_reserve
        self.crossing_rel_error = crossing_rel_error
        self.progress = progress
        self.stage = {s: 0 for s in STAGES}
        self.lines = 0
        self.drawn: list[tuple[np.ndarray, np.ndarray]] = []   # every line, in order
        self.events: list[Event] = []
        self.evidence = Evidence(self.d)
        self.model = Model.empty(self.d)
        self.nf = NoiseFloor.exact()
        self.tol: Optional[Tolerances] = None
        self.check_error = float("nan")
        self.bent: Optional[str] = None  # why a check line says the victim is deeper
        self.deep_tried = False          # the layer-by-layer recovery was tried (once at most)
        self.layers = None               # its result: (network, check error, layer infos)
        self.deep_partial = None         # its layer infos when the budget ran out in it
        # every check line's groups: ("far" | "near", points, answers, tolerance applied)
        self.check_log: list[tuple[str, np.ndarray, np.ndarray, float]] = []

    # ------------------------------------------------------------------ queries
    def query(self, stage: str) -> Callable[[np.ndarray], np.ndarray]:
        """The oracle, counting rows under ``stage``."""
        def q(x):
            y = self.oracle(x)
            self.stage[stage] += x.shape[0]
            return y
        return q

    @property
    def remaining(self) -> Optional[int]:
        return self.oracle.remaining

    def room(self, rows: int) -> bool:
        """True when ``rows`` more fit in the budget with the check lines' reserve kept."""
        return self.remaining is None or self.remaining >= rows + self.check_reserve

    def out_of_budget(self, doing: str) -> QueryBudgetExceeded:
        return QueryBudgetExceeded(f"budget of {self.oracle.budget} rows ran out {doing}")

    # ------------------------------------------------------------------ lines
    def new_line(self, radius: float = 1.0,
                 origin: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """A random line: origin ``~ N(0, (radius input_scale)^2 I)`` (or ``origin``), unit
        direction."""
        x0 = self.rng.normal(size=self.d) * self.input_scale
        if radius != 1.0:
            x0 = x0 * radius
        if origin is not None:          # (drawn all the same: later lines stay as they were)
            x0 = np.array(origin, dtype=float)
        v = self.rng.normal(size=self.d)
        self.lines += 1
        v = v / np.linalg.norm(v)
        self.drawn.append((x0, v))
        return x0, v

    # ------------------------------------------------------------------ reporting
    def note(self, kind: Kind, message: str, **data) -> None:
        self.events.append(Event(kind, message, data))

    def count(self, kind: Kind) -> int:
        return sum(e.kind == kind for e in self.events)

    def report(self, **info) -> None:
        if self.progress is not None:
            self.progress(dict(queries=self.oracle.queries, budget=self.oracle.budget,
                               neurons=len(self.evidence.jumps), lines=self.lines, **info))
