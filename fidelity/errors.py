"""Exceptions raised by fidelity."""

from __future__ import annotations

from typing import Any


class FidelityError(Exception):
    """Base class of every error fidelity raises on purpose."""


class OracleError(FidelityError):
    """The oracle answered something unusable: NaN/inf, a wrong shape or a changing width."""


class UnsupportedArchitecture(FidelityError):
    """The victim cannot be recovered exactly by this engine (e.g. signs are unidentifiable).

    ``.layers`` holds the :class:`~fidelity.deep.LayerInfo` of the hidden layers recovered
    before a deep victim's refusal (how far the layer-by-layer recovery got; the layer the
    message names is not among them); empty otherwise.
    """

    def __init__(self, message: str, *, layers: tuple = ()):
        super().__init__(message)
        self.layers = tuple(layers)


class QueryBudgetExceeded(FidelityError):
    """The next batch would pass the query budget.

    ``.result`` holds the partial :class:`~fidelity.Extraction` made so far (``status='partial'``)
    when the error escapes :func:`fidelity.extract`; it is ``None`` when raised by the oracle itself.
    """

    def __init__(self, message: str, *, result: Any = None):
        super().__init__(message)
        self.result = result
