"""Figures over repeats: what every summary (a pipeline's, a comparison's) reports beside its means."""

from __future__ import annotations

import torch

__all__ = ["over_seeds"]


def over_seeds(values) -> dict:
    """A figure over seeds (or any repeats): ``mean``, ``std`` (the sample std, n - 1; 0 for one value), ``min``,
    ``max`` and ``n``; what every pipeline's summary reports beside its means."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    std = float(t.std(unbiased=True)) if len(values) > 1 else 0.0
    return {"mean": float(t.mean()), "std": std, "min": float(t.min()), "max": float(t.max()), "n": len(values)}
