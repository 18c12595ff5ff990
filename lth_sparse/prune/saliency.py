"""Single-shot saliency pruners at initialisation: SNIP, GraSP and SynFlow, and random and magnitude pruning
under the same interface (the five pruners of Fischer & Burkholz's "Plant 'n' Seek", Sec. 3).

Score functions are public and separate from selection; every score is "higher is kept":

- :func:`snip_scores` (Lee et al. 2019, eq. 6, connection sensitivity): ``|dL/dw * w|``; the
  normalisation by the sum over all weights (Lee et al., Synaptic-Flow) is left out: it does not
  change the ranking.
- :func:`grasp_scores` (Wang et al. 2020, eq. 8): ``w * (H g)``, with ``g = dL/dw`` and ``H`` the
  Hessian of the loss, the logits divided by ``temperature`` (200, as the GraSP code and
  Synaptic-Flow). Wang et al.'s score is ``S(-w) = -w * (H g)`` and GraSP removes the *highest*
  ``S``; ours is ``-S``, so that removing the lowest score (what every selection here does) is
  GraSP's rule. Synaptic-Flow computes the same ``w * (H g)`` and prunes its lowest (its comment
  "negate to remove top percent" describes the sign, the code does not negate). Scores may be negative.
- :func:`synflow_scores` (Tanaka et al. 2020, eq. 3 and Algorithm 1): data-free. In a copy with
  every floating parameter and buffer replaced by its absolute value (BatchNorm's running statistics
  too, as Synaptic-Flow's ``linearize``), cast to float64 (the paper's remedy for overflow in deep
  networks), in eval mode, an all-ones input of one example's shape gives ``R = sum of the outputs``;
  the score is ``|dR/dw * w|``. Max-pooling and ReLU are kept as they are, as in Synaptic-Flow.

Masks are respected throughout: every layer computes with ``w * mask``, the derivatives are taken
with respect to ``w`` through that product (so GraSP's Hessian is the pruned network's), a pruned
weight scores exactly 0, and the selection ranks only the weights still unpruned.

Pruners (:func:`prune_snip`, :func:`prune_grasp`, :func:`prune_synflow`; ``get_pruner(name)`` for all
five) score, then select globally (all layers pooled; biases and other parameters are never pruned)
through :func:`~lth_sparse.prune.select_kept` (:func:`lth_sparse.ops.prune_lowest`), and return new
:class:`~lth_sparse.masks.Masks`; the model is not changed. How much is pruned, with the package's two
quantities under two names:

- ``fraction`` (positional, as :func:`~lth_sparse.prune.prune_magnitude`): the share of the *remaining*
  weights to remove: ``round(fraction * remaining)`` are pruned, ``0 <= fraction <= 1``;
- ``density`` (keyword): the share of *all* prunable weights (of the layers pruned, ``exclude``-d layers
  and biases not counted) kept afterwards: exactly ``round(density * total)`` remain,
  ``0 < density <= 1``, and no more than remain now (pruning never regrows a weight).
  Fischer & Burkholz's "sparsity" 0.01 is ``density=0.01``.

Exactly one of the two is given. SynFlow alone may iterate (``iterations=k``, Tanaka et al.'s Algorithm 1
prescribes ``SYNFLOW_ITERATIONS = 100``): round ``i`` re-scores with the current masks and keeps
``round(remaining_0 * (kept / remaining_0) ** (i / k))``, the exponential schedule ``density ** (i / k)``
of the paper when starting from a dense model; the last round keeps exactly the target. ``iterations=1``
(default) is single-shot, as Fischer & Burkholz's main experiments.

SNIP and GraSP score one batch, "the small pruning batch" (Fischer & Burkholz use Synaptic-Flow's
``prune_dataset_ratio=10``: ten examples per class, one batch), in eval mode (BatchNorm uses its running
statistics), as Synaptic-Flow's default ``prune_train_mode=False``; the model's own modes, weights and
statistics are never changed (scoring runs a weightless copy of the model's structure, with plain torch
layers, on the model's own tensors through ``torch.func.functional_call``).

Models: those of masked layers (:mod:`lth_sparse.nn`, :func:`lth_sparse.models.create_model`), and plain
models, whose ``nn.Linear`` / ``nn.Conv2d`` weights are the prunable ones (all-ones masks unless given; the
returned masks apply after ``lth_sparse.nn.masked(model)``). A model with masked layers prunes those only.

Building blocks, public for pipelines and analyses: :func:`prunable_layers` (what is scored),
:func:`prunable_masks` (the masks scoring starts from), :func:`magnitude_scores` and :func:`random_scores`
(the two baselines' scores). The selection, and the scores of magnitude and random pruning, are those of
:mod:`lth_sparse.prune.pruners` (:func:`~lth_sparse.prune.pruners.select_kept`,
:func:`~lth_sparse.prune.pruners.importance_scores`, :func:`~lth_sparse.prune.pruners.uniform_scores`):
one implementation of each for every pruner of the package.

The shuffle control (Frankle et al. 2021; Synaptic-Flow's ``--shuffle``, whose ``Pruner.shuffle()`` only
rebinds a local name and leaves the masks as they were) is :func:`lth_sparse.prune.random_masks_like`,
i.e. ``masks.permuted("layer")``: each layer's mask replaced by a uniformly random one with exactly its count.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from lth_sparse.masks import Masks, bare_named_modules, masked_weights, unwrap_model
from lth_sparse.nn.modules import MASKED_TYPES, MaskedMixin
from lth_sparse.prune._checks import check_count, check_density
from lth_sparse.prune.pruners import (
    importance_scores,
    select_kept,
    uniform_scores,
    unpruned_counts,
)

PRUNER_NAMES = ("random", "magnitude", "snip", "grasp", "synflow")
GRASP_TEMPERATURE = 200.0
SYNFLOW_ITERATIONS = 100

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


# --- the prunable weights and their masks ------------------------------------------------------------------------


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose weights the pruners here score, by bare weight name (``"features.0.weight"``).

    The masked layers of ``model`` when it has any; otherwise its plain ``nn.Linear`` and ``nn.Conv2d``
    layers (exactly those types, as :func:`lth_sparse.nn.masked` converts). Raises ValueError when there is
    none, and for a layer pruned with ``torch.nn.utils.prune`` (convert the model with ``masked`` first).
    """
    layers: dict[str, nn.Module] = dict(masked_weights(model))
    if layers:
        return layers
    for name, module in bare_named_modules(model):
        if type(module) in MASKED_TYPES:
            if hasattr(module, "weight_orig"):
                raise ValueError(
                    f"layer {name!r} is pruned with torch.nn.utils.prune: convert the model with "
                    "lth_sparse.nn.masked(model) first (it keeps the masks)"
                )
            layers[f"{name}.weight" if name else "weight"] = module
    if not layers:
        raise ValueError("the model has no nn.Linear or nn.Conv2d layer, masked or plain, to prune")
    return layers


