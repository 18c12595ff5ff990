"""``Masks``: the masks of a whole model, by parameter name.

What pruning returns, pipelines save, and analyses compare. A mask is a bool
tensor of its weight's shape; True keeps the weight, False prunes it.

Masks are named by the bare model's weight names: a model wrapped by
``DistributedDataParallel``, ``DataParallel`` or ``torch.compile`` (whose
parameter names gain ``module.`` or ``_orig_mod.``), at the top or around a
submodule, in any nesting, is read and written under the names of the model it
wraps, so masks move freely between a wrapped model and the bare one.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from lth_sparse.atomic import atomic_save_safetensors, read_safetensors
from lth_sparse.nn.modules import MaskedMixin

_FORMAT = "lth_sparse.masks/1"


def _wrapped(module: nn.Module) -> nn.Module | None:
    """The module a DDP, DataParallel or ``torch.compile`` wrapper holds; None for any other module."""
    if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return module.module
    # An OptimizedModule exists only once torch.compile has imported dynamo: no need to import it (slow) here.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is not None and isinstance(module, eval_frame.OptimizedModule):
        return module._orig_mod
    return None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside any stack of DDP, DataParallel and ``torch.compile`` wrappers (``model`` if none)."""
    while (inner := _wrapped(model)) is not None:
        model = inner
    return model


def bare_named_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``named_modules()`` with the DDP, DataParallel and ``torch.compile`` wrappers left out, at any depth:
    (name in the bare model, module) pairs, each module once, in ``named_modules()``'s order (pre-order,
    children in registration order)."""
    seen = set()
    stack = [("", model)]
    while stack:
        prefix, module = stack.pop()
        module = unwrap_model(module)
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield prefix, module
        children = [
            (f"{prefix}.{name}" if prefix else name, child)
            for name, child in module._modules.items()
            if child is not None
        ]
        stack.extend(reversed(children))  # pre-order, children in registration order, as named_modules()


def unwrapped_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every DDP / DataParallel / ``torch.compile`` wrapper, at any depth, replaced
    by the module it holds: copying a wrapper itself may fail (DDP holds a process group), and running a
    compiled one would compile. A module held twice stays one module in the copy."""
    memo: dict = {}
    for module in reversed(list(model.modules())):  # inner wrappers before the ones around them
        if _wrapped(module) is not None:
            memo[id(module)] = copy.deepcopy(unwrap_model(module), memo)
    return copy.deepcopy(unwrap_model(model), memo)


def masked_weights(model: nn.Module) -> dict[str, MaskedMixin]:
    """The masked layers of ``model`` by weight name (``"features.0.weight"``), in module order.

    Names are the bare model's: DDP, DataParallel and ``torch.compile`` wrappers,
    anywhere in the model, add nothing to them.
    """
    return {
        (f"{name}.weight" if name else "weight"): module
        for name, module in bare_named_modules(model)
        if isinstance(module, MaskedMixin)
    }


def _module_name(param_name: str) -> str:
    if not param_name.endswith("weight"):
        raise ValueError(f"mask names are weight parameter names ending in 'weight', got {param_name!r}")
    return param_name[: -len("weight")].rstrip(".")


