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

import os
import sys
from collections.abc import Iterator, Mapping

import torch
import torch.nn as nn
from torch import Tensor

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


def _bare_named_modules(model: nn.Module):
    """``named_modules()`` with the wrappers left out: (name in the bare model, module), each module once."""
    seen = set()
    stack = [("", model)]
    while stack:
        prefix, module = stack.pop()
        module = unwrap_model(module)
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield prefix, module
        children = [(f"{prefix}.{name}" if prefix else name, child)
                    for name, child in module._modules.items() if child is not None]
        stack.extend(reversed(children))  # pre-order, children in registration order, as named_modules()


def masked_weights(model: nn.Module) -> dict[str, MaskedMixin]:
    """The masked layers of ``model`` by weight name (``"features.0.weight"``), in module order.

    Names are the bare model's: DDP, DataParallel and ``torch.compile`` wrappers,
    anywhere in the model, add nothing to them.
    """
    return {(f"{name}.weight" if name else "weight"): module
            for name, module in _bare_named_modules(model) if isinstance(module, MaskedMixin)}


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
        for name, module in _bare_named_modules(model):
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
                raise KeyError(f"mask {name!r} matches no masked layer of the model "
                               f"(its masked weights: {', '.join(layers) or 'none'})")
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
        return all(self[n].shape == other[n].shape and torch.equal(self[n], other[n].to(self[n].device))
                   for n in self)

    __hash__ = None

    def is_subset_of(self, other: Masks) -> bool:
        """True when every weight kept here is kept in ``other`` (IMP's masks are nested)."""
        both = self._pairwise(other, torch.logical_and)
        return all(torch.equal(both[n], self[n]) for n in self)

    # Files
    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` in safetensors (no pickle), atomically."""
        from safetensors.torch import save_file

        from lth_sparse.runs import atomic_write

        tensors = {n: m.detach().cpu().contiguous() for n, m in self._masks.items()}
        atomic_write(path, lambda tmp: save_file(tensors, os.fspath(tmp), metadata={"format": _FORMAT}))

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu") -> Masks:
        """Read masks written by :meth:`save`."""
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no masks file at {path}")
        with safe_open(path, framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != _FORMAT:
                raise ValueError(f"{path} is not an lth_sparse masks file (format {metadata.get('format')!r})")
            return cls({name: f.get_tensor(name) for name in f.keys()})
