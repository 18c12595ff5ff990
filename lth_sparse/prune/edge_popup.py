"""Edge-popup (Ramanujan et al., 2020): strong tickets found by training a score per weight, the weights frozen.

Every ``nn.Linear`` and ``nn.Conv2d`` layer of the model (masked or plain; the first and the last too, as
edge-popup's ``--first-layer-dense``/``--last-layer-dense`` are off by default and Plant 'n' Seek scores every
layer) gets a score per weight and, as Plant 'n' Seek extends edge-popup (Fischer & Burkholz, 2022, Sec. 3),
a score per bias. The network computes with ``W * topk(|S_W|)`` and ``b * topk(|S_b|)``: in each layer the
``n - int((1 - density) * n)`` entries of largest ``|score|`` are kept, for its ``n`` weights and, apart, for
its biases. The top-k is straight-through (its backward is the identity), so the scores are trained by SGD while
the weights and biases never change. What is found is a *strong* ticket: a subnetwork that works with the
initial weights, untrained.

Readings of the papers and of the reference code (edge-popup: ``allenai/hidden-networks``,
``utils/conv_type.py``; Plant 'n' Seek: ``RelationalML/PlantNSeek``, ``edgepopup_benchmarkdata/``), and why:

- **The kept count** is ``GetSubnet``'s, ``n - int((1 - density) * n)`` per tensor (it prunes ``j = int((1 - k)
  * scores.numel())`` entries, in Python's float64), selected by :func:`lth_sparse.ops.prune_lowest` (ties: the
  lower flat index is pruned first, so the choice is deterministic; ``GetSubnet``'s ``sort`` has no tie rule).
  It keeps at least one entry of every tensor at any density whose ``1 - density`` is below 1 in float64, where
  ``round(density * n)`` (this module's count before December 2026) kept none of a small tensor: a Circle
  host's 4 output biases at density 0.1, ReLU's single output bias at any density up to 0.5.
- **Scores are ranked by their absolute value**, as edge-popup's ``clamped_scores = scores.abs()``; the
  straight-through gradient reaches ``|S|`` and then ``S`` through the absolute value (times ``sign(S)``).
- **Score initialisation.** Weight scores: ``kaiming_uniform_(a=sqrt(5))``, as both codes, i.e.
  ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``. Bias scores: Plant 'n' Seek's ``SupermaskLinear`` initialises them
  to **zero**, where ``|S|`` has zero (sub)gradient, so its bias scores never move and its bias masks are
  whatever ``sort`` makes of all-equal scores: the bias part of its edge-popup does nothing. The paper says it
  extends the scores to biases, so here the bias scores are drawn from the same ``U(-1/sqrt(fan_in),
  1/sqrt(fan_in))`` as the layer's weight scores, and they train. Drawn in float64 from a
  ``torch.Generator`` seeded with ``seed``, layer by layer (weights, then biases), then cast to the
  weight's dtype and device: the same seed gives the same scores on any device.
- **One kept fraction in every layer**, as both codes (and the bias fraction equals the weight fraction,
  as Plant 'n' Seek's ``GetSubnetBias`` is given the layer's one ``sparsity``). This cannot express the
  planted ticket's uneven layer densities (Circle's ticket planted in a depth-5, width-100 host keeps from
  0.04% of a middle layer's weights to 20% of the output layer's: :meth:`Masks.layer_sparsity` of
  :func:`lth_sparse.planting.plant`'s masks), so edge-popup at the planted ticket's overall density cannot
  select it: it keeps too few weights where the ticket is dense and too many where it is sparse.
- **No softmax on the outputs.** Plant 'n' Seek's ``PlantedTickets`` ends in ``nn.Softmax()``: for Circle
  followed by ``CrossEntropyLoss`` (a second softmax), and for the regression tasks under ``MSELoss``,
  which squashes the outputs onto the simplex (for ReLU's single output, the constant 1): that alone
  explains its edge-popup "not able to find any good subnetwork for the regression tasks" (Sec. 3.2). Here
  the model's outputs are used as they are: cross-entropy on logits for classes, MSE for floating targets
  (:func:`lth_sparse.train.train`'s defaults), or the caller's ``loss_fn``.
- **Optimisation** (Appendix B.1, "the parameters suggested in the original code"): SGD over the scores
  only, momentum 0.9, weight decay 5e-4 (on the scores), a cosine learning-rate schedule, 10 epochs; the
  learning rate 0.1 and batch size 32 are Plant 'n' Seek's ``ticket_main.py`` defaults. The cosine schedule
  is :func:`~lth_sparse.train.train`'s, stepped per iteration over the whole run (the reference steps
  ``CosineAnnealingLR(T_max=epochs)`` once per epoch: the same curve in steps).
- **Annealed edge-popup** (Sec. 3.2, Appendix B.1): epoch ``i = 1..E`` trains at density ``rho^(i/E)``, set
  at the start of the epoch as the reference's ``--anneal`` does, so that the last epoch trains, and ends,
  at the target density ``rho`` (:func:`annealed_densities`).
- **The weights are the model's.** The reference re-initialises each ``SupermaskLinear`` (kaiming normal)
  and then overwrites it with the planted host; here the model's weights are used as they are. The model's
  parameters are read and never written (no gradient reaches them either); its buffers (BatchNorm's
  running statistics) are updated by the training forward passes, as in edge-popup, whose
  ``NonAffineBatchNorm`` keeps running statistics.

The result is the weights' :class:`~lth_sparse.masks.Masks` (by weight name, ``"0.weight"``, ...), the
biases' masks in a separate dict (by bias name, ``"0.bias"``: ``Masks`` holds weight masks only) and the
per-epoch history; :func:`strong_ticket` builds the network they select.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call

from lth_sparse.data import Dataset
from lth_sparse.masks import Masks, unwrap_model
from lth_sparse.nn import MaskedMixin, masked
from lth_sparse.nn.modules import MASKED_TYPES
from lth_sparse.ops import prune_lowest, prune_lowest_rows
from lth_sparse.prune._checks import check_count, check_density
from lth_sparse.prune.multishot import density_schedule
from lth_sparse.train import TrainConfig, iterations_per_epoch, make_optimizer, train, train_stacked
from lth_sparse.train.stacked import StackedOptimizer, check_members, member_inputs, stacked_linear

__all__ = [
    "EDGE_POPUP_BATCH_SIZE",
    "EDGE_POPUP_LR",
    "EDGE_POPUP_MOMENTUM",
    "EDGE_POPUP_WEIGHT_DECAY",
    "EdgePopupMember",
    "EdgePopupNetwork",
    "EdgePopupResult",
    "StackedEdgePopup",
    "annealed_densities",
    "edge_popup",
    "edge_popup_together",
    "kept_count",
    "straight_through_topk",
    "strong_ticket",
    "topk_mask",
]

#: Plant 'n' Seek's ``ticket_main.py`` defaults (Appendix B.1: "the parameters suggested in the original code").
EDGE_POPUP_LR = 0.1
EDGE_POPUP_MOMENTUM = 0.9
EDGE_POPUP_WEIGHT_DECAY = 5e-4
EDGE_POPUP_BATCH_SIZE = 32

LossFn = Callable[[Tensor, Tensor], Tensor]


_DENSITY = "the fraction of each layer's weights kept"  # what edge-popup's density is, for its errors


def kept_count(density: float, n: int) -> int:
    """How many of a layer's ``n`` entries edge-popup keeps at ``density``: ``n - int((1 - density) * n)``, as
    edge-popup's ``GetSubnet`` (``allenai/hidden-networks``) prunes ``int((1 - k) * n)`` of them."""
    return n - int((1 - check_density(density, _DENSITY)) * n)