class Masks(Mapping):
    """An ordered mapping from weight name (``"features.0.weight"``) to a bool mask."""

    def __init__(self, masks: Mapping[str, Tensor] | None = None) -> None:
        self._masks: dict[str, Tensor] = {}
        for name, mask in (masks or {}).items():
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise TypeError(f"mask {name!r} must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
            _module_name(name)
            self._masks[name] = mask

    # Mapping protocol
    def __getitem__(self, name: str) -> Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return f"Masks({len(self)} layers, sparsity={self.sparsity():.4f})"

    # Construction
    @classmethod
    def from_model(cls, model: nn.Module) -> Masks:
        """A snapshot (copies) of the masks of every masked layer of ``model``, by bare weight name.

        Layers pruned with ``torch.nn.utils.prune`` (a ``weight_mask`` buffer) count too.
        """
        masks = {}
        for name, module in bare_named_modules(model):
            if isinstance(module, MaskedMixin):
                mask = module.mask
            elif isinstance(getattr(module, "weight_mask", None), Tensor):
                mask = module.weight_mask.bool()
            else:
                continue
            masks[f"{name}.weight" if name else "weight"] = mask.detach().clone()
        if not masks:
            raise ValueError("the model has no masked layers: convert it with lth_sparse.nn.masked(model) first")
        return cls(masks)

    @classmethod
    def ones_like(cls, model: nn.Module) -> Masks:
        """All-True masks for every masked layer of ``model``."""
        return cls({name: torch.ones_like(m) for name, m in cls.from_model(model).items()})

    # Use
    def apply_to(self, model: nn.Module, strict: bool = True) -> nn.Module:
        """Write these masks into ``model``'s masked layers and zero the weights they prune.

        ``model`` may be wrapped (DDP, ``torch.compile``): the names are the bare model's.
        Raises KeyError for a name that is no masked layer of the model, ValueError
        for a mask of the wrong shape, and with ``strict``, KeyError when a masked
        layer of the model has no mask here.
        """
        layers = masked_weights(model)
        for name, mask in self._masks.items():
            if name not in layers:
                raise KeyError(
                    f"mask {name!r} matches no masked layer of the model "
                    f"(its masked weights: {', '.join(layers) or 'none'})"
                )
            weight = layers[name].weight
            if mask.shape != weight.shape:
                raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, the weight has {tuple(weight.shape)}")
        if strict and (missing := [n for n in layers if n not in self._masks]):
            raise KeyError(f"no mask for the model's masked weights {missing} (use strict=False to leave them)")
        for name, mask in self._masks.items():
            layers[name].set_mask(mask.to(layers[name].mask.device))
        return model

    def to(self, device) -> Masks:
        return Masks({n: m.to(device) for n, m in self._masks.items()})

    # Counts
    def num_weights(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    def num_unpruned(self) -> int:
        return sum(int(m.sum()) for m in self._masks.values())

    def sparsity(self) -> float:
        """The fraction of all masked weights that is pruned."""
        total = self.num_weights()
        return 0.0 if total == 0 else 1.0 - self.num_unpruned() / total

    def density(self) -> float:
        """The fraction of all masked weights that remains."""
        return 1.0 - self.sparsity()

    def layer_sparsity(self) -> dict[str, float]:
        """The pruned fraction of each layer, by weight name."""
        return {n: (1.0 - int(m.sum()) / m.numel()) if m.numel() else 0.0 for n, m in self._masks.items()}

    # Algebra
    def _pairwise(self, other: Masks, op) -> Masks:
        if list(self) != list(other):
            raise KeyError(f"masks cover different weights: {sorted(set(self) ^ set(other))}")
        for n in self:
            if self[n].shape != other[n].shape:
                raise ValueError(f"mask {n!r} has shapes {tuple(self[n].shape)} and {tuple(other[n].shape)}")
        return Masks({n: op(self[n], other[n]) for n in self})

    def __and__(self, other: Masks) -> Masks:
        return self._pairwise(other, torch.logical_and)

    def __or__(self, other: Masks) -> Masks:
        return self._pairwise(other, torch.logical_or)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Masks) or list(self) != list(other):
            return False
        return all(self[n].shape == other[n].shape and torch.equal(self[n], other[n].to(self[n].device)) for n in self)

    __hash__ = None

    def is_subset_of(self, other: Masks) -> bool:
        """True when every weight kept here is kept in ``other`` (IMP's masks are nested)."""
        both = self._pairwise(other, torch.logical_and)
        return all(torch.equal(both[n], self[n]) for n in self)

    def permuted(self, scope: str = "layer", generator: torch.Generator | None = None) -> Masks:
        """The masks with their entries shuffled: ``scope="layer"`` within each layer (every layer keeps its
        count exactly), ``"global"`` across all layers together (only the total count is kept; a layer's share
        then follows its size). Morcos et al. (2019)'s random tickets permute the ticket's mask globally; IMP's
        random-mask control keeps each layer's count (``prune.random_masks_like`` is ``permuted("layer")``).
        Drawn with ``generator`` on the CPU (reproducible on any device), returned on the masks' devices."""
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        if scope == "layer":  # a uniform random subset of each layer's size: its lowest random scores pruned
            from lth_sparse.ops import prune_lowest

            return Masks(
                {
                    n: prune_lowest(
                        [torch.rand(m.shape, generator=generator).to(m.device)], None, m.numel() - int(m.sum())
                    )[0]
                    for n, m in self._masks.items()
                }
            )
        if not self._masks:
            return Masks()
        flat = torch.cat([m.flatten().cpu() for m in self._masks.values()])
        shuffled = flat[torch.randperm(flat.numel(), generator=generator)]
        parts = shuffled.split([m.numel() for m in self._masks.values()])
        return Masks({n: part.view(m.shape).to(m.device) for (n, m), part in zip(self._masks.items(), parts)})

    # Files
    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` in safetensors (no pickle), atomically."""
        atomic_save_safetensors(path, self._masks, _FORMAT)

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu") -> Masks:
        """Read masks written by :meth:`save`."""
        return cls(read_safetensors(path, _FORMAT, "masks file", device=device)[0])


# --- Mask analysis: similarity, overlap, voting -----------------------------------------------------------
#
# Every function takes ``Masks`` or bool tensors (a tensor is one layer, named "weight"), and refuses masks that cover
# different weights or shapes, naming them. Definitions (Paganini & Forde 2020, Section 4.1):
#   Jaccard distance  d_J(A, B) = 1 - |A n B| / |A u B|, over the kept weights; two empty masks: 0 (identical).
#   Hamming distance  the number of weights kept by exactly one of the two, and that over all weights.
#   intersection over minimum  |A n B| / min(|A|, |B|) (the overlap coefficient): 1 when one mask keeps only
#                     weights the other keeps; 1 when either is empty (the empty set is inside any other).
# ``per_layer=True`` gives a dict by weight name instead of the one figure over all layers together.


def _as_masks(masks, what: str = "masks") -> Masks:
    if isinstance(masks, Masks):
        return masks
    if isinstance(masks, Tensor):
        if masks.dtype != torch.bool:
            raise TypeError(f"{what} must be bool tensors or Masks, got a {masks.dtype} tensor")
        return Masks({"weight": masks})
    raise TypeError(f"{what} must be Masks or a bool tensor, got {type(masks).__name__}")


def _aligned(masks_list, what: str = "masks") -> list[Masks]:
    """The masks, checked to cover the same weights with the same shapes (on the first one's device)."""
    out = [_as_masks(m, what) for m in masks_list]
    if not out:
        raise ValueError(f"no {what} given")
    first = out[0]
    for i, other in enumerate(out[1:], start=1):
        if list(other) != list(first):
            only_first, only_other = sorted(set(first) - set(other)), sorted(set(other) - set(first))
            raise ValueError(
                f"{what} 0 and {i} cover different weights: only in 0: {only_first}, only in {i}: "
                f"{only_other}" + ("" if only_first or only_other else " (another order)")
            )
        for name in first:
            if first[name].shape != other[name].shape:
                raise ValueError(
                    f"{what} 0 and {i} differ in the shape of {name!r}: {tuple(first[name].shape)} "
                    f"and {tuple(other[name].shape)} (another architecture?)"
                )
    device = next(iter(first.values())).device if len(first) else None
    return [m if device is None else m.to(device) for m in out]


def _pair_counts(a: Tensor, b: Tensor) -> tuple[int, int, int, int, int]:
    """(|A n B|, |A u B|, |A|, |B|, numel)."""
    return (int((a & b).sum()), int((a | b).sum()), int(a.sum()), int(b.sum()), a.numel())


def _per_pair(a, b, per_layer: bool, figure):
    a, b = _aligned([a, b])
    if per_layer:
        return {name: figure(*_pair_counts(a[name], b[name])) for name in a}
    totals = [sum(c) for c in zip(*(_pair_counts(a[name], b[name]) for name in a))] or [0, 0, 0, 0, 0]
    return figure(*totals)


def _jaccard(inter: int, union: int, *_) -> float:
    return 0.0 if union == 0 else 1.0 - inter / union


def jaccard_distance(a, b, per_layer: bool = False) -> float | dict[str, float]:
    """``1 - |A n B| / |A u B|`` of the weights two masks keep (0: the same weights; 1: none in common).

    Over all layers together (the paper's "total" distance), or per layer (``per_layer=True``,
    a dict by weight name). Two masks that keep nothing are at distance 0 (identical)."""
    return _per_pair(a, b, per_layer, _jaccard)


class Hamming(NamedTuple):
    """A Hamming distance: ``count`` (weights kept by exactly one of the two masks) and ``fraction`` (of all)."""

    count: int
    fraction: float


def _hamming(inter: int, union: int, na: int, nb: int, numel: int) -> Hamming:
    differ = union - inter
    return Hamming(differ, 0.0 if numel == 0 else differ / numel)


def hamming_distance(a, b, per_layer: bool = False) -> Hamming | dict[str, Hamming]:
    """The weights on which two masks disagree: ``Hamming(count, fraction)``, ``fraction`` of all weights
    (of the layer's, per layer)."""
    return _per_pair(a, b, per_layer, _hamming)


def _overlap(inter: int, union: int, na: int, nb: int, numel: int) -> float:
    smaller = min(na, nb)
    return 1.0 if smaller == 0 else inter / smaller


def intersection_over_minimum(a, b, per_layer: bool = False) -> float | dict[str, float]:
    """``|A n B| / min(|A|, |B|)`` (the overlap coefficient): 1 when the sparser mask keeps only weights the
    other keeps (nested IMP masks), 0 when they share none; 1 when either keeps nothing (the empty set lies
    inside any other)."""
    return _per_pair(a, b, per_layer, _overlap)


def _stack(masks_list) -> tuple[list[Masks], dict[str, Tensor]]:
    aligned = _aligned(masks_list)
    return aligned, {name: torch.stack([m[name] for m in aligned]) for name in aligned[0]}


def _unwrap_like(result: Masks, masks_list):
    return result["weight"] if isinstance(masks_list[0], Tensor) else result


def consensus_counts(masks_list) -> dict[str, Tensor]:
    """Per weight, how many of the N masks keep it (int64, 0..N), by weight name."""
    _, stacked = _stack(list(masks_list))
    return {name: s.sum(dim=0, dtype=torch.int64) for name, s in stacked.items()}


def consensus_fraction(masks_list) -> dict[str, Tensor] | Tensor:
    """Per weight, the fraction of the N masks that keep it (float32 in [0, 1]): the paper's non-binary
    consensus mask (Section 4.2). A dict by weight name (a tensor for tensors)."""
    masks_list = list(masks_list)
    n = len(masks_list)
    fractions = {name: c.to(torch.float32) / n for name, c in consensus_counts(masks_list).items()}
    return fractions["weight"] if isinstance(masks_list[0], Tensor) else fractions


def vote(masks_list, min_count: int):
    """The weights kept by at least ``min_count`` of the N masks (``min_count = N``: their intersection, the
    pret-a-porter ticket; ``1``: their union). ``min_count`` must lie in 1..N."""
    masks_list = list(masks_list)
    n = len(masks_list)
    if isinstance(min_count, bool) or not isinstance(min_count, int) or not 1 <= min_count <= max(n, 1):
        raise ValueError(f"min_count must be an integer in 1..{n} (the number of masks), got {min_count!r}")
    counts = consensus_counts(masks_list)
    return _unwrap_like(Masks({name: c >= min_count for name, c in counts.items()}), masks_list)


def intersection(masks_list):
    """The weights every mask keeps (the pret-a-porter ticket's mask: Paganini & Forde, Section 4.2)."""
    masks_list = list(masks_list)
    return vote(masks_list, len(masks_list))


def union(masks_list):
    """The weights some mask keeps."""
    return vote(list(masks_list), 1)


def overlap_counts(masks_list) -> dict:
    """How many masks keep each weight, counted per layer: the paper's per-layer consensus figures.

    Returns ``{"masks": N, "layers": {name: {"counts": [..], "fractions": [..]}}, "total": {...}}``
    where ``counts[c]`` is the number of the layer's weights kept by exactly ``c`` of the N masks
    (``c = 0..N``) and ``fractions[c]`` that over the layer's weights; ``total`` over all layers."""
    masks_list = list(masks_list)
    n = len(masks_list)
    counts = consensus_counts(masks_list)
    layers = {}
    total = torch.zeros(n + 1, dtype=torch.int64)
    for name, c in counts.items():
        hist = torch.bincount(c.reshape(-1).cpu(), minlength=n + 1)
        total += hist
        layers[name] = {"counts": hist.tolist(), "fractions": (hist.double() / max(c.numel(), 1)).tolist()}
    all_weights = int(total.sum())
    return {
        "masks": n,
        "layers": layers,
        "total": {"counts": total.tolist(), "fractions": (total.double() / max(all_weights, 1)).tolist()},
    }


def expected_jaccard_distance(density_a: float, density_b: float) -> float:
    """The Jaccard distance two *independent* random masks of these densities have in expectation (large
    layers): ``1 - p q / (p + q - p q)``; the baseline a measured distance is compared with."""
    for d in (density_a, density_b):
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"densities lie in [0, 1], got {d}")
    union_ = density_a + density_b - density_a * density_b
    return 0.0 if union_ == 0 else 1.0 - density_a * density_b / union_


def independent_jaccard_distance(a, b, sizes: Mapping[str, int] | None = None) -> float:
    """The Jaccard distance two *independent* random masks with the per-layer densities of ``a`` and ``b`` have in
    expectation: the baseline a distance between masks pruned layer by layer (or globally, which leaves each
    layer its own density) is compared with.

    ``a`` and ``b`` are :class:`Masks` (their layers' sizes and densities are read from them) or mappings of
    weight name to density, then with ``sizes`` (weight name to number of weights). With ``n`` weights and
    densities ``p``, ``q`` in a layer, independent masks of those kept counts share ``n p q`` weights in
    expectation (exactly: the hypergeometric mean) and their union holds ``n (p + q) - n p q``; the distance is
    ``1 - sum(n p q) / sum(n (p + q - p q))`` over the layers, the ratio of the expectations (which the expected
    ratio approaches as layers grow). One layer gives :func:`expected_jaccard_distance`; layers of different
    densities give less than the pooled densities would (IMP's global pruning: 0.526 against 0.529 for
    LeNet-300-100 at 64% density)."""
    if isinstance(a, Masks) or isinstance(b, Masks):
        if not (isinstance(a, Masks) and isinstance(b, Masks)):
            raise TypeError("give two Masks, or two mappings of densities with sizes")
        if list(a) != list(b):
            raise KeyError(f"masks cover different weights: {sorted(set(a) ^ set(b))}")
        sizes = {name: a[name].numel() for name in a}
        a, b = ({name: 1.0 - s for name, s in m.layer_sparsity().items()} for m in (a, b))
    elif sizes is None:
        raise TypeError("densities given by layer need the layers' sizes")
    if set(a) != set(b) or set(a) != set(sizes):
        odd = (set(a) | set(b) | set(sizes)) - (set(a) & set(b) & set(sizes))
        raise KeyError(f"the densities and sizes cover different weights: {sorted(odd)}")
    shared = union_ = 0.0
    for name, n in sizes.items():
        p, q = a[name], b[name]
        for d in (p, q):
            if not 0.0 <= d <= 1.0:
                raise ValueError(f"densities lie in [0, 1], got {d} for {name!r}")
        shared += n * p * q
        union_ += n * (p + q - p * q)
    return 0.0 if union_ == 0 else 1.0 - shared / union_


DISTANCES = {
    "jaccard": jaccard_distance,
    "hamming": lambda a, b, per_layer=False: _hamming_fraction(a, b, per_layer),
    "iom": lambda a, b, per_layer=False: _one_minus(intersection_over_minimum(a, b, per_layer)),
}


def _hamming_fraction(a, b, per_layer):
    h = hamming_distance(a, b, per_layer)
    return {k: v.fraction for k, v in h.items()} if per_layer else h.fraction


def _one_minus(value):
    return {k: 1.0 - v for k, v in value.items()} if isinstance(value, dict) else 1.0 - value


def distance_matrix(masks_list, metric: str = "jaccard", per_layer: bool = False):
    """The N x N matrix of pairwise distances (float64, symmetric, zero diagonal) between N masks.

    ``metric``: ``jaccard``, ``hamming`` (the fraction of weights that differ) or ``iom``
    (1 - intersection over minimum). With ``per_layer``, a dict of one matrix per weight name."""
    if metric not in DISTANCES:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(DISTANCES)}")
    masks_list = _aligned(list(masks_list))
    n = len(masks_list)
    names = list(masks_list[0])
    out = (
        {name: torch.zeros(n, n, dtype=torch.float64) for name in names}
        if per_layer
        else torch.zeros(n, n, dtype=torch.float64)
    )
    for i in range(n):
        for j in range(i + 1, n):
            d = DISTANCES[metric](masks_list[i], masks_list[j], per_layer=per_layer)
            if per_layer:
                for name in names:
                    out[name][i, j] = out[name][j, i] = d[name]
            else:
                out[i, j] = out[j, i] = d
    return out


def distances_over_rounds(rounds_a, rounds_b, metric: str = "jaccard", per_layer: bool = False) -> list:
    """The distance between two runs' masks round by round (the paper's distance-over-iterations figures):
    one entry per round both have (``rounds_a[r]`` against ``rounds_b[r]``)."""
    if metric not in DISTANCES:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(DISTANCES)}")
    return [DISTANCES[metric](a, b, per_layer=per_layer) for a, b in zip(rounds_a, rounds_b)]
