"""Pruning criteria and scopes.

Scores (higher is kept), computed on the magnitudes |W| of a layer's weights
that are still unpruned, as the layerwise-importance paper (Algorithm 1, and
Sec. 2.1) prescribes:

- ``magnitude``: |W|
- ``l1``: |W| / sum |W|                       (sum-to-one per layer)
- ``l2``: W^2 / sum W^2
- ``softmax``: exp|W| / sum exp|W|
- ``minmax``: (|W| - min|W|) / (max|W| - min|W|)
- ``lamp`` (Lee et al. 2021): W_u^2 / sum_{v >= u} W_v^2 over the layer's weights
  sorted by magnitude (u's own and every larger one)

``scope="global"`` pools the scores of all layers and removes the lowest
``fraction`` of all remaining weights; ``"layerwise"`` removes ``fraction`` of
each layer's remaining weights. The number removed is ``round(fraction * remaining)``.

Every importance but ``magnitude`` is a layer normalisation: an increasing
function of |W| within a layer (lamp too: a larger weight has a larger
numerator and a smaller suffix sum), so it ranks a layer's weights exactly as
|W| does and only changes how layers compare. With ``scope="layerwise"`` the
layers do not compare, and such an importance would silently be layerwise
magnitude pruning: :func:`prune_magnitude` refuses the combination.

Weights are ranked only when every unpruned one to be ranked, and its score,
is finite: a NaN sorts above every number (it would be kept as the most
important weight) and an inf turns layer-normalised scores into NaN, so NaN or
inf weights (diverged training) are a ValueError naming the layers.

The global selection is :func:`select_kept`, and random pruning's scores :func:`uniform_scores`: the single-shot
pruners of :mod:`lth_sparse.prune.saliency` select, and draw, through them too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn
from torch import Tensor

from lth_sparse.masks import Masks, masked_weights
from lth_sparse.ops import prune_lowest

IMPORTANCES = ("magnitude", "l1", "l2", "softmax", "minmax", "lamp")
LAYER_NORMALISED = ("l1", "l2", "softmax", "minmax", "lamp")  # rank a layer's weights as magnitude does
SCOPES = ("global", "layerwise")
STRUCTURED_NORMS = ("l1", "l2", "linf")


def _layer_importance(weight: Tensor, mask: Tensor, importance: str) -> Tensor:
    """Scores of one layer; only the entries where ``mask`` is True are meaningful."""
    magnitude = (
        weight.detach().abs().float() if weight.dtype in (torch.float16, torch.bfloat16) else weight.detach().abs()
    )
    if importance == "magnitude":
        return magnitude
    active = magnitude[mask]
    if active.numel() == 0:
        return torch.zeros_like(magnitude)
    if importance == "l1":
        return magnitude / active.sum().clamp_min(torch.finfo(magnitude.dtype).tiny)
    if importance == "l2":
        return magnitude.square() / active.square().sum().clamp_min(torch.finfo(magnitude.dtype).tiny)
    if importance == "softmax":
        # exp(|w| - max) / sum exp(|w| - max): the same ratio, without overflow.
        shift = active.max()
        return torch.exp(magnitude - shift) / torch.exp(active - shift).sum()
    if importance == "minmax":
        low, high = active.min(), active.max()
        return (magnitude - low) / (high - low) if high > low else torch.ones_like(magnitude)
    if importance == "lamp":
        squares = torch.where(mask, magnitude.square(), torch.zeros_like(magnitude)).reshape(-1)
        order = torch.argsort(squares, stable=True)
        sorted_sq = squares[order]
        suffix = sorted_sq.flip(0).cumsum(0).flip(0)  # sum over v >= u, in sorted order
        scores = torch.empty_like(squares)
        scores[order] = sorted_sq / suffix.clamp_min(torch.finfo(squares.dtype).tiny)
        return scores.reshape(magnitude.shape)
    raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")


def importance_scores(weights: Mapping[str, Tensor], masks: Masks, importance: str = "magnitude") -> dict[str, Tensor]:
    """The score of every weight (see the module docstring) by weight name."""
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
    return {name: _layer_importance(weights[name], masks[name], importance) for name in masks}


def check_importance_and_scope(importance: str, scope: str) -> None:
    """Raise ValueError for a layer-normalised importance with ``scope="layerwise"`` (see the module docstring)."""
    if scope == "layerwise" and importance in LAYER_NORMALISED:
        raise ValueError(
            f"importance={importance!r} with scope='layerwise' would be plain layerwise magnitude pruning: "
            f"{importance} is an increasing function of |W| within a layer, so it ranks each layer's weights "
            f"exactly as magnitude does, and its normalisation only matters when layers compete; use "
            f"scope='global' with {importance!r}, or importance='magnitude' with scope='layerwise'"
        )


def _refuse_non_finite(values: Mapping[str, Tensor], masks: Mapping[str, Tensor], what: str) -> None:
    """ValueError naming every layer where an entry that ``masks`` keeps is NaN or infinite."""
    bad = []
    for name, v in values.items():
        active = v[masks[name]]
        nan, inf = int(active.isnan().sum()), int(active.isinf().sum())
        if nan or inf:
            bad.append(f"{name} ({nan} NaN, {inf} inf)")
    if bad:
        raise ValueError(
            f"{what} must be finite to be ranked (a NaN would rank as the largest and be kept), "
            f"got non-finite ones in {', '.join(bad)}"
        )


def _prunable(model: nn.Module, masks: Masks | None, exclude: Iterable[str]):
    layers = masked_weights(model)
    if not layers:
        raise ValueError("the model has no masked layers: convert it with lth_sparse.nn.masked(model) first")
    exclude = set(exclude)
    unknown = exclude - set(layers)
    if unknown:
        raise KeyError(f"exclude names no masked weight: {sorted(unknown)} (masked weights: {list(layers)})")
    masks = Masks.from_model(model) if masks is None else masks
    if set(masks) != set(layers):
        raise KeyError(f"masks cover {sorted(masks)}, the model's masked weights are {sorted(layers)}")
    names = [n for n in layers if n not in exclude]
    return layers, masks, names


def unpruned_counts(masks: Mapping[str, Tensor]) -> dict[str, int]:
    """The number of weights each mask keeps, by weight name."""
    return {n: int(m.count_nonzero()) for n, m in masks.items()}


def uniform_scores(masks: Mapping[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The scores of random pruning: uniform in [0, 1), one per entry of each mask, by weight name. Drawn on the
    CPU with ``generator``, layer by layer in the masks' order (the same draws whatever the device), and moved
    to each mask's device."""
    return {n: torch.rand(m.shape, generator=generator).to(m.device) for n, m in masks.items()}


