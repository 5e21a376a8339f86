"""The one door to the victim: a counting, budget-enforcing, validating query oracle."""

from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np

from .errors import OracleError, QueryBudgetExceeded
from .network import ReLUNetwork

Victim = Union[ReLUNetwork, Callable[[np.ndarray], np.ndarray]]


class Oracle:
    """Wraps a black-box victim; every row sent through it is counted.

    Args:
        victim: a :class:`ReLUNetwork` or any callable mapping a float64 array ``(n, d)`` to
            ``(n, k)`` (``(n,)`` is accepted when ``k == 1``).
        input_dim: ``d``; required unless the victim is a ReLUNetwork.
        output_dim: ``k``; discovered from the first answer when not given.
        budget: the most rows the oracle will ever send; a batch that would pass it is refused
            with :class:`QueryBudgetExceeded` before anything is sent.

    Example:
        >>> oracle = Oracle(ReLUNetwork.random(0, [3, 2, 1]), budget=10)
        >>> oracle(np.zeros((4, 3))).shape, oracle.queries
        ((4, 1), 4)
    """

    def __init__(self, victim: Victim, input_dim: Optional[int] = None,
                 output_dim: Optional[int] = None, budget: Optional[int] = None):
        if not callable(victim):
            raise TypeError("victim must be a ReLUNetwork or a callable (n, d) -> (n, k)")
        if isinstance(victim, ReLUNetwork):
            if input_dim is not None and input_dim != victim.input_dim:
                raise ValueError(f"input_dim={input_dim} but the network takes {victim.input_dim}")
            input_dim = victim.input_dim
            output_dim = victim.output_dim if output_dim is None else output_dim
        if input_dim is None or int(input_dim) < 1:
            raise ValueError("input_dim must be given (a positive int) for a callable victim")
        if budget is not None and int(budget) < 0:
            raise ValueError("budget must be a non-negative number of rows")
        self._victim = victim
        self.input_dim = int(input_dim)
        self.output_dim = None if output_dim is None else int(output_dim)
        self.budget = None if budget is None else int(budget)
        self.queries = 0

    @property
    def remaining(self) -> Optional[int]:
        """Rows left in the budget (``None`` when unlimited)."""
        return None if self.budget is None else self.budget - self.queries

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"queries must have shape (n, {self.input_dim}), got {x.shape}")
        n = x.shape[0]
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(
                f"sending {n} rows would pass the budget of {self.budget} "
                f"({self.queries} spent)")
        if n == 0:
            return np.zeros((0, self.output_dim or 0))
        self.queries += n
        try:
            y = self._victim(x)
        except (OracleError, QueryBudgetExceeded):
            raise
        except Exception as exc:  # a victim failing is an oracle failure, said plainly
            raise OracleError(f"the victim raised {type(exc).__name__}: {exc}") from exc
        return self._validate(y, n)

    def _validate(self, y, n: int) -> np.ndarray:
        try:
            y = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise OracleError(f"answer is not numeric: {exc}") from exc
        if y.ndim == 1 and y.shape[0] == n and self.output_dim in (None, 1):
            y = y[:, None]
        if y.ndim != 2 or y.shape[0] != n:
            raise OracleError(f"answer has shape {y.shape}, expected ({n}, k)")
        if self.output_dim is None:
            if y.shape[1] < 1:
                raise OracleError("answer has no outputs")
            self.output_dim = y.shape[1]
        elif y.shape[1] != self.output_dim:
            raise OracleError(f"answer has {y.shape[1]} outputs, expected {self.output_dim}")
        if not np.all(np.isfinite(y)):
            raise OracleError("answer contains NaN or inf")
        return y