def topk_mask(scores: Tensor, kept: int) -> Tensor:
    """A bool mask of ``scores``' shape, True on its ``kept`` largest entries.

    Selected by :func:`lth_sparse.ops.prune_lowest` (the ``numel - kept`` lowest are pruned): among equal
    scores the one at the lower flat index is pruned first, so the result is deterministic.
    Raises ValueError unless ``0 <= kept <= scores.numel()``.
    """
    n = scores.numel()
    if isinstance(kept, bool) or not isinstance(kept, numbers.Integral) or not 0 <= kept <= n:
        raise ValueError(f"kept must be an integer in [0, {n}] (the entries of scores), got {kept!r}")
    if kept == n:
        return torch.ones_like(scores, dtype=torch.bool)
    return prune_lowest([scores.detach()], None, n - int(kept))[0]


class _StraightThroughTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, kept: int) -> Tensor:
        return topk_mask(scores, kept).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def straight_through_topk(scores: Tensor, kept: int) -> Tensor:
    """:func:`topk_mask` as 0/1 values of ``scores``' dtype, whose gradient is passed straight through.

    Forward: 1 on the ``kept`` largest entries of ``scores``, 0 elsewhere (ties as :func:`topk_mask`).
    Backward: the incoming gradient unchanged (edge-popup's ``GetSubnet``), so that a pruned entry whose
    score should rise receives the gradient that would "pop it up".
    """
    return _StraightThroughTopK.apply(scores, kept)