def select_kept(
    scores: Mapping[str, Tensor],
    masks: Masks,
    names: Iterable[str],
    kept: int,
    unpruned: Mapping[str, int] | None = None,
) -> Masks:
    """``masks`` with the lowest-scoring unpruned weights of the layers ``names`` pruned, pooled across those
    layers, until exactly ``kept`` of them remain: the global selection of every pruner (through
    :func:`lth_sparse.ops.prune_lowest`; ties pruned in layer order, then flat index).

    Other layers' masks are returned as copies, so the result never shares a tensor with ``masks`` (which
    may be a model's own mask buffers). Scores of different dtypes are compared in float64 (which holds each
    exactly). ``unpruned``: the count of each layer's kept weights (:func:`unpruned_counts`) when the caller
    has it. Raises ValueError for ``kept`` outside [0, unpruned weights of ``names``], and for a NaN or
    infinite score of an unpruned weight (a NaN would rank highest and be kept), naming the layers.
    """
    names = list(names)
    new = {n: m.clone() for n, m in masks.items() if n not in names}  # never the caller's or the model's tensors
    if not names:
        return Masks(new)
    if unpruned is None:
        unpruned = unpruned_counts({n: masks[n] for n in names})
    remaining = sum(unpruned[n] for n in names)
    if not 0 <= kept <= remaining:
        raise ValueError(f"kept must be in [0, {remaining}] (the weights still unpruned), got {kept}")
    # A sum is finite only when every term is (NaN and inf propagate): one read, and the exact search
    # (which names the layers) only when it fails (maybe for a NaN where pruned, or an overflowing sum).
    if not all(bool(torch.isfinite(scores[n].sum())) for n in names):
        _refuse_non_finite({n: scores[n] for n in names}, masks, "scores of unpruned weights")
    chosen = [scores[n].detach() for n in names]
    if len({s.dtype for s in chosen}) > 1:  # one dtype for the selection; float64 holds every score exactly
        chosen = [s.double() for s in chosen]
    dense = remaining == sum(masks[n].numel() for n in names)  # nothing pruned yet: the selection reads no mask
    new.update(zip(names, prune_lowest(chosen, None if dense else [masks[n] for n in names], remaining - kept)))
    return Masks({n: new[n] for n in masks})  # in the masks' order


