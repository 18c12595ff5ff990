"""Conversion of whole models to masked layers and back, and ``torch.nn.utils.prune`` interop."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import prune

from lth_sparse.nn.modules import MASKED_TYPES, MaskedMixin, strip_mask
from lth_sparse.ops import zero_pruned_


def _torch_prune_mask(module: nn.Module) -> torch.Tensor | None:
    """The mask of a layer pruned with torch.nn.utils.prune (and make the pruning permanent), or None."""
    if not hasattr(module, "weight_mask") or not hasattr(module, "weight_orig"):
        return None
    mask = module.weight_mask.detach().bool().clone()
    prune.remove(module, "weight")  # weight = weight_orig * weight_mask, hooks removed
    return mask


def masked(model: nn.Module) -> nn.Module:
    """Turn every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` into its masked layer, in place; returns ``model``.

    Weights, biases, device, dtype, hooks and the Parameter objects themselves are
    kept (an optimizer built before keeps working). A layer pruned with
    ``torch.nn.utils.prune`` keeps its mask (``weight_mask``), with its pruned
    weights zeroed. Layers already masked are left as they are. Only exact
    ``nn.Linear``/``nn.Conv2d`` are converted: subclasses with their own forward
    (e.g. the output projection inside ``nn.MultiheadAttention``, which never
    calls it) are left alone rather than given a mask that would not apply.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for module in model.modules():
        masked_cls = MASKED_TYPES.get(type(module))
        if masked_cls is None:
            continue
        mask = _torch_prune_mask(module)
        module.__class__ = masked_cls
        module._init_mask(mask)
    return model


@torch.no_grad()
def unmasked(model: nn.Module) -> nn.Module:
    """Turn every masked layer back into a plain ``nn.Linear``/``nn.Conv2d``, pruned weights set to zero, in place."""
    for module in model.modules():
        if isinstance(module, MaskedMixin):
            zero_pruned_(module.weight, strip_mask(module))
    return model


def to_torch_prune(model: nn.Module) -> nn.Module:
    """Turn every masked layer into a plain layer pruned with ``torch.nn.utils.prune.custom_from_mask``, in place."""
    for module in model.modules():
        if isinstance(module, MaskedMixin):
            prune.custom_from_mask(module, "weight", strip_mask(module))
    return model
