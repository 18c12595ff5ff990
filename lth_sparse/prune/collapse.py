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

Whether a mask can still learn a task is more than whether a path is left: a mask that keeps one path of a
few weights is not collapsed in the sense above, yet on Plant 'n' Seek's Circle it trains to chance (its output
is a function of one projection of the input, which no ring boundary is). Where the task is given by a target
network that solves it (a planted ticket), :func:`task_collapse` says whether the mask can compute that target
for some values of its kept weights, by four criteria, each a necessary condition, in this order
(:data:`COLLAPSE_CRITERIA`):

- ``no_path``: no kept weight on an input-output path (:func:`network_collapsed`, the reading above);
- ``dead_output``: an output that the target computes from its input receives no kept path from the input:
  the mask's output there is a constant, the target's is not;
- ``input_rank``: the kept first-layer weights on input-output paths have a structural rank (the largest rank
  any values of them give, :func:`structural_rank`) below the number of input directions the target needs,
  the rank of its own first layer: the network then computes a function of fewer projections of the input
  (Circle needs two, its rings being no function of one projection; ReLU and Helix have one input);
- ``output_rank``: the kept last-layer weights on input-output paths have a structural rank below the rank
  of the target's last layer, the dimension of the affine span its outputs fill (Helix: 3, its three
  coordinates; Circle: 1, its four scores all affine in one radius; ReLU: 1): the outputs are then confined to
  a flatter affine subspace than the target's.

Each criterion only tells that the mask cannot compute the target; a mask that passes all four may still
train badly. The rank criteria read the first and last masked layers as ``(out, in)`` matrices, as in the
MLPs that planting builds. :func:`target_needs` reads what a target needs from its weights.

Residual shortcuts count as paths: in a ResNet whose block has its two convolutions fully pruned, those
two layers are collapsed (``pruned``, or ``disconnected``), but the identity shortcut (or a projection
shortcut with kept weights) still carries the signal around them, so every other layer keeps its paths
and the network is not collapsed. A layer's collapse is a fact about that layer; whether the network is
cut is :func:`network_collapsed`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from lth_sparse.masks import Masks, masked_weights, unwrapped_copy
from lth_sparse.nn import masked
from lth_sparse.prune.effective import effective_masks
from lth_sparse.prune.saliency import prunable_layers, prunable_masks


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


#: The criteria of :func:`task_collapse`, in the order they are checked (see the module docstring).
COLLAPSE_CRITERIA: tuple[str, ...] = ("no_path", "dead_output", "input_rank", "output_rank")


class TargetNeeds(NamedTuple):
    """What a mask needs to compute a target network (see the module docstring)."""

    outputs: tuple[int, ...]  # the outputs the target computes from its input (reached by a path)
    input_rank: int  # the rank of the target's first layer: the input directions it reads
    output_rank: int  # the rank of the target's last layer: the dimension of its outputs' affine span


def structural_rank(mask: Tensor) -> int:
    """The rank that a matrix with non-zeros where ``mask`` is True has for almost all values of them (the
    size of a largest matching of its rows to its columns): the highest rank that training the kept weights
    can reach. mask: ``(out, ...)``, read as ``(out, -1)``. Computed as the rank of the pattern filled with
    Gaussian values of a fixed seed, in float64."""
    pattern = mask.detach().reshape(mask.shape[0], -1).to(device="cpu", dtype=torch.float64)
    if not bool(pattern.any()):
        return 0
    values = torch.randn(pattern.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return int(torch.linalg.matrix_rank(values * pattern))


def target_needs(target: nn.Module, input_shape: tuple[int, ...]) -> TargetNeeds:
    """What a mask must keep to compute ``target`` (a plain model whose prunable layers are ``nn.Linear``, e.g.
    :func:`lth_sparse.planting.make_target`'s; its zero weights are absent edges): the outputs its non-zero
    weights connect to the input, and the numerical ranks of its first and last layers' weights."""
    weights = {name: layer.weight.detach() for name, layer in prunable_layers(target).items()}
    _, effective = _effective(target, {name: w != 0 for name, w in weights.items()}, input_shape)
    names = list(weights)
    first, last = (weights[n].double().reshape(weights[n].shape[0], -1) for n in (names[0], names[-1]))
    reached = effective[names[-1]].reshape(last.shape[0], -1).any(dim=1)
    return TargetNeeds(
        outputs=tuple(int(i) for i in reached.nonzero().flatten()),
        input_rank=int(torch.linalg.matrix_rank(first)),
        output_rank=int(torch.linalg.matrix_rank(last)),
    )


def task_collapse(
    model: nn.Module,
    masks: Mapping[str, Tensor] | None,
    needs: TargetNeeds,
    input_shape: tuple[int, ...] | None = None,
) -> tuple[str, ...]:
    """The criteria of :data:`COLLAPSE_CRITERIA` by which ``masks`` cannot compute the target of ``needs``
    (:func:`target_needs`), in that order; empty when none fires. ``no_path`` alone when no path is left (the
    others then follow from it). Arguments as :func:`layer_collapse`."""
    _, effective = _effective(model, masks, input_shape)
    layers = [m.reshape(m.shape[0], -1) for m in effective.values()]
    if not any(bool(m.any()) for m in layers):
        return ("no_path",)
    reached = layers[-1].any(dim=1)
    fired = []
    if any(not bool(reached[i]) for i in needs.outputs):
        fired.append("dead_output")
    if structural_rank(layers[0]) < needs.input_rank:
        fired.append("input_rank")
    if structural_rank(layers[-1]) < needs.output_rank:
        fired.append("output_rank")
    return tuple(fired)
