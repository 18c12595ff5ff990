"""Error and loss barriers along the linear path between two networks.

Frankle et al. (2020) call two networks trained from one state with different SGD noise
*stable* when the error does not rise along the straight line between them; the
instability is the error barrier, equation 3 of "The Influence of SGD Noise on Lottery
Ticket Performance":

    sup_a E((1 - a) W_A + a W_B) - (E(W_A) + E(W_B)) / 2,   a in [0, 1]

(the paper writes the path from the other end; alpha = 0 is network A here, in every
stored curve). A pair is stable when it is under 2% (0.02 absolute: errors are fractions).
Three kinds are in use (``kind``):

- ``max-mean``: equation 3. It can never be below half the gap between the endpoints' errors
  (the sup includes the endpoints), so endpoints that differ by more than 4 points read unstable
  on any path: :class:`Barrier` keeps the endpoint values beside every barrier;
- ``midpoint``: the value at alpha = 0.5 minus the mean of the endpoints;
- ``lerp``: the largest excess over the straight line between the endpoints' values,
  ``max_a [E(a) - ((1 - a) E(0) + a E(1))]`` (zero for a path that never rises above it).

Alphas outside [0, 1] (extrapolation) may be evaluated; the barriers use those in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

__all__ = ["BARRIER_KINDS", "Barrier", "barrier", "error_barrier", "is_stable", "loss_barrier"]

BARRIER_KINDS = ("max-mean", "midpoint", "lerp")


@dataclass(frozen=True)
class Barrier:
    """A barrier with what it was measured from: ``value``, ``kind``, the endpoints' values ``at_0`` (network A,
    alpha = 0) and ``at_1`` (network B), and ``alpha`` where the path's excess is largest (``kind``'s own
    sense; 0.5 for ``midpoint``)."""

    value: float
    kind: str
    at_0: float
    at_1: float
    alpha: float

    @property
    def endpoint_gap(self) -> float:
        """``|at_0 - at_1|``: half of it is the least equation 3 can read whatever the path."""
        return abs(self.at_0 - self.at_1)

    def to_dict(self) -> dict:
        return {**asdict(self), "endpoint_gap": self.endpoint_gap}


def _as_floats(values, name: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t


def barrier(values: Sequence[float], alphas: Sequence[float], kind: str = "max-mean") -> Barrier:
    """The barrier of the curve ``values`` measured at ``alphas`` (any order; both endpoints 0 and 1 needed; see the
    module for the kinds)."""
    if kind not in BARRIER_KINDS:
        raise ValueError(f"unknown barrier kind {kind!r}; choose one of {', '.join(BARRIER_KINDS)}")
    v, a = _as_floats(values, "values"), _as_floats(alphas, "alphas")
    if v.numel() != a.numel():
        raise ValueError(f"{v.numel()} values for {a.numel()} alphas")
    if len(set(a.tolist())) != a.numel():
        raise ValueError(f"the alphas repeat: {a.tolist()}")
    ends = {}
    for end in (0.0, 1.0):
        hit = (a == end).nonzero()
        if not len(hit):
            raise ValueError(f"the path must be measured at alpha = {end:g} (the endpoints), got alphas {a.tolist()}")
        ends[end] = float(v[hit[0, 0]])
    inside = (a >= 0) & (a <= 1)
    v, a = v[inside], a[inside]
    mean = (ends[0.0] + ends[1.0]) / 2
    if kind == "max-mean":
        i = int(torch.argmax(v))
        return Barrier(float(v[i]) - mean, kind, ends[0.0], ends[1.0], float(a[i]))
    if kind == "midpoint":
        hit = (a == 0.5).nonzero()
        if not len(hit):
            raise ValueError(f"a midpoint barrier needs alpha = 0.5 among the alphas, got {a.tolist()}")
        return Barrier(float(v[hit[0, 0]]) - mean, kind, ends[0.0], ends[1.0], 0.5)
    excess = v - ((1 - a) * ends[0.0] + a * ends[1.0])
    i = int(torch.argmax(excess))
    return Barrier(float(excess[i]), kind, ends[0.0], ends[1.0], float(a[i]))


def error_barrier(errors: Sequence[float], alphas: Sequence[float], kind: str = "max-mean") -> Barrier:
    """:func:`barrier` of an error curve, its errors fractions in [0, 1] (0.02 is two points): a ValueError where
    one lies outside (a percentage, 39.0 for 39%, is the usual slip)."""
    e = _as_floats(errors, "errors")
    outside = [v for v in e.tolist() if not 0.0 <= v <= 1.0]
    if outside:
        raise ValueError(
            f"errors are fractions in [0, 1] (0.39 for 39%), got {outside[:3]}{' ...' if len(outside) > 3 else ''}"
        )
    return barrier(errors, alphas, kind)


def loss_barrier(losses: Sequence[float], alphas: Sequence[float], kind: str = "max-mean") -> Barrier:
    """:func:`barrier` of a loss curve."""
    return barrier(losses, alphas, kind)


def is_stable(
    errors: Sequence[float], alphas: Sequence[float], threshold: float = 0.02, kind: str = "max-mean"
) -> bool:
    """Whether the pair is stable to SGD noise: its error barrier under ``threshold`` (Frankle et al.: 2%, 0.02:
    errors and threshold are fractions, see :func:`error_barrier`)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a fraction in [0, 1] like the errors (0.02 for 2%), got {threshold}")
    return error_barrier(errors, alphas, kind).value < threshold