class _Prepared(NamedTuple):
    """A model's prunable layers and masks, checked, with each mask counted once."""

    layers: dict[str, nn.Module]
    masks: Masks  # in layer order
    names: list[str]  # the layers to prune (not excluded)
    unpruned: dict[str, int]  # kept weights per layer

    def dense(self, name: str) -> bool:
        return self.unpruned[name] == self.masks[name].numel()

    def remaining(self) -> int:
        return sum(self.unpruned[n] for n in self.names)

    def total(self) -> int:
        return sum(self.masks[n].numel() for n in self.names)


def _prepare(model: nn.Module, masks: Mapping[str, Tensor] | None, exclude: Iterable[str] = ()) -> _Prepared:
    layers = prunable_layers(model)
    if isinstance(exclude, str):
        raise TypeError(f"exclude must be a collection of weight names, got the string {exclude!r}")
    exclude = set(exclude)
    if unknown := exclude - set(layers):
        raise KeyError(f"exclude names no prunable weight: {sorted(unknown)} (prunable weights: {list(layers)})")
    if masks is None:
        if any(isinstance(m, MaskedMixin) for m in layers.values()):
            masks = {n: m.mask.detach() for n, m in layers.items()}  # read only; select_kept returns new tensors
        else:
            masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in layers.items()}
    masks = masks if isinstance(masks, Masks) else Masks(masks)
    if set(masks) != set(layers):
        raise KeyError(f"masks cover {sorted(masks)}, the model's prunable weights are {sorted(layers)}")
    for n, layer in layers.items():
        if masks[n].shape != layer.weight.shape:
            raise ValueError(
                f"mask {n!r} must have the weight's shape {tuple(layer.weight.shape)}, got {tuple(masks[n].shape)}"
            )
    masks = Masks({n: masks[n] for n in layers})
    return _Prepared(layers, masks, [n for n in layers if n not in exclude], unpruned_counts(masks))


