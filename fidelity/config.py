"""Options of :func:`fidelity.extract`: what a user sets, validated, and each stage's tuning.

The options a user is expected to set are fields of :class:`ExtractConfig` itself. The tuning
constants of each stage live beside that stage (:class:`~fidelity.measure.MeasureConfig`,
:class:`~fidelity.fit.FitConfig`, :class:`~fidelity.polish.PolishConfig`,
:class:`~fidelity.noisy.NoisyConfig`) and are nested here. :meth:`ExtractConfig.from_options`
takes them all by their flat names (``extract(polish_small_frac=1.0)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .deepstate import DeepConfig
from .fit import FitConfig
from .measure import MeasureConfig
from .noisy import NoisyConfig
from .polish import PolishConfig

_STAGES = {"measure": MeasureConfig, "fit": FitConfig, "polish": PolishConfig,
           "noisy": NoisyConfig, "deep": DeepConfig}


@dataclass(frozen=True)
class ExtractConfig:
    """Options of :func:`~fidelity.extract`; every loop is bounded by one of them.

    Attributes:
        line_length: half-length ``T`` of each search line; ``None`` means
            ``100 * sqrt(d) * input_scale`` (a unit's kink lies at ``~ sqrt(d)`` times a Cauchy
            variable from the line's centre, so this catches all but ~1/150 of them per line).
        input_scale: standard deviation of the random line origins.
        max_lines: bound on lines (the first included).
        check_points: answers compared with the model on each check line.
        patience: consecutive clean check lines needed to stop.
        check_tol: relative tolerance of those comparisons (float64 answers).
        detect_noise: measure the noise floor of the answers first (48 queries) and, when it
            is above float64 rounding (a float32 or rounding victim), derive steps, tolerances
            and weights from it; False assumes float64 answers.
        jit_search: run the critical-point search inside ``jax.jit`` (see
            :mod:`fidelity.jitsearch`; same kinks and row counts as the host search) when the
            oracle can hand the victim over as an in-process JAX function; ``None``: only where
            JAX's default backend is not the CPU (on a CPU the host-driven search is faster and
            compiles nothing).
        measure, fit, polish, noisy, deep: each stage's tuning (see its class).
    """

    line_length: Optional[float] = None
    input_scale: float = 1.0
    max_lines: int = 24
    check_points: int = 16
    patience: int = 2
    check_tol: float = 1e-8
    detect_noise: bool = True
    jit_search: Optional[bool] = None
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    polish: PolishConfig = field(default_factory=PolishConfig)
    noisy: NoisyConfig = field(default_factory=NoisyConfig)
    deep: DeepConfig = field(default_factory=DeepConfig)

    def __post_init__(self):
        if self.line_length is not None and not self.line_length > 0:
            raise ValueError(f"line_length must be positive (or None), got {self.line_length!r}")
        if not self.input_scale > 0:
            raise ValueError(f"input_scale must be positive, got {self.input_scale!r}")
        for name, low in (("max_lines", 1), ("check_points", 1), ("patience", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not self.check_tol > 0:
            raise ValueError(f"check_tol must be positive, got {self.check_tol!r}")
        if self.jit_search not in (None, True, False):
            raise ValueError(f"jit_search must be None, True or False, got {self.jit_search!r}")

    @classmethod
    def from_options(cls, **options) -> "ExtractConfig":
        """A config from flat option names: this class's fields, or any stage's.

        Raises:
            TypeError: an option no stage knows.
            ValueError: an option out of its range.
        """
        top = {f.name for f in dataclasses.fields(cls)} - set(_STAGES)
        nested = {name: {} for name in _STAGES}
        owner = {f.name: stage for stage, kind in _STAGES.items()
                 for f in dataclasses.fields(kind)}
        unknown = []
        plain = {}
        for key, value in options.items():
            if key in top:
                plain[key] = value
            elif key in owner:
                nested[owner[key]][key] = value
            elif key in _STAGES and isinstance(value, _STAGES[key]):
                plain[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise TypeError(f"unknown options {sorted(unknown)}; see fidelity.ExtractConfig")
        for stage, values in nested.items():
            if values:
                base = plain.get(stage, _STAGES[stage]())
                plain[stage] = dataclasses.replace(base, **values)
        return cls(**plain)

    def t_max(self, d: int) -> float:
        """The search lines' half-length for input width ``d``."""
        return self.line_length or 100.0 * np.sqrt(d) * self.input_scale
