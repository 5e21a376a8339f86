"""The one door to the victim: a counting, budget-enforcing, validating query oracle."""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import mpmath
import numpy as np

from . import probabilities
from .errors import OracleError, QueryBudgetExceeded
from .journal import DEFAULT_CHUNK_ROWS, Journal
from .network import ReLUNetwork, forward

Victim = Union[ReLUNetwork, Callable[[np.ndarray], np.ndarray]]


@dataclass(frozen=True, eq=False)
class JaxFunction:
    """A victim the engine may evaluate inside ``jit``: ``apply(params, x)`` maps ``(n, d)``
    inputs in ``dtype`` to ``(n, k)`` answers. ``params`` is an opaque pytree handed to
    ``apply``; the engine never looks inside it (its structure is the victim's)."""

    apply: Callable[[Any, Any], Any]
    params: Any
    dtype: np.dtype
    input_dim: int
    output_dim: int

    @staticmethod
    def of_network(net: ReLUNetwork) -> "JaxFunction":
        return JaxFunction(apply=_apply_network, params=(net.weights, net.biases),
                           dtype=np.dtype(net.dtype), input_dim=net.input_dim,
                           output_dim=net.output_dim)


def _apply_network(params, x):
    """A :class:`ReLUNetwork`'s forward pass as ``apply(params, x)`` (one function for every
    network, so a new victim does not recompile)."""
    return forward(params[0], params[1], x)


LABEL_ONLY_MESSAGE = (
    "the victim answers class labels only; direct recovery needs real-valued scores (logits or "
    "probabilities) to see the kinks of the network. Use learning-based extraction "
    "(fidelity.learn) for a label-only victim instead")


