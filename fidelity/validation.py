"""Range checks of the stage configs' fields (their ``__post_init__``), one message format."""

from __future__ import annotations

import numpy as np


def positive(cfg, *names) -> None:
    """Raises ValueError unless each named field of ``cfg`` is > 0."""
    for n in names:
        if not getattr(cfg, n) > 0:
            raise ValueError(f"{type(cfg).__name__}.{n} must be positive, got "
                             f"{getattr(cfg, n)!r}")


def at_least(cfg, low: int, *names) -> None:
    """Raises ValueError unless each named field of ``cfg`` is an int (not a bool) >= ``low``."""
    for n in names:
        value = getattr(cfg, n)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{type(cfg).__name__}.{n} must be an int >= {low}, got {value!r}")


def share(cfg, *names) -> None:
    """Raises ValueError unless each named field of ``cfg`` is in ``[0, 1)``."""
    for n in names:
        if not 0.0 <= getattr(cfg, n) < 1.0:
            raise ValueError(f"{type(cfg).__name__}.{n} must be in [0, 1), got "
                             f"{getattr(cfg, n)!r}")
