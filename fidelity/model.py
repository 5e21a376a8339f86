"""The current model of the victim: rows, coefficients, signs, network and where they came from.

A :class:`Model` is frozen: each stage that changes it returns a new one
(``dataclasses.replace``). ``rows_from`` is the :class:`~fidelity.evidence.Evidence` version its
rows were fitted at; when the jumps have changed since (a unit added, dropped or measured
again), the rows are stale and the next fit restarts from the jumps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .geometry import Hyperplanes
from .network import ReLUNetwork
from .regress import RegressionInfo
from .solve import Signs


@dataclass(frozen=True)
class Model:
    """The unsigned fit (rows up to sign), its signed network, and per-unit provenance.

    Attributes:
        rows: ``(h, d + 1)`` unsigned rows ``[w, b]`` with unit-norm ``w``, one per jump.
        coef: ``(h, k)`` output coefficients of the unsigned model.
        sigma: ``(h, 3)`` LS standard errors of each row's ``w``, bias and coefficients.
        coef_se: ``(h,)`` standard errors of the coefficients with each region's noise taken
            from its residual (:func:`fidelity.recover.residual_and_coef_error`; reported
            only, the fit and the polish use ``sigma``).
        rank_two: ``(h,)`` how far from rank one each unit's jump is, in its noise
            (``fit_rows(stats=...)``; ``None`` for one output or without the relaxed solve).
        signs: the sign solve (``None`` before the first fit).
        network: the signed network (noisy answers: oriented and regressed instead).
        unit_src: ``(h',)`` the unsigned unit each network unit comes from.
        row_change: ``(h,)`` change of each row in the last refinement pass.
        fit_resid: ``(h,)`` largest weighted residual of the regions each unit is active in.
        anchors: unit -> a point located on its hyperplane near the origin.
        regression: the noisy regression's report (``None``: not regressed).
        rows_from: evidence version the rows were fitted at (-1: never).
        network_from: evidence version the network's units come from (-1: never).
    """

    rows: np.ndarray
    coef: np.ndarray
    sigma: Optional[np.ndarray] = None
    coef_se: Optional[np.ndarray] = None
    rank_two: Optional[np.ndarray] = None
    signs: Optional[Signs] = None
    network: Optional[ReLUNetwork] = None
    unit_src: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    row_change: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fit_resid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    anchors: dict = field(default_factory=dict)
    regression: Optional[RegressionInfo] = None
    rows_from: int = -1
    network_from: int = -1

    @staticmethod
    def empty(d: int) -> "Model":
        return Model(rows=np.zeros((0, d + 1)), coef=np.zeros((0, 0)))

    @property
    def size(self) -> int:
        """Units of the unsigned model."""
        return self.rows.shape[0]

    def stale(self, version: int) -> bool:
        """The rows were not fitted from the jumps at evidence ``version``."""
        return self.rows_from != version

    def geometry(self) -> Hyperplanes:
        """Where the unsigned model's units switch (one hyperplane each)."""
        return Hyperplanes.of_rows(self.rows)
