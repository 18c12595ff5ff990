"""Argument checks shared by the pruners: a density and a count of rounds, epochs or iterations."""

from __future__ import annotations

import numbers


def check_density(density: float, meaning: str) -> float:
    """``density`` as a float when it is a real number in (0, 1] (not a bool); a ValueError otherwise, saying
    what the density is the fraction of (``meaning``, e.g. ``"the fraction of all weights kept"``)."""
    if isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1] ({meaning}), got {density!r}")
    return float(density)


def check_count(name: str, value: int) -> int:
    """``value`` as an int when it is an integer >= 1 (not a bool); a ValueError naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