def annealed_densities(density: float, epochs: int) -> list[float]:
    """The density of each epoch ``i = 1..epochs`` of annealed edge-popup: ``density ** (i / epochs)``
    (Appendix B.1), the last exactly ``density``."""
    return density_schedule(density, epochs)


def _scored_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers edge-popup scores, by module name: masked layers and plain ``nn.Linear`` / ``nn.Conv2d``
    (exactly those types, the ones :func:`lth_sparse.nn.masked` converts)."""
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, MaskedMixin) or type(module) in MASKED_TYPES
    }
    if not layers:
        raise ValueError("the model has no nn.Linear or nn.Conv2d layer, masked or plain, for edge-popup to score")
    for name, module in layers.items():
        if hasattr(module, "weight_orig"):
            raise ValueError(
                f"layer {name!r} is pruned with torch.nn.utils.prune: convert the model with "
                "lth_sparse.nn.masked(model) first"
            )
        if isinstance(module, MaskedMixin) and not bool(module.mask.all()):
            raise ValueError(
                f"layer {name!r} is already pruned ({module.sparsity:.4f} of its weights): edge-popup "
                "searches a dense network; give it the unpruned model"
            )
    return layers


def _param_name(module_name: str, param: str) -> str:
    return f"{module_name}.{param}" if module_name else param


class _LayerScores(nn.Module):
    """The scores of one layer: ``weight`` (its weight's shape) and ``bias`` (its bias's, or None)."""

    def __init__(self, layer: nn.Module, generator: torch.Generator) -> None:
        super().__init__()
        weight = layer.weight
        draw = torch.empty(weight.shape, dtype=torch.float64)
        nn.init.kaiming_uniform_(draw, a=math.sqrt(5), generator=generator)
        self.weight = nn.Parameter(draw.to(dtype=weight.dtype, device=weight.device))
        self.bias = None
        if layer.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(draw)
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0  # kaiming_uniform_(a=sqrt(5))'s bound
            draw = torch.empty(layer.bias.shape, dtype=torch.float64).uniform_(-bound, bound, generator=generator)
            self.bias = nn.Parameter(draw.to(dtype=layer.bias.dtype, device=layer.bias.device))


class EdgePopupNetwork(nn.Module):
    """``model`` computing with its weights and biases times the straight-through top-k of their scores.

    ``model`` is held, not copied: its parameters are passed detached to :func:`torch.func.functional_call`,
    so they are never written and receive no gradient; the only trainable parameters are :attr:`scores`
    (one :class:`_LayerScores` per scored layer, ``scores[i]`` for the layer :attr:`layer_names` ``[i]``).
    ``density`` (settable between steps) is the fraction kept in every layer, for its weights and, apart,
    for its biases. See the module docstring for the readings of edge-popup.
    """

    def __init__(self, model: nn.Module, density: float, *, seed: int = 0) -> None:
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.model = unwrap_model(model)
        self.density = check_density(density, _DENSITY)
        layers = _scored_layers(self.model)
        self.layer_names: list[str] = list(layers)
        generator = torch.Generator().manual_seed(int(seed))
        self.scores = nn.ModuleList(_LayerScores(layer, generator) for layer in layers.values())

    def _kept(self, scores: Tensor) -> int:
        return kept_count(self.density, scores.numel())

    def forward(self, x: Tensor) -> Tensor:
        tensors = {name: p.detach() for name, p in self.model.named_parameters()}
        for name, scores in zip(self.layer_names, self.scores):
            weight = _param_name(name, "weight")
            tensors[weight] = tensors[weight] * straight_through_topk(scores.weight.abs(), self._kept(scores.weight))
            if scores.bias is not None:
                bias = _param_name(name, "bias")
                tensors[bias] = tensors[bias] * straight_through_topk(scores.bias.abs(), self._kept(scores.bias))
        return functional_call(self.model, tensors, (x,))

    @torch.no_grad()
    def masks(self) -> tuple[Masks, dict[str, Tensor]]:
        """The masks selected at the current :attr:`density`: the weights' ``Masks`` (by weight name) and the
        biases' bool masks by bias name (layers without a bias have none)."""
        weights, biases = {}, {}
        for name, scores in zip(self.layer_names, self.scores):
            weights[_param_name(name, "weight")] = topk_mask(scores.weight.abs(), self._kept(scores.weight))
            if scores.bias is not None:
                biases[_param_name(name, "bias")] = topk_mask(scores.bias.abs(), self._kept(scores.bias))
        return Masks(weights), biases