class Oracle:
    """Wraps a black-box victim; every row sent through it is counted.

    Args:
        victim: a :class:`ReLUNetwork` or any callable mapping a float64 array ``(n, d)`` to
            ``(n, k)`` (``(n,)`` is accepted when ``k == 1``).
        input_dim: ``d``; required unless the victim is a ReLUNetwork.
        output_dim: ``k``; discovered from the first answer when not given.
        budget: the most rows the engine may use (answered or replayed); a batch that would pass
            it is refused with :class:`QueryBudgetExceeded` before anything is sent.
        chunk_size: the victim is asked at most this many rows at a time (``None``: whole
            batches). A batch is cut into near-equal chunks, so that no chunk is a lone row.
        journal: a path or :class:`~fidelity.journal.Journal`; see :meth:`attach_journal`.
        progress: optional callback, called after each answered chunk with a dict
            ``queries, paid, replayed, budget``.
        precision: ``"float64"`` (default) or ``"mp"``: the victim also answers object arrays of
            ``mpmath.mpf`` with object arrays of mpf, which :meth:`query_mp` uses (a
            :class:`ReLUNetwork` does). ``oracle(x)`` stays float64 either way.
        dps: decimal digits the victim is asked at by :meth:`query_mp` (inside
            ``mpmath.workdps(dps)``); ``None`` uses the caller's current mpmath precision.
        answers: ``"logits"`` (scores, used as they are), ``"softmax"`` (class probabilities:
            the engine gets their centred logs, the logits minus their mean; see
            :mod:`fidelity.probabilities`) or ``"auto"`` (default: the first answer decides).

    Attributes:
        queries: rows the engine used, whether paid or replayed from the journal; the budget
            applies to this count, so a resumed run makes exactly the same decisions.
        paid: rows the victim answered through this oracle (what it charges for).
        replayed: rows answered from the journal instead.
        label_only: the victim is known to answer class labels only (see :meth:`require_scores`).
        answers, detected: as above (``"auto"`` until decided); probabilities were detected.
        quantum, saturated: rounding step of the probabilities (0: none); rows refused.

    Example:
        >>> oracle = Oracle(ReLUNetwork.random(0, [3, 2, 1]), budget=10)
        >>> oracle(np.zeros((4, 3))).shape, oracle.queries
        ((4, 1), 4)
    """

    def __init__(self, victim: Victim, input_dim: Optional[int] = None,
                 output_dim: Optional[int] = None, budget: Optional[int] = None, *,
                 chunk_size: Optional[int] = None, journal=None,
                 progress: Optional[Callable[[dict], None]] = None,
                 precision: str = "float64", dps: Optional[int] = None,
                 answers: str = "auto"):
        if answers not in ("auto", "logits", "softmax") or (precision, answers) == ("mp",
                                                                                   "softmax"):
            raise ValueError(f"answers: 'auto', 'logits' or 'softmax' (mp: logits), {answers!r}")
        if precision not in ("float64", "mp"):
            raise ValueError(f"precision must be 'float64' or 'mp', got {precision!r}")
        if dps is not None and (precision != "mp" or int(dps) < 1):
            raise ValueError("dps is a positive number of digits, and only for precision='mp'")
        self.precision = precision
        self.dps = None if dps is None else int(dps)
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
        if chunk_size is not None and int(chunk_size) < 1:
            raise ValueError("chunk_size must be a positive number of rows")
        self._victim = victim
        self.input_dim = int(input_dim)
        self.output_dim = None if output_dim is None else int(output_dim)
        self.budget = None if budget is None else int(budget)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.progress = progress
        self.queries = 0
        self.paid = 0
        self.replayed = 0
        self.label_only = False
        if answers == "auto" and (isinstance(victim, ReLUNetwork) or precision == "mp"):
            answers = "logits"
        self.answers = answers
        self.detected, self.quantum, self.saturated = False, 0.0, 0
        self.journal: Optional[Journal] = None
        if journal is not None:
            self.attach_journal(journal)

    @property
    def remaining(self) -> Optional[int]:
        """Rows left in the budget (``None`` when unlimited)."""
        return None if self.budget is None else self.budget - self.queries

    def attach_journal(self, journal) -> Journal:
        """Journals every answered chunk from now on and replays what the file already holds.

        Args:
            journal: a path (opened, or created with ``chunk_size`` rows per record, 256 when
                the oracle has none) or an open :class:`~fidelity.journal.Journal`.

        An existing journal keeps its own chunk size, which the oracle adopts so that the rerun
        cuts its batches exactly as the recorded run did.
        """
        if self.precision == "mp":
            raise ValueError("a journal records float64 answers only: it cannot be used with "
                             "precision='mp'; make the oracle with precision='float64' to journal")
        if self.journal is not None:
            if not isinstance(journal, Journal) and Path(journal) == self.journal.path:
                return self.journal
            raise ValueError(f"this oracle already journals to {self.journal.path}")
        if not isinstance(journal, Journal):
            journal = Journal(journal, self.input_dim,
                              chunk_rows=self.chunk_size or DEFAULT_CHUNK_ROWS)
        elif journal.input_dim != self.input_dim:
            raise ValueError(f"the journal has {journal.input_dim} inputs, the oracle "
                             f"{self.input_dim}")
        self.journal = journal
        self.chunk_size = journal.chunk_rows
        return journal

    def jax_function(self) -> Optional["JaxFunction"]:
        """The victim as an opaque in-process JAX function the engine may run inside ``jit``
        (a float ReLUNetwork asked in-process, with no journal or chunking to honour); ``None``
        otherwise. Only its input and output widths are readable; rows evaluated through it
        must be paid with :meth:`charge`."""
        victim = self._victim
        if (isinstance(victim, ReLUNetwork) and self.journal is None and self.chunk_size is None
                and victim.dtype in (np.float64, np.float32) and self.answers == "logits"):
            return JaxFunction.of_network(victim)
        return None

    def charge(self, n: int) -> None:
        """Counts ``n`` rows the engine evaluated through :meth:`jax_function` directly."""
        n = int(n)
        self._check_budget(n)
        self.queries += n
        self.paid += n
        self._report()

    def require_scores(self) -> None:
        """Raises :class:`OracleError` when the victim answers labels only."""
        if self.label_only:
            raise OracleError(LABEL_ONLY_MESSAGE)

    def _chunks(self, x: np.ndarray) -> list[np.ndarray]:
        n = x.shape[0]
        if self.chunk_size is None or n <= self.chunk_size:
            return [x]
        return np.array_split(x, -(-n // self.chunk_size))

    def __call__(self, x) -> np.ndarray:
        """The scores of ``(n, d)`` inputs, ``(n, k)``: the answers, or for probabilities their
        centred logs. Raises :class:`SaturatedProbabilities` for rows whose probabilities
        are too small for that (they are paid, and counted in ``saturated``)."""
        y, bad = self.scores(x)
        if bad.any():
            raise probabilities.saturated(int(bad.sum()), bad.size, self.quantum)
        return y

    def scores(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`__call__`, but saturated rows come back as NaN, flagged in a mask."""
        y = self._answer(x)
        if self.answers == "logits" or not y.shape[0]:
            return y, np.zeros(y.shape[0], bool)
        was = self.answers
        self.answers, self.quantum, y, bad = probabilities.interpret(y, was, self.quantum)
        self.detected = self.detected or (was == "auto" and self.answers == "softmax")
        self.saturated += int(bad.sum())
        return y, bad

    def _answer(self, x) -> np.ndarray:
        """The victim's answers to ``x``, counted, budgeted and journalled (as answered)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"queries must have shape (n, {self.input_dim}), got {x.shape}")
        n = x.shape[0]
        self._check_budget(n)
        if n == 0:
            return np.zeros((0, self.output_dim or 0))
        out = []
        for chunk in self._chunks(x):
            self.queries += chunk.shape[0]
            y = None if self.journal is None else self.journal.replay(chunk)
            if y is not None:
                m = y.shape[0]
                self.replayed += m
                out.append(self._validate(y, m))
                chunk = chunk[m:]      # the journal ended inside this chunk: pay for the rest
            if chunk.shape[0]:
                y = self._pay(chunk, self._ask)
                if self.journal is not None:
                    self.journal.append(chunk, y)   # durable before the engine sees it
                out.append(y)
            self._report()
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _pay(self, chunk: np.ndarray, ask):
        """``ask(chunk)`` for rows already counted in ``queries``; counts them as paid, or
        uncounts them when the victim's side refuses (nothing was answered)."""
        try:
            y = ask(chunk)
        except QueryBudgetExceeded:
            self.queries -= chunk.shape[0]
            raise
        self.paid += chunk.shape[0]
        return y

    def _ask(self, x: np.ndarray) -> np.ndarray:
        return self._validate(self._call_victim(x), x.shape[0])

    def _call_victim(self, x: np.ndarray):
        try:
            return self._victim(x)
        except (OracleError, QueryBudgetExceeded):
            raise
        except Exception as exc:  # a victim failing is an oracle failure, said plainly
            raise OracleError(f"the victim raised {type(exc).__name__}: {exc}") from exc

    def _check_budget(self, n: int) -> None:
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(
                f"sending {n} rows would pass the budget of {self.budget} "
                f"({self.queries} spent)")

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(dict(queries=self.queries, paid=self.paid,
                               replayed=self.replayed, budget=self.budget))

    def _shaped(self, y: np.ndarray, n: int) -> np.ndarray:
        """The answer as ``(n, k)``; learns ``k`` from the first one."""
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
        return y

    def _validate(self, y, n: int) -> np.ndarray:
        try:
            y = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise OracleError(f"answer is not numeric: {exc}") from exc
        y = self._shaped(y, n)
        if not np.all(np.isfinite(y)):
            raise OracleError("answer contains NaN or inf")
        return y

    # ------------------------------------------------------------------ arbitrary precision
    def query_mp(self, x) -> np.ndarray:
        """Asks the victim in mpmath: ``(n, d)`` mpf (or float64, converted exactly) to ``(n, k)``
        object array of ``mpmath.mpf``, inside ``mpmath.workdps(dps)`` when ``dps`` was given.

        Rows count in ``queries`` and ``paid`` and against the budget like :meth:`__call__`;
        a batch that would pass the budget raises :class:`QueryBudgetExceeded` before sending.

        Raises:
            OracleError: the oracle is not ``precision='mp'``, or the answer has a wrong shape,
                is not numeric, or holds NaN/inf.
        """
        if self.precision != "mp":
            raise OracleError("query_mp needs an oracle made with precision='mp'")
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"queries must have shape (n, {self.input_dim}), got {x.shape}")
        n = x.shape[0]
        self._check_budget(n)
        with mpmath.workdps(self.dps or mpmath.mp.dps):
            if x.dtype != object:
                x = _to_mpf(np.asarray(x, np.float64))
            out = []
            for chunk in self._chunks(x):
                self.queries += chunk.shape[0]
                out.append(self._validate_mp(self._pay(chunk, self._call_victim),
                                             chunk.shape[0]))
                self._report()
        if not out:
            return np.empty((0, self.output_dim or 0), object)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _validate_mp(self, y, n: int) -> np.ndarray:
        y = np.asarray(y)
        if y.dtype != object:
            try:
                y = _to_mpf(np.asarray(y, np.float64))
            except (TypeError, ValueError) as exc:
                raise OracleError(f"answer is not numeric: {exc}") from exc
        y = self._shaped(y, n)
        flat = y.reshape(-1)
        try:
            for i, v in enumerate(flat):
                if type(v) is not mpmath.mpf:
                    flat[i] = v = mpmath.mpf(v)
                if not mpmath.isfinite(v):
                    raise OracleError("answer contains NaN or inf")
        except (TypeError, ValueError) as exc:
            raise OracleError(f"answer is not numeric: {exc}") from exc
        return flat.reshape(y.shape)


def _to_mpf(x: np.ndarray) -> np.ndarray:
    """A float64 array as an object array of mpf (exact: every float64 is an mpf)."""
    out = np.empty(x.shape, object)
    out.reshape(-1)[:] = [mpmath.mpf(v) for v in x.reshape(-1).tolist()]
    return out