def _select(scores: dict[str, Tensor], masks: Masks, names: list[str], fraction: float, scope: str) -> Masks:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if scope == "global":
        unpruned = unpruned_counts({n: masks[n] for n in names})
        remaining = sum(unpruned.values())
        return select_kept(scores, masks, names, remaining - round(fraction * remaining), unpruned)
    new = dict(masks)
    for n in names:
        k = round(fraction * int(masks[n].sum()))
        new[n] = prune_lowest([scores[n]], [masks[n]], k)[0]
    return Masks(new)


def prune_magnitude(
    model: nn.Module,
    fraction: float,
    *,
    scope: str = "global",
    importance: str = "magnitude",
    masks: Masks | None = None,
    exclude: Iterable[str] = (),
) -> Masks:
    """New masks that remove ``fraction`` of the remaining weights by ``importance`` score.

    model: its masked layers give the weights (and the current masks unless
    ``masks`` is given); it may be wrapped by DDP or ``torch.compile``, names
    are the bare model's. exclude: weight names never pruned (e.g. the output
    layer). Returns new masks; the model is not changed (``masks.apply_to(model)``).

    Raises ValueError when an unpruned weight of a layer to prune, or its
    score, is NaN or infinite (naming the layers), and for a layer-normalised
    ``importance`` with ``scope="layerwise"``, which would equal layerwise
    magnitude pruning (see the module docstring).
    """
    check_importance_and_scope(importance, scope)
    layers, masks, names = _prunable(model, masks, exclude)
    weights = {n: layers[n].weight.detach() for n in names}
    _refuse_non_finite(weights, masks, "unpruned weights")
    scores = importance_scores(weights, Masks({n: masks[n] for n in names}), importance)
    _refuse_non_finite(scores, masks, f"{importance} scores of unpruned weights (overflow?)")
    return _select(scores, masks, names, fraction, scope)


def prune_random(
    model: nn.Module,
    fraction: float,
    *,
    scope: str = "global",
    masks: Masks | None = None,
    exclude: Iterable[str] = (),
    generator: torch.Generator | None = None,
) -> Masks:
    """Like :func:`prune_magnitude` with uniformly random scores."""
    _, masks, names = _prunable(model, masks, exclude)
    return _select(uniform_scores({n: masks[n] for n in names}, generator), masks, names, fraction, scope)


def random_masks_like(masks: Masks, generator: torch.Generator | None = None) -> Masks:
    """Random masks with exactly the same number of kept weights in each layer (the random-mask control):
    ``masks.permuted("layer", generator)``."""
    return masks.permuted("layer", generator)


def prune_structured(
    model: nn.Module,
    fraction: float,
    *,
    norm: str = "l2",
    scope: str = "layerwise",
    masks: Masks | None = None,
    exclude: Iterable[str] = (),
) -> Masks:
    """Remove ``fraction`` of the remaining output units (rows of a linear weight, output channels of a conv).

    Units are scored by the ``norm`` (``l1``, ``l2`` or ``linf``) of their
    unpruned incoming weights; a pruned unit loses all its weights. With
    ``scope="global"`` the norms are compared across layers, each divided by the
    square root of the unit's fan-in for ``l2`` (sum for ``l1``) so that layers
    of different width compare fairly; ``"layerwise"`` is the usual choice.
    NaN or infinite unpruned weights are a ValueError, as in :func:`prune_magnitude`.
    """
    if norm not in STRUCTURED_NORMS:
        raise ValueError(f"norm must be one of {STRUCTURED_NORMS}, got {norm!r}")
    layers, masks, names = _prunable(model, masks, exclude)
    _refuse_non_finite({n: layers[n].weight.detach() for n in names}, masks, "unpruned weights")
    unit_scores, unit_masks = {}, {}
    for n in names:
        w = torch.where(masks[n], layers[n].weight.detach(), 0).flatten(1)
        fan_in = w.shape[1]
        if norm == "l1":
            s = w.abs().sum(1) / (fan_in if scope == "global" else 1)
        elif norm == "l2":
            s = w.norm(dim=1) / (fan_in**0.5 if scope == "global" else 1)
        else:
            s = w.abs().amax(1) if w.numel() else w.new_zeros(w.shape[0])
        unit_scores[n] = s
        unit_masks[n] = masks[n].flatten(1).any(1)
    _refuse_non_finite(unit_scores, unit_masks, f"{norm} norms of units (overflow?)")
    kept_units = _select(unit_scores, Masks({n: unit_masks[n] for n in names}), names, fraction, scope)
    new = dict(masks)
    for n in names:
        shape = (-1,) + (1,) * (masks[n].dim() - 1)
        new[n] = masks[n] & kept_units[n].reshape(shape)
    return Masks(new)