def _score_config(epochs: int, lr: float, momentum: float, weight_decay: float, batch_size: int) -> TrainConfig:
    """The training of the scores: SGD with momentum and weight decay, a cosine schedule (module docstring)."""
    return TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        optimizer="sgd",
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule="cosine",
    )


def _epoch_record(result, epoch: int, density: float) -> dict:
    """An epoch's record of the history: the training loop's last record, the epoch, its density, the test
    figures."""
    return {
        **result.history[-1],
        "epoch": epoch,
        "density": density,
        "test_loss": result.test_loss,
        "test_accuracy": result.test_accuracy,
    }


class EdgePopupResult(NamedTuple):
    """What :func:`edge_popup` returns (unpacks as ``masks, bias_masks, history``)."""

    masks: Masks  # the weights' masks, by weight name ("0.weight"), at the target density
    bias_masks: dict[str, Tensor]  # the biases' bool masks, by bias name ("0.bias")
    history: list[dict]  # per epoch: epoch, density, iteration, lr, train/val/test loss and accuracy


def edge_popup(
    model: nn.Module,
    data: Dataset,
    density: float,
    *,
    epochs: int = 10,
    lr: float = EDGE_POPUP_LR,
    momentum: float = EDGE_POPUP_MOMENTUM,
    weight_decay: float = EDGE_POPUP_WEIGHT_DECAY,
    batch_size: int = EDGE_POPUP_BATCH_SIZE,
    annealed: bool = False,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    progress: bool | None = False,
) -> EdgePopupResult:
    """Edge-popup on ``model`` with ``data``: the strong ticket keeping ``density`` of every layer's weights
    and of its biases (see the module docstring for every reading of the papers).

    model: any module whose ``nn.Linear`` / ``nn.Conv2d`` layers (plain or masked, unpruned) are to be scored;
    it may be wrapped (DDP, ``torch.compile``): names are the bare model's. Its parameters are never
    changed; its mode is restored. data: a :class:`~lth_sparse.data.Dataset` on the model's device
    (integer classes, or floating targets for a regression). ``epochs`` of SGD on the scores alone
    (``lr``, ``momentum``, ``weight_decay``, ``batch_size``, cosine schedule) through
    :func:`lth_sparse.train.train`; ``seed`` draws the scores and orders the data. ``annealed``: epoch
    ``i`` trains at ``density ** (i / epochs)`` (:func:`annealed_densities`). ``loss_fn(output, target)``:
    the batch's mean loss (default: cross-entropy on the outputs as logits, MSE for floating targets; never a
    softmax on the outputs). ``progress``: the training loop's progress bar (``None``: when on a terminal).

    Returns :class:`EdgePopupResult` ``(masks, bias_masks, history)``: the masks the trained scores select at
    ``density`` (:func:`kept_count`: ``n - int((1 - density) * n)`` kept in each layer's ``n`` weights, and in
    its biases); ``history``
    one record per epoch: ``epoch`` (1-based), ``density`` (that epoch's), and the training loop's record
    at its end (``iteration``, ``lr``, ``train_loss``, ``val_loss``, ``val_accuracy``) with ``test_loss``
    and ``test_accuracy`` (accuracies ``None`` for a regression), all measured at that epoch's density.
    :func:`strong_ticket` builds the selected network.

    Raises:
        ValueError: ``density`` outside (0, 1], ``epochs`` not an integer >= 1, a model without a layer to
            score or with a layer already pruned; the training loop's errors for bad ``lr``/``batch_size``.
    """
    density = check_density(density, _DENSITY)
    epochs = check_count("epochs", epochs)
    cfg = _score_config(epochs, lr, momentum, weight_decay, batch_size)
    inner = unwrap_model(model)
    was_training = inner.training
    network = EdgePopupNetwork(inner, density, seed=seed)
    optimizer = make_optimizer(network.scores, cfg)
    per_epoch = iterations_per_epoch(len(data.train), cfg.batch_size)
    densities = annealed_densities(density, epochs) if annealed else [density] * epochs
    history: list[dict] = []
    try:
        # One call of train() per epoch, so that each epoch's density is set before its first step and its
        # validation is at that density; the data order, the schedule and the optimizer's momentum run on
        # across the calls exactly as in one call (they depend on the iteration and the epoch alone).
        for epoch, epoch_density in enumerate(densities, start=1):
            network.density = epoch_density
            result = train(
                network,
                data,
                cfg,
                seed=seed,
                start_iteration=(epoch - 1) * per_epoch,
                end_iteration=epoch * per_epoch,
                optimizer=optimizer,
                loss_fn=loss_fn,
                progress=progress,
                desc=f"edge-popup {epoch}/{epochs}",
            )
            history.append(_epoch_record(result, epoch, epoch_density))
        network.density = density
        masks, bias_masks = network.masks()
    finally:
        inner.train(was_training)
    return EdgePopupResult(masks, bias_masks, history)