def prunable_masks(model: nn.Module, masks: Mapping[str, Tensor] | None = None) -> Masks:
    """The masks of :func:`prunable_layers` that the pruners here start from, in layer order: ``masks`` checked
    against the model, or by default the model's own (all kept for a plain model).

    Read them, do not write them: they may be the given tensors or the model's own mask buffers. Raises
    KeyError for masks of other weights than the prunable ones, ValueError for a mask of the wrong shape,
    and :func:`prunable_layers`' errors.
    """
    return _prepare(model, masks).masks


def _kept(remaining: int, total: int, fraction: float | None, density: float | None) -> int:
    if (fraction is None) == (density is None):
        raise ValueError(
            "give exactly one of fraction (the share of the remaining weights to remove) and "
            f"density (the share of all prunable weights to keep), got fraction={fraction!r}, "
            f"density={density!r}"
        )
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 <= fraction <= 1.0:
            raise ValueError(
                f"fraction must be in [0, 1] (the share of the remaining weights to remove), got {fraction!r}"
            )
        return remaining - round(fraction * remaining)
    check_density(density, "the share of all prunable weights kept")
    kept = round(density * total)  # the density as given (a Fraction stays exact)
    if kept > remaining:
        raise ValueError(
            f"density={density} keeps {kept} of the {total} prunable weights, but only {remaining} "
            f"are unpruned (density {remaining / max(total, 1):.6g}): pruning cannot regrow weights"
        )
    return kept


# --- running the model on given tensors ---------------------------------------------------------------------------


