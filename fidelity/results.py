"""What an extraction returns: the frozen result, per-unit diagnostics, status and events."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .errors import FidelityError
from .network import ReLUNetwork
from .noise import NoiseFloor


class Status(str, enum.Enum):
    """How an extraction ended. A ``str`` enum: ``result.status == "ok"`` works."""

    OK = "ok"                   # every check line agreed with the model
    PARTIAL = "partial"         # the query budget ran out
    UNVERIFIED = "unverified"   # check lines still disagreed when ``max_lines`` ran out
    LEARNED = "learned"         # a surrogate trained by :func:`fidelity.learn`
    FINETUNED = "finetuned"     # :func:`fidelity.finetune` of a direct recovery

    __str__ = str.__str__
    __format__ = str.__format__


class Kind(str, enum.Enum):
    """What an :class:`Event` reports; code tests these instead of matching message text."""

    NOISY_ANSWERS = "noisy_answers"              # the answers are noisier than float64
    PROBABILITIES = "probabilities"              # softmax answers: centred log-probabilities
    UNRESOLVED = "unresolved"                    # a line's search left intervals open
    POLISHED = "polished"                        # units measured again at their hyperplane
    PRECISION_LINE = "precision_line"            # imprecise units measured on a line
    BIAS_NOT_ANCHORED = "bias_not_anchored"      # kinks not located near the origin
    REGRESSED = "regressed"                      # noisy: Gauss-Newton on random answers
    TOO_FEW_ANSWERS = "too_few_answers"          # noisy: no budget left to regress
    UNDETERMINED_DROPPED = "undetermined_dropped"    # noisy: spurious units dropped
    DUPLICATES_MERGED = "duplicates_merged"      # noisy: a unit found twice
    NO_NEW_KINK = "no_new_kink"                  # a check line disagreed, nothing new on it
    NOISY_DISAGREEMENT = "noisy_disagreement"    # the same, for the noisy model
    TWINS_SEPARATED = "twins_separated"          # twin units measured again far out
    TWINS_MERGED = "twins_merged"                # twins kept as one unit
    PARALLEL_MERGED = "parallel_merged"          # parallel rows kept as one unit
    REMEASURED = "remeasured"                    # a rough row replaced by a unit's new jump
    JUMP_DROPPED = "jump_dropped"                # a jump whose row missed its own kink
    CHECKS_DISAGREE = "checks_disagree"          # earlier check answers disagree at the end
    VOID_DROPPED = "void_dropped"                # units with nil output weights dropped
    NOISY_RESIDUAL = "noisy_residual"            # noisy model left above the noise floor
    UNIT_MAY_BE_MISSING = "unit_may_be_missing"  # summary of NO_NEW_KINK events
    MP_REFINED = "mp_refined"                    # units refined in mpmath
    LEARNING = "learning"                        # learning-based extraction's reports
    DEEP = "deep"                                # the victim has more than one hidden layer
    ONE_SIDED = "one_sided"                      # deep: units of one sign on the fit inputs
    LAYER_INCOMPLETE = "layer_incomplete"        # deep: row entries never observed
    UNIDENTIFIED_UNITS = "unidentified_units"    # deep: units never seen on at a deeper kink
    LAYER_ONE_ADDED = "layer_one_added"          # deep: a layer-1 unit line 0 had missed


@dataclass(frozen=True)
class Event:
    """One thing worth telling the user: a kind, the sentence, and the numbers behind it."""

    kind: Kind
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


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
                            # float64, from a bootstrap of the last fit (see
                            # fidelity.estimates.reported_error; flag_estimate where the model
                            # was not fitted from the current regions); noisy answers, the
                            # regression's calibrated estimate; mp, see mp.refine
    anchored: bool          # its bias comes from a kink located near the origin
    flag_estimate: float = float("nan")   # float64: the polish's conservative estimate
                            # (1e3x-1e8x the actual error), which flags units for the polish
                            # and for mp refinement; ``error_estimate`` is the calibrated one
    rank_two: float = float("nan")   # k > 1 (NaN for k = 1): the second singular value of
                            # its relaxed k x d jump over that matrix's noise; above
                            # fidelity.twins.RANK_TWO (8) it carries two neurons (on float64
                            # answers a note says so)


@dataclass(frozen=True)
class Extraction:
    """What :func:`fidelity.extract` returns; ``status`` is a :class:`Status`."""

    network: Optional[ReLUNetwork]
    queries: int
    hidden_size: int
    status: Status
    stage_queries: dict = field(default_factory=dict)
    neurons: tuple = ()
    lines: int = 0
    check_error: float = float("nan")   # max relative disagreement on the last check line
    events: tuple = ()                  # :class:`Event`s, in the order they happened
    seconds: float = 0.0
    noise: Optional[NoiseFloor] = None  # the answers' measured noise floor
    layers: tuple = ()                  # deep victims: a :class:`fidelity.deep.LayerInfo` each
    # black-box bound: max |f - f_hat| / range over every check line's answers (fresh random
    # points, already counted), and how many answers that is
    output_error: float = float("nan")
    output_error_points: int = 0
    # the check lines' resolution, relative to the same range: a unit moving the outputs by
    # less than this at every checked point could be missing and still pass every check
    resolution: float = float("nan")

    def __post_init__(self):
        object.__setattr__(self, "status", Status(self.status))

    @property
    def notes(self) -> tuple:
        """The events' messages, in order."""
        return tuple(e.message for e in self.events)

    def events_of(self, kind: Kind) -> tuple:
        return tuple(e for e in self.events if e.kind == kind)

    @property
    def rank_two(self) -> float:
        """The largest unit's :attr:`NeuronInfo.rank_two` (above ``fidelity.twins.RANK_TWO``,
        8: a unit carrying two neurons), NaN where none was measured (k = 1, no unit)."""
        values = [n.rank_two for n in self.neurons if math.isfinite(n.rank_two)]
        return float(max(values)) if values else float("nan")

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