class _StackedStraightThroughTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, pruned: list[int]) -> Tensor:
        return prune_lowest_rows(scores.detach(), pruned).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class _StackedScoredLinear(nn.Module):
    """The scored ``Linear`` layers of K edge-popup networks side by side: frozen ``weight`` ``(K, out, in)`` and
    ``bias`` ``(K, out)`` (buffers), trainable ``scores`` and ``bias_scores`` of their shapes; member ``k``
    computes with ``weight[k] * topk(|scores[k]|)`` and ``bias[k] * topk(|bias_scores[k]|)``, keeping
    ``kept_count(densities[k], n)`` of each (:meth:`set_densities`), as its :class:`EdgePopupNetwork` does (ties
    alike: the selection is :func:`~lth_sparse.ops.prune_lowest_rows`, row by row
    :func:`~lth_sparse.ops.prune_lowest`)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, scores: Tensor, bias_scores: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.scores = nn.Parameter(scores)
        self.bias_scores = nn.Parameter(bias_scores) if bias_scores is not None else None
        self._pruned: dict[str, list[int]] = {}  # per score tensor, each member's count of pruned entries

    def set_densities(self, densities: Sequence[float]) -> None:
        """Each member's density (its kept fraction of the weights and, apart, of the biases) from here on."""
        for name, scores in (("scores", self.scores), ("bias_scores", self.bias_scores)):
            if scores is not None:
                n = scores[0].numel()
                self._pruned[name] = [n - kept_count(d, n) for d in densities]

    def _masked(self, values: Tensor, name: str) -> Tensor:
        scores = getattr(self, name)
        return values * _StackedStraightThroughTopK.apply(scores.abs(), self._pruned[name])

    def forward(self, input: Tensor) -> Tensor:
        members, _, in_features = self.weight.shape
        weight = self._masked(self.weight, "scores")
        bias = self._masked(self.bias, "bias_scores") if self.bias is not None else None
        return stacked_linear(member_inputs(input, members, in_features), weight, bias)