class _ScoringNetwork:
    """The model's structure with plain torch layers, run on given tensors (``torch.func.functional_call``).

    A structural copy: one new module object per module of the model, its attributes (the layer's
    configuration) shared with the original, its own dicts of parameters, buffers and children (holding the
    model's tensors until ``functional_call`` puts others in their place, in these dicts only), wrappers
    (DDP, ``torch.compile``) replaced by what they hold, masked layers made their plain torch layer (no mask
    buffer), every module in eval mode. Nothing of the model is written, its mode included, and no tensor is
    copied. Plain layers have plain derivatives of every order (GraSP's Hessian-vector product needs the
    second). ``tensors`` maps the copy's parameter and buffer names to the model's own tensors (detached).
    """

    def __init__(self, model: nn.Module) -> None:
        self.net = self._structure(model, {})
        self.tensors: dict[str, Tensor] = {}
        for name, module in bare_named_modules(model):
            prefix = f"{name}." if name else ""
            for key, p in module._parameters.items():
                if p is not None:
                    self.tensors[prefix + key] = p.detach()
            for key, b in module._buffers.items():
                if b is not None and not (isinstance(module, MaskedMixin) and key == "mask"):
                    self.tensors[prefix + key] = b.detach()

    @classmethod
    def _structure(cls, module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
        module = unwrap_model(module)
        if id(module) in memo:  # a module used twice stays one module
            return memo[id(module)]
        kind = type(module)
        if isinstance(module, MaskedMixin):
            kind = next(base for base, masked_kind in MASKED_TYPES.items() if isinstance(module, masked_kind))
        # object.__new__ and a copied __dict__, not copy.copy: no copying protocol of the class runs for this
        # throwaway copy (a masked layer's __setstate__ registers its weight with the optimizer hook).
        new = object.__new__(kind)
        new.__dict__.update(module.__dict__)
        memo[id(module)] = new
        new.training = False
        new._parameters = dict(module._parameters)
        masked_layer = isinstance(module, MaskedMixin)
        new._buffers = {k: b for k, b in module._buffers.items() if not (masked_layer and k == "mask")}
        new._modules = {
            k: None if child is None else cls._structure(child, memo) for k, child in module._modules.items()
        }
        return new

    def __call__(self, inputs: Tensor, tensors: Mapping[str, Tensor]) -> Tensor:
        return functional_call(self.net, dict(tensors), (inputs,))


def _masked(weight: Tensor, mask: Tensor, dense: bool) -> Tensor:
    """``weight * mask`` (as a ``where``: its derivatives of every order are masked); the weight itself when
    nothing is pruned (``dense``: no copy)."""
    return weight if dense else torch.where(mask, weight, weight.new_zeros(()))


def _check_batch(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2 or not all(isinstance(t, Tensor) for t in batch):
        raise TypeError(f"batch must be a pair (inputs, targets) of tensors, got {type(batch).__name__}")
    inputs, targets = batch
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise ValueError(f"batch inputs must hold at least one example (N, ...), got shape {tuple(inputs.shape)}")
    if targets.dim() == 0 or targets.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"batch targets must have one entry per example ({inputs.shape[0]}), got shape {tuple(targets.shape)}"
        )
    shape = getattr(unwrap_model(model), "input_shape", None)
    if shape is not None and tuple(inputs.shape[1:]) != tuple(shape):
        raise ValueError(
            f"batch inputs must have shape (N, *input_shape) = (N, {', '.join(map(str, shape))}) "
            f"for this model, got {tuple(inputs.shape)}"
        )
    return inputs, targets


def _forward(net: _ScoringNetwork, inputs: Tensor, tensors: Mapping[str, Tensor]) -> Tensor:
    try:
        return net(inputs, tensors)
    except RuntimeError as exc:
        raise ValueError(f"the model cannot run on batch inputs of shape {tuple(inputs.shape)}: {exc}") from exc


def _scalar_loss(loss: Tensor) -> Tensor:
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError(
            f"loss_fn must return a scalar (reduction 'mean' or 'sum'), got "
            f"{tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__}"
        )
    return loss


def _grads(output: Tensor, leaves: list[Tensor], create_graph: bool = False) -> list[Tensor | None]:
    return list(torch.autograd.grad(output, leaves, create_graph=create_graph, allow_unused=True))


# --- scores ------------------------------------------------------------------------------------------------------


def _times(grad: Tensor, weight: Tensor) -> Tensor:
    """``grad * weight``, in the gradient's own storage where it has one (an expanded gradient has not)."""
    return grad.mul_(weight) if grad.is_contiguous() and grad.shape == weight.shape else grad * weight


def _leaves(net: _ScoringNetwork, names: Iterable[str]) -> dict[str, Tensor]:
    """The weights as leaves of a new graph (the model's storage, detached: nothing of it is written)."""
    return {n: net.tensors[n].detach().requires_grad_() for n in names}


def _snip(model: nn.Module, p: _Prepared, batch: Batch, loss_fn: LossFn) -> dict[str, Tensor]:
    inputs, targets = _check_batch(model, batch)
    net = _ScoringNetwork(model)
    leaves = _leaves(net, p.layers)
    with torch.enable_grad():
        tensors = {**net.tensors, **{n: _masked(leaves[n], p.masks[n], p.dense(n)) for n in p.layers}}
        loss = _scalar_loss(loss_fn(_forward(net, inputs, tensors), targets))
        grads = _grads(loss, list(leaves.values()))
    return {
        n: torch.zeros_like(leaves[n]) if g is None else _times(g, leaves[n].detach()).abs_()
        for n, g in zip(p.layers, grads)
    }


def snip_scores(
    model: nn.Module, batch: Batch, loss_fn: LossFn = F.cross_entropy, masks: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """SNIP's connection sensitivity ``|dL/dw * w|`` (Lee et al. 2019, eq. 6) of every prunable weight.

    batch: ``(inputs (N, *input_shape), targets (N, ...))``; loss_fn: ``loss_fn(outputs, targets)``, a
    scalar (default cross-entropy, mean over the batch); masks: default the model's own. Computed in the
    weights' dtype, in eval mode, the loss of ``w * mask``. Returns scores by weight name, 0 where pruned.
    Raises TypeError / ValueError for a batch that is not a pair of tensors with one target per example,
    inputs of a shape the model does not take, or a loss that is not a scalar.
    """
    return _snip(model, _prepare(model, masks), batch, loss_fn)


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")


def _grasp(model: nn.Module, p: _Prepared, batch: Batch, loss_fn: LossFn, temperature: float) -> dict[str, Tensor]:
    _check_temperature(temperature)
    inputs, targets = _check_batch(model, batch)
    net = _ScoringNetwork(model)
    leaves = _leaves(net, p.layers)
    with torch.enable_grad():
        tensors = {**net.tensors, **{n: _masked(leaves[n], p.masks[n], p.dense(n)) for n in p.layers}}
        loss = _scalar_loss(loss_fn(_forward(net, inputs, tensors) / temperature, targets))
        grads = _grads(loss, list(leaves.values()), create_graph=True)
        used = [(n, g) for n, g in zip(p.layers, grads) if g is not None]
        hessian_grads: list[Tensor | None] = [None] * len(used)
        if used:
            g_dot_g = sum((g * g.detach()).sum() for _, g in used)
            if g_dot_g.requires_grad:  # a loss linear in every weight has H = 0
                hessian_grads = _grads(g_dot_g, [leaves[n] for n, _ in used])
    hg = dict(zip([n for n, _ in used], hessian_grads))
    return {
        n: torch.zeros_like(leaves[n]) if hg.get(n) is None else _times(hg[n], leaves[n].detach()) for n in p.layers
    }


def grasp_scores(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn = F.cross_entropy,
    masks: Mapping[str, Tensor] | None = None,
    *,
    temperature: float = GRASP_TEMPERATURE,
) -> dict[str, Tensor]:
    """GraSP's ``w * (H g)`` (Wang et al. 2020, eq. 8, with the sign that keeps the highest; see the module
    docstring) of every prunable weight: ``g`` the gradient and ``H`` the Hessian, with respect to the
    unpruned weights, of ``loss_fn(outputs / temperature, targets)``.

    One forward pass builds ``g`` with its graph; ``H g`` is the gradient of ``g . stop_gradient(g)``
    (Synaptic-Flow runs two forward passes for the same product). Arguments and errors as
    :func:`snip_scores`; temperature > 0 (200 as Wang et al.'s code). Scores are 0 where pruned.
    """
    return _grasp(model, _prepare(model, masks), batch, loss_fn, temperature)


class _SynFlow:
    """SynFlow's linearised copy, made once and scored for any masks (the rounds of iterative SynFlow)."""

    def __init__(
        self, model: nn.Module, layers: Mapping[str, nn.Module], input_shape: tuple[int, ...] | None, dtype: torch.dtype
    ) -> None:
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        if input_shape is None:
            input_shape = getattr(unwrap_model(model), "input_shape", None)
            if input_shape is None:
                raise ValueError(
                    "input_shape (one example's shape, e.g. (3, 32, 32)) is needed: the model has "
                    "no input_shape attribute"
                )
        input_shape = tuple(input_shape)
        if not input_shape or not all(isinstance(d, numbers.Integral) and d >= 1 for d in input_shape):
            raise ValueError(f"input_shape must be a non-empty tuple of positive sizes, got {input_shape}")
        self.layers = list(layers)
        self.net = _ScoringNetwork(model)
        # copy=True: a tensor already in ``dtype`` would otherwise be the model's own, made positive in place
        self.tensors = {
            k: v.to(dtype, copy=True).abs_() if v.is_floating_point() else v for k, v in self.net.tensors.items()
        }
        device = self.tensors[self.layers[0]].device
        self.input = torch.ones(1, *input_shape, dtype=dtype, device=device)

    def scores(self, masks: Masks, unpruned: Mapping[str, int]) -> dict[str, Tensor]:
        leaves = {n: self.tensors[n].detach().requires_grad_() for n in self.layers}
        with torch.enable_grad():
            tensors = {
                **self.tensors,
                **{n: _masked(leaves[n], masks[n], unpruned[n] == masks[n].numel()) for n in self.layers},
            }
            try:
                flow = self.net(self.input, tensors).sum()
            except RuntimeError as exc:
                raise ValueError(f"the model cannot run on an input of shape {tuple(self.input.shape)}: {exc}") from exc
            if not torch.isfinite(flow):
                raise ValueError(
                    f"the synaptic flow R = {float(flow)} overflowed {self.input.dtype}: score in "
                    "float64 (dtype=torch.float64)"
                )
            grads = _grads(flow, list(leaves.values()))
        return {
            n: torch.zeros_like(leaves[n]) if g is None else _times(g, leaves[n].detach())
            for n, g in zip(self.layers, grads)
        }


def synflow_scores(
    model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    masks: Mapping[str, Tensor] | None = None,
    *,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Tensor]:
    """SynFlow's ``|dR/dw * w|`` (Tanaka et al. 2020, eq. 3): ``R`` the summed output of the network with
    every floating parameter and buffer made positive (``|.|``), run in ``dtype`` (float64) in eval mode on
    one all-ones input of ``input_shape`` (one example's shape; default ``model.input_shape``).

    Data-free: no batch. Returns float scores (``dtype``) by weight name, 0 where pruned; with every weight
    positive they equal ``dR/dw * w``, and for a bias-free network of linear layers and ReLUs each layer's
    scores sum to ``R`` (Tanaka et al.'s conservation, Theorem 2). The model is not changed. Raises
    ValueError without an input shape, or when ``R`` overflows.
    """
    p = _prepare(model, masks)
    return _SynFlow(model, p.layers, input_shape, dtype).scores(p.masks, p.unpruned)


def _magnitude(p: _Prepared) -> dict[str, Tensor]:
    scores = importance_scores({n: layer.weight for n, layer in p.layers.items()}, p.masks, "magnitude")
    return {n: s if p.dense(n) else s.mul_(p.masks[n]) for n, s in scores.items()}


def magnitude_scores(model: nn.Module, masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """``|w|`` of every prunable weight (Frankle & Carbin 2019), 0 where pruned: the magnitude scores of
    :func:`~lth_sparse.prune.importance_scores` (float32 for float16 and bfloat16 weights)."""
    return _magnitude(_prepare(model, masks))


def _random(p: _Prepared, generator: torch.Generator | None) -> dict[str, Tensor]:
    scores = uniform_scores(p.masks, generator)
    return {n: s if p.dense(n) else s.mul_(p.masks[n]) for n, s in scores.items()}


def random_scores(
    model: nn.Module, masks: Mapping[str, Tensor] | None = None, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """Uniform random scores of every prunable weight, drawn on the CPU with ``generator`` layer by layer
    (:func:`~lth_sparse.prune.uniform_scores`, as :func:`~lth_sparse.prune.prune_random`), 0 where pruned."""
    return _random(_prepare(model, masks), generator)


# --- pruners -----------------------------------------------------------------------------------------------------


def _prune(
    p: _Prepared, scores: Callable[[], dict[str, Tensor]], fraction: float | None, density: float | None
) -> Masks:
    kept = _kept(p.remaining(), p.total(), fraction, density)  # arguments checked before any scoring
    return select_kept(scores(), p.masks, p.names, kept, p.unpruned)


def prune_snip(
    model: nn.Module,
    fraction: float | None = None,
    *,
    density: float | None = None,
    batch: Batch,
    loss_fn: LossFn = F.cross_entropy,
    masks: Mapping[str, Tensor] | None = None,
    exclude: Iterable[str] = (),
) -> Masks:
    """New masks pruning by :func:`snip_scores` on ``batch``, globally, to ``fraction`` or ``density`` (one of
    them, see the module docstring). exclude: weight names never pruned (they still count in the scores'
    forward pass). Errors as :func:`snip_scores`, and ValueError for both or neither of ``fraction`` and
    ``density``, a value outside its range, or a density above the current one (pruning cannot regrow)."""
    p = _prepare(model, masks, exclude)
    return _prune(p, lambda: _snip(model, p, batch, loss_fn), fraction, density)


def prune_grasp(
    model: nn.Module,
    fraction: float | None = None,
    *,
    density: float | None = None,
    batch: Batch,
    loss_fn: LossFn = F.cross_entropy,
    masks: Mapping[str, Tensor] | None = None,
    exclude: Iterable[str] = (),
    temperature: float = GRASP_TEMPERATURE,
) -> Masks:
    """New masks pruning the lowest :func:`grasp_scores` ``w * Hg`` (GraSP's highest ``-w * Hg``) on
    ``batch``, globally, to ``fraction`` or ``density``; arguments as :func:`prune_snip`."""
    p = _prepare(model, masks, exclude)
    return _prune(p, lambda: _grasp(model, p, batch, loss_fn, temperature), fraction, density)


def prune_synflow(
    model: nn.Module,
    fraction: float | None = None,
    *,
    density: float | None = None,
    input_shape: tuple[int, ...] | None = None,
    iterations: int = 1,
    masks: Mapping[str, Tensor] | None = None,
    exclude: Iterable[str] = (),
    dtype: torch.dtype = torch.float64,
) -> Masks:
    """New masks pruning by :func:`synflow_scores`, globally, to ``fraction`` or ``density``, in
    ``iterations`` rounds that each re-score with the masks of the round before (Tanaka et al.'s
    Algorithm 1 with ``iterations=SYNFLOW_ITERATIONS``; the schedule is in the module docstring).
    ``iterations=1`` is single-shot. Data-free; other arguments as :func:`prune_snip`."""
    check_count("iterations", iterations)
    p = _prepare(model, masks, exclude)
    kept = _kept(p.remaining(), p.total(), fraction, density)
    synflow = _SynFlow(model, p.layers, input_shape, dtype)
    masks, unpruned, start = p.masks, p.unpruned, p.remaining()
    for i in range(1, iterations + 1):
        now = sum(unpruned[n] for n in p.names)
        goal = kept if i == iterations or start == 0 else round(start * (kept / start) ** (i / iterations))
        masks = select_kept(synflow.scores(masks, unpruned), masks, p.names, min(max(goal, kept), now), unpruned)
        if i < iterations:
            unpruned = {**unpruned, **unpruned_counts({n: masks[n] for n in p.names})}
    return masks


def _prune_magnitude(
    model: nn.Module,
    fraction: float | None = None,
    *,
    density: float | None = None,
    masks: Mapping[str, Tensor] | None = None,
    exclude: Iterable[str] = (),
) -> Masks:
    p = _prepare(model, masks, exclude)
    return _prune(p, lambda: _magnitude(p), fraction, density)


def _prune_random(
    model: nn.Module,
    fraction: float | None = None,
    *,
    density: float | None = None,
    masks: Mapping[str, Tensor] | None = None,
    exclude: Iterable[str] = (),
    generator: torch.Generator | None = None,
) -> Masks:
    p = _prepare(model, masks, exclude)
    return _prune(p, lambda: _random(p, generator), fraction, density)


# --- registry ----------------------------------------------------------------------------------------------------

_IMPLEMENTATIONS: dict[str, tuple[Callable[..., Masks], tuple[str, ...]]] = {
    # name: (pruner, the context keywords it uses)
    "random": (_prune_random, ("generator",)),
    "magnitude": (_prune_magnitude, ()),
    "snip": (prune_snip, ("batch", "loss_fn")),
    "grasp": (prune_grasp, ("batch", "loss_fn")),
    "synflow": (prune_synflow, ("input_shape",)),
}


def pruner_names() -> tuple[str, ...]:
    """The registered single-shot pruners: ``random``, ``magnitude``, ``snip``, ``grasp``, ``synflow``."""
    return PRUNER_NAMES


def get_pruner(name: str) -> Callable[..., Masks]:
    """The pruner ``name`` (one of :func:`pruner_names`), with one signature for all five::

        pruner(model, fraction=None, *, density=None, masks=None, exclude=(), batch=None,
               loss_fn=F.cross_entropy, input_shape=None, generator=None, **options) -> Masks

    ``batch`` / ``loss_fn`` (SNIP, GraSP), ``input_shape`` (SynFlow) and ``generator`` (random) are the
    context a pruner may need; each pruner reads only its own, so one call site serves all five (SNIP and
    GraSP refuse a missing batch). ``options`` are the pruner's own keywords (``temperature`` for GraSP;
    ``iterations``, ``dtype`` for SynFlow); any other is a TypeError. Selection is global; magnitude and
    random keep exactly what :func:`~lth_sparse.prune.prune_magnitude` / ``prune_random`` (global) keep.
    Raises ValueError for an unknown name, listing the known ones.
    """
    if not isinstance(name, str) or name.strip().lower() not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown pruner {name!r}; available: {', '.join(PRUNER_NAMES)}")
    key = name.strip().lower()
    implementation, uses = _IMPLEMENTATIONS[key]

    def pruner(
        model: nn.Module,
        fraction: float | None = None,
        *,
        density: float | None = None,
        masks: Mapping[str, Tensor] | None = None,
        exclude: Iterable[str] = (),
        batch: Batch | None = None,
        loss_fn: LossFn = F.cross_entropy,
        input_shape: tuple[int, ...] | None = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> Masks:
        context = {"batch": batch, "loss_fn": loss_fn, "input_shape": input_shape, "generator": generator}
        if "batch" in uses and batch is None:
            raise ValueError(f"the {key} pruner scores a batch: pass batch=(inputs, targets)")
        return implementation(
            model, fraction, density=density, masks=masks, exclude=exclude, **{k: context[k] for k in uses}, **options
        )

    pruner.__name__ = f"prune_{key}"
    pruner.__qualname__ = pruner.__name__
    pruner.__doc__ = f"The {key} pruner of lth_sparse.prune.get_pruner (its docstring gives the signature)."
    return pruner
