"""What the oracle has told us so far: measured regions, gradient jumps, answered points.

Everything here was paid for; a model is fitted *from* it (see :mod:`fidelity.model`). Each
jump (one unit seen at one kink) carries a stable id, so that sets of units (twin pairs
already measured or merged) stay right when a jump is dropped or replaced, and a version
number that moves whenever the set of jumps changes: a model fitted at another version is
stale and must restart from the jumps.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .recover import Jump, Regions


class Evidence:
    """Regions, jumps and answered points of one extraction (mutable; private to a run).

    Attributes:
        regions: measured linear regions, in the order they were measured.
        kept: per entry of ``regions``, which of its regions the fits use.
        jumps: one per unit of the current unsigned model, in unit order.
        version: bumped by every change of ``jumps``.
        twins_done, twins_merged: pairs of jump ids already re-measured / merged as twins.
        anchor_x, anchor_y: answers near the origin (they pin the output bias).
        reg_x, reg_y: noisy answers: the regression's random points and their answers.
    """

    def __init__(self, d: int):
        self.regions: list[Regions] = []
        self.kept: list[np.ndarray] = []     # per entry of ``regions``: used by the fits
        self.jumps: list[Jump] = []
        self.ids: list[int] = []
        self._next_id = 0
        self.version = 0
        self.twins_done: set[tuple[int, int]] = set()
        self.twins_merged: set[tuple[int, int]] = set()
        self.anchor_x = np.zeros((0, d))
        self.anchor_y: Optional[np.ndarray] = None
        self.reg_x = np.zeros((0, d))
        self.reg_y: Optional[np.ndarray] = None
        self._concat: Optional[tuple[int, Regions]] = None

    # ------------------------------------------------------------------ regions
    def add_regions(self, regions: Regions, keep: Optional[np.ndarray] = None) -> None:
        """Adds measured regions; those outside ``keep`` (a mask) stay in ``regions`` (a line
        measured in full still tiles it) but are left out of :meth:`all_regions`."""
        self.regions.append(regions)
        self.kept.append(np.ones(regions.size, bool) if keep is None else np.asarray(keep))

    def all_regions(self) -> Regions:
        """Every region measured so far and kept, as one :class:`Regions`."""
        if self._concat is None or self._concat[0] != len(self.regions):
            self._concat = (len(self.regions), Regions.concat(
                [r.select(k) for r, k in zip(self.regions, self.kept)]))
        return self._concat[1]

    # ------------------------------------------------------------------ jumps
    def add_jumps(self, jumps: list[Jump]) -> None:
        for j in jumps:
            self.jumps.append(j)
            self.ids.append(self._next_id)
            self._next_id += 1
        if jumps:
            self.version += 1

    def replace_jump(self, i: int, jump: Jump) -> None:
        """Unit ``i`` measured again: same unit (same id), new jump."""
        self.jumps[i] = jump
        self.version += 1

    def drop_jump(self, i: int) -> None:
        """Forgets unit ``i``; pairs that hold it are forgotten with it."""
        gone = self.ids[i]
        del self.jumps[i]
        del self.ids[i]
        self.twins_done = {p for p in self.twins_done if gone not in p}
        self.twins_merged = {p for p in self.twins_merged if gone not in p}
        self.version += 1

    def pair_id(self, a: int, b: int) -> tuple[int, int]:
        """The ids of units ``a`` and ``b``, in unit order."""
        return (self.ids[a], self.ids[b]) if a < b else (self.ids[b], self.ids[a])

    def pair_index(self, pair: tuple[int, int]) -> tuple[int, int]:
        """The current unit indices of a pair of ids."""
        return self.ids.index(pair[0]), self.ids.index(pair[1])

    def jump_rows(self) -> np.ndarray:
        """``(h, d + 1)`` the rows measured at the kinks (rough but unbiased)."""
        return np.array([j.row for j in self.jumps])

    # ------------------------------------------------------------------ answered points
    def add_anchor_answers(self, x: np.ndarray, y: np.ndarray) -> None:
        """Answers near the origin replace the previous ones (they describe the same units)."""
        self.anchor_x, self.anchor_y = x, y

    def add_regression_answers(self, x: np.ndarray, y: np.ndarray) -> None:
        self.reg_x = np.concatenate([self.reg_x, x])
        self.reg_y = y if self.reg_y is None else np.concatenate([self.reg_y, y])