class StackedEdgePopup:
    """K :class:`EdgePopupNetwork` of one architecture (the members: their own hosts, scores, densities) as one
    stacked network whose trainable parameters are the members' scores: the ``network`` that
    :func:`~lth_sparse.train.train_stacked` takes (``module``, ``kept``, ``parameters()``, ``write_back()``).

    The hosts must be made of ``nn.Linear`` layers and modules without parameters or buffers (ReLU, Flatten...),
    as the planting benchmark's MLPs are: a convolution or a BatchNorm is a ValueError (train those networks one
    by one with :func:`edge_popup`). :meth:`set_densities` reads every member's current ``density``.
    """

    def __init__(self, networks: Sequence[EdgePopupNetwork]) -> None:
        self.networks = list(networks)
        self.members = len(self.networks)
        first = self.networks[0]
        self.module = copy.deepcopy(first.model)
        self._layers: list[tuple[_StackedScoredLinear, list[_LayerScores]]] = []
        scored = {name: index for index, name in enumerate(first.layer_names)}
        if "" in scored:
            raise ValueError("stacked edge-popup needs a model with layers, got a bare Linear")
        peers_of = [dict(net.model.named_modules()) for net in self.networks]
        for name, module in list(self.module.named_modules()):
            if name in scored:
                if not isinstance(module, nn.Linear):
                    raise ValueError(
                        f"stacked edge-popup stacks Linear layers; {name!r} is a {type(module).__name__}: run "
                        "edge_popup on each network"
                    )
                index = scored[name]
                peers = [peers[name] for peers in peers_of]
                scores = [net.scores[index] for net in self.networks]
                with torch.no_grad():
                    layer = _StackedScoredLinear(
                        torch.stack([p.weight.detach() for p in peers]),
                        torch.stack([p.bias.detach() for p in peers]) if module.bias is not None else None,
                        torch.stack([s.weight.detach() for s in scores]),
                        torch.stack([s.bias.detach() for s in scores]) if module.bias is not None else None,
                    )
                self.module.set_submodule(name, layer)
                self._layers.append((layer, scores))
            elif not any(name.startswith(f"{s}.") for s in scored) and (
                list(module.parameters(recurse=False)) or list(module.buffers(recurse=False))
            ):
                raise ValueError(
                    f"stacked edge-popup stacks Linear layers and modules without parameters or buffers; {name!r} "
                    f"is a {type(module).__name__} with some: run edge_popup on each network"
                )
        self.kept: list = []  # no weight of the stack is pruned: the selection is in the forward pass
        self.set_densities()
        self.module.train()

    def set_densities(self) -> None:
        """Take up every member's current ``density`` (set between epochs by annealed edge-popup)."""
        densities = [net.density for net in self.networks]
        for layer, _ in self._layers:
            layer.set_densities(densities)

    def parameters(self) -> list[nn.Parameter]:
        return [p for layer, _ in self._layers for p in (layer.scores, layer.bias_scores) if p is not None]

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the stacked scores into every member's :attr:`EdgePopupNetwork.scores`."""
        for layer, scores in self._layers:
            for k, member in enumerate(scores):
                member.weight.copy_(layer.scores[k])
                if member.bias is not None:
                    member.bias.copy_(layer.bias_scores[k])


@dataclass(frozen=True)
class EdgePopupMember:
    """One edge-popup search of :func:`edge_popup_together`: :func:`edge_popup`'s model, data, density, seed and
    ``annealed``."""

    model: nn.Module
    data: Dataset
    density: float
    seed: int = 0
    annealed: bool = False


