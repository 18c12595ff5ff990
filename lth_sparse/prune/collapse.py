"""Layer collapse: layers that pruning has cut out of the network.

Tanaka et al. (2020, Sec. 3) call it layer collapse when a pruner removes all weights of a layer, which
makes the network untrainable; Fischer & Burkholz (2022, Sec. 3.1) observe it for every single-shot pruner
at extreme sparsity ("entire layers are masked, thus disrupting flow through the network"). Two per-layer
facts are reported, and one about the network:

- ``pruned``: every weight of the layer is pruned (Tanaka et al.'s definition);
- ``disconnected``: none of the layer's kept weights lies on a path from the input to the output (its
  effective mask, :func:`lth_sparse.prune.effective_masks`, Vysogorets & Kempe 2023, is empty). A pruned
  layer is disconnected; so is every layer after a pruned one in a chain (VGG), and a layer whose kept
  weights all feed units that no longer reach the output. Biases and BatchNorm shifts do not count as
  paths: a unit fed only by its bias carries no signal from the input.
- :func:`network_collapsed`: no kept weight lies on any input-output path, so the output no longer
  depends on the input. For the models of :mod:`lth_sparse.models` (every input-output path crosses a
  masked layer) this is exactly "the network is collapsed".

Residual shortcuts count as paths: in a ResNet whose block has its two convolutions fully pruned, those
two layers are collapsed (``pruned``, or ``disconnected``), but the identity shortcut (or a projection
shortcut with kept weights) still carries the signal around them, so every other layer keeps its paths
and the network is not collapsed. A layer's collapse is a fact about that layer; whether the network is
cut is :func:`network_collapsed`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch.nn as nn
from torch import Tensor

from lth_sparse.masks import Masks, masked_weights, unwrapped_copy
from lth_sparse.nn import masked
from lth_sparse.prune.effective import effective_masks
from lth_sparse.prune.saliency import prunable_masks


class LayerCollapse(NamedTuple):
    """Whether one layer is collapsed, and how (see the module docstring)."""

    pruned: bool  # every weight pruned
    disconnected: bool  # no kept weight on an input-output path (True when pruned)

    @property
    def collapsed(self) -> bool:
        """Pruned or disconnected: the layer passes no signal from the input to the output."""
        return self.pruned or self.disconnected


def _effective(
    model: nn.Module, masks: Mapping[str, Tensor] | None, input_shape: tuple[int, ...] | None
) -> tuple[Masks, Masks]:
    masks = prunable_masks(model, masks)
    if not masked_weights(model):  # a plain model: reachability runs on a masked copy
        model = masked(unwrapped_copy(model))
    return masks, effective_masks(model, masks, input_shape)


def layer_collapse(
    model: nn.Module, masks: Mapping[str, Tensor] | None = None, input_shape: tuple[int, ...] | None = None
) -> dict[str, LayerCollapse]:
    """Per prunable layer (by weight name, in model order), whether it is pruned to zero or disconnected.

    model: masked or plain (its ``nn.Linear`` / ``nn.Conv2d`` weights), possibly wrapped; not changed.
    masks: default the model's own (all kept for a plain model); input_shape: one example's shape, default
    ``model.input_shape``. Raises ValueError without an input shape, KeyError / ValueError for masks that do
    not match the model's prunable weights.
    """
    masks, effective = _effective(model, masks, input_shape)
    return {n: LayerCollapse(pruned=not bool(masks[n].any()), disconnected=not bool(effective[n].any())) for n in masks}


def network_collapsed(
    model: nn.Module, masks: Mapping[str, Tensor] | None = None, input_shape: tuple[int, ...] | None = None
) -> bool:
    """True when no kept weight lies on a path from the input to the output (the output no longer depends
    on the input); a fully pruned residual block whose shortcut carries the signal does not collapse the
    network. Arguments as :func:`layer_collapse`."""
    _, effective = _effective(model, masks, input_shape)
    return not any(bool(m.any()) for m in effective.values())
