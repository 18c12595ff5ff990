"""Figures over repeats: what every summary (a pipeline's, a comparison's) reports beside its means."""

from __future__ import annotations

import math

import torch

__all__ = ["closest_by_density", "over_seeds"]


def over_seeds(values) -> dict:
    """A figure over seeds (or any repeats): ``mean``, ``std`` (the sample std, n - 1; 0 for one value), ``min``,
    ``max`` and ``n``; what every pipeline's summary reports beside its means. A value ``None`` is a figure a
    repeat has not got (a validation figure without a validation set): the statistics are those of the others,
    ``n`` counts them, and where every value is ``None`` the four statistics are ``None`` and ``n`` is 0."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    t = torch.tensor(present, dtype=torch.float64)
    std = float(t.std(unbiased=True)) if len(present) > 1 else 0.0
    return {"mean": float(t.mean()), "std": std, "min": float(t.min()), "max": float(t.max()), "n": len(present)}


def closest_by_density(rows: list[dict], density: float, key: str = "density") -> dict:
    """The row whose ``key`` (a fraction of weights remaining) is closest to ``density``, on a log scale (IMP's
    rounds are geometric in density); a density of 0 counts as 1e-12."""
    return min(rows, key=lambda r: abs(math.log(max(r[key], 1e-12)) - math.log(max(density, 1e-12))))