def edge_popup_together(
    members: Sequence[EdgePopupMember],
    *,
    epochs: int = 10,
    lr: float = EDGE_POPUP_LR,
    momentum: float = EDGE_POPUP_MOMENTUM,
    weight_decay: float = EDGE_POPUP_WEIGHT_DECAY,
    batch_size: int = EDGE_POPUP_BATCH_SIZE,
    loss_fn: LossFn | None = None,
    progress: bool | None = False,
) -> list[EdgePopupResult]:
    """:func:`edge_popup` of each member, in lockstep: the scores of all members trained together as one stack
    (:func:`~lth_sparse.train.train_stacked` with a :class:`StackedEdgePopup`), each member at its own density
    (annealed or not), with its own seed (scores and data order), host and data (of one shape and size). Returns
    each member's :class:`EdgePopupResult`, equal to its :func:`edge_popup`'s where the stacked kernels sum as
    the single ones do (bit for bit for MLP hosts on the CPU: tests/prune/test_edge_popup_together.py).

    The hosts must be of one architecture made of ``nn.Linear`` layers and modules without parameters (else a
    ValueError: run :func:`edge_popup` on each); the shared options are :func:`edge_popup`'s.
    """
    if not members:
        return []
    epochs = check_count("epochs", epochs)
    cfg = _score_config(epochs, lr, momentum, weight_decay, batch_size)
    inners = [unwrap_model(m.model) for m in members]
    was_training = [inner.training for inner in inners]
    networks = [EdgePopupNetwork(inner, m.density, seed=m.seed) for inner, m in zip(inners, members)]
    cfgs = [cfg] * len(members)
    check_members(networks, [m.data for m in members], cfgs)
    stack = StackedEdgePopup(networks)
    optimizer = StackedOptimizer(stack.parameters(), cfgs, stack.kept)
    per_epoch = iterations_per_epoch(len(members[0].data.train), cfg.batch_size)
    schedules = [annealed_densities(m.density, epochs) if m.annealed else [m.density] * epochs for m in members]
    histories: list[list[dict]] = [[] for _ in members]
    try:
        for epoch in range(1, epochs + 1):
            for network, schedule in zip(networks, schedules):
                network.density = schedule[epoch - 1]
            stack.set_densities()
            results = train_stacked(
                networks,
                [m.data for m in members],
                cfgs,
                seeds=[m.seed for m in members],
                start_iteration=(epoch - 1) * per_epoch,
                end_iteration=epoch * per_epoch,
                loss_fn=loss_fn,
                progress=progress,
                desc=f"edge-popup {epoch}/{epochs}, {len(members)} stacked",
                network=stack,
                optimizer=optimizer,
            )
            for history, result, schedule in zip(histories, results, schedules):
                history.append(_epoch_record(result, epoch, schedule[epoch - 1]))
        found = []
        for network, m, history in zip(networks, members, histories):
            network.density = m.density
            masks, bias_masks = network.masks()
            found.append(EdgePopupResult(masks, bias_masks, history))
    finally:
        for inner, mode in zip(inners, was_training):
            inner.train(mode)
    return found


@torch.no_grad()
def strong_ticket(model: nn.Module, masks: Masks, bias_masks: dict[str, Tensor] | None = None) -> nn.Module:
    """The network edge-popup selected: a copy of ``model`` with masked layers (:func:`lth_sparse.nn.masked`)
    holding ``masks``, and every bias entry that ``bias_masks`` prunes set to zero. ``model`` is not changed.

    A pruned bias is zero, not masked: training the ticket further would move it again (``Masks`` and the
    masked layers hold weight masks only). Raises KeyError for a bias name that is no parameter of the
    model, ValueError for a bias mask of the wrong shape, and ``Masks.apply_to``'s errors.
    """
    ticket = masked(copy.deepcopy(unwrap_model(model)))
    masks.apply_to(ticket)
    params = dict(ticket.named_parameters())
    for name, mask in (bias_masks or {}).items():
        if name not in params:
            raise KeyError(f"bias mask {name!r} names no parameter of the model")
        if mask.shape != params[name].shape:
            raise ValueError(
                f"bias mask {name!r} has shape {tuple(mask.shape)}, the bias has {tuple(params[name].shape)}"
            )
        params[name].masked_fill_(~mask.to(device=params[name].device, dtype=torch.bool), 0)
    return ticket
