"""Multi-shot pruning (Fischer & Burkholz, 2022, "Plant 'n' Seek", Sec. 3.2 and Appendix B.1), any scoring.

Iterative magnitude pruning's schedule with another pruner in the place of magnitude: for ``rounds`` rounds
``i = 1..R``, the current subnetwork is trained briefly from the initial parameters, then pruned by
``prune_fn`` to the density ``rho^(i/R)`` of all masked weights (:func:`density_schedule`), and reset to its
initial parameters for the next round. After the last round the model holds its initial parameters under
the final masks, ``rho`` exactly: the weak ticket, ready to be trained.

Readings of the paper, and where it left a choice:

- **Density.** The paper's "sparsity" ``rho`` is the fraction of weights kept (biases not counted), called
  ``density`` here, as in :mod:`lth_sparse.planting`; round ``i`` keeps ``rho^(i/R)`` of *all* the masked
  weights (not of those left by the round before), so the schedule is exponential and ends at ``rho``.
- **Order within a round**: "the current subnetwork is first shortly trained, then pruned to the current
  target sparsity, and then reset to initial parameters": train, prune, reset. So round 1 prunes the
  trained dense network, and the last round's pruning is followed by the reset alone (no training of the
  final ticket here: the paper trains the tickets it reports separately, for 10 epochs).
- **What is reset**: every parameter and buffer (weights, biases, BatchNorm statistics) to its value at the
  call, and the optimizer state: each round's training builds a fresh optimizer from ``train_config``.
  Each round orders the data with the same ``seed``, as :mod:`lth_sparse.pipelines.imp` does.
- **Training**: 5 epochs per round with Adam, learning rate 0.001, batch size 32 (Appendix B.1: the settings
  of the weak-ticket pruners and their training), the default :data:`MULTISHOT_TRAIN_CONFIG`; cross-entropy
  for classes, MSE for floating targets (:func:`lth_sparse.train.train`'s defaults) unless ``loss_fn``.
- **Nested masks**: ``prune_fn`` is given the current masks and must only prune further (every pruner of
  :mod:`lth_sparse.prune` ranks the unpruned weights alone); a round whose masks regrow a weight is an error.

Training goes through :func:`lth_sparse.train.train` under the current masks, as
:func:`lth_sparse.pipelines.steps.train_masked` does (the initial state loaded, the masks applied, the masked
layers keeping pruned weights at zero under any optimizer); ``train_masked`` itself lives in the pipelines
layer, above this one, so it is not imported here.

``prune_fn(model, masks, density) -> Masks`` receives the trained model (masks applied), its masks and the
round's target density of all masked weights. Pruners that take a density use it as it is, e.g. the
single-shot saliency pruners (``prune_synflow(m, density=d, masks=masks)``); pruners that take a fraction of
the remaining weights convert it with :func:`fraction_for_density`, as :func:`magnitude_to_density` does for
:func:`~lth_sparse.prune.prune_magnitude`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor

from lth_sparse.data import Dataset
from lth_sparse.masks import Masks, masked_weights, unwrap_model
from lth_sparse.prune._checks import check_count, check_density
from lth_sparse.prune.pruners import prune_magnitude
from lth_sparse.train import TrainConfig, TrainResult, train

__all__ = [
    "MULTISHOT_TRAIN_CONFIG",
    "MultiShotMember",
    "MultiShotRound",
    "PruneFn",
    "density_schedule",
    "fraction_for_density",
    "magnitude_to_density",
    "multi_shot",
    "multi_shot_together",
]

#: Appendix B.1: Adam, learning rate 0.001, batch size 32; 5 epochs of training per round of multi-shot pruning.
MULTISHOT_TRAIN_CONFIG = TrainConfig(epochs=5, batch_size=32, optimizer="adam", lr=1e-3)

#: ``prune_fn(model, masks, density) -> Masks``: ``masks`` pruned further until ``density`` of all remain.
PruneFn = Callable[[nn.Module, Masks, float], Masks]
LossFn = Callable[[Tensor, Tensor], Tensor]


_DENSITY = "the fraction of all weights kept"  # what multi-shot pruning's density is, for its errors


def density_schedule(density: float, steps: int) -> list[float]:
    """``[density ** (i / steps) for i = 1..steps]``: the exponential schedule of multi-shot pruning's rounds
    and of annealed edge-popup's epochs (Sec. 3.2, Appendix B.1), falling from ``density ** (1 / steps)`` to
    ``density`` itself at the last step.

    Raises ValueError for ``density`` outside (0, 1] or ``steps`` not an integer >= 1.
    """
    density = check_density(density, _DENSITY)
    steps = check_count("steps", steps)
    return [density ** (i / steps) for i in range(1, steps + 1)]


def fraction_for_density(masks: Masks, density: float) -> float:
    """The fraction of the weights ``masks`` still keeps to prune so that ``round(density * total)`` of all its
    ``total`` weights remain: what a pruner that removes ``round(fraction * remaining)`` (as
    :func:`~lth_sparse.prune.prune_magnitude` with ``scope="global"``) needs to reach ``density`` exactly.

    Raises ValueError for ``density`` outside (0, 1], or above what ``masks`` keeps (pruning cannot regrow).
    """
    density = check_density(density, _DENSITY)
    total, remaining = masks.num_weights(), masks.num_unpruned()
    kept = round(density * total)
    if kept > remaining:
        raise ValueError(
            f"density={density} keeps {kept} of the {total} weights, but only {remaining} are unpruned "
            f"(density {remaining / max(total, 1):.6g}): pruning cannot regrow weights"
        )
    return 0.0 if remaining == 0 else (remaining - kept) / remaining


def magnitude_to_density(model: nn.Module, masks: Masks, density: float, *, scope: str = "global") -> Masks:
    """:func:`~lth_sparse.prune.prune_magnitude` of ``model`` from ``masks`` down to ``density`` of all weights:
    a :data:`PruneFn` (multi-shot magnitude pruning is iterative magnitude pruning with weights reset to their
    initial values). ``scope="global"`` reaches ``round(density * total)`` exactly; ``"layerwise"`` prunes
    each layer by the same fraction (Appendix B.3's local pruning rate), within a weight per layer."""
    return prune_magnitude(model, fraction_for_density(masks, density), scope=scope, masks=masks)


@dataclass(frozen=True)
class MultiShotRound:
    """What :func:`multi_shot`'s ``on_round`` is given after each round's pruning."""

    round: int  # 1..rounds
    density: float  # the round's target density of all masked weights
    start_state: dict  # a copy of the model's state dict as its training began: the initial state, masked
    train_result: TrainResult  # the round's training
    masks: Masks  # the masks after the round's pruning


def multi_shot(
    model: nn.Module,
    data: Dataset,
    density: float,
    prune_fn: PruneFn,
    *,
    rounds: int = 10,
    epochs_per_round: float | None = None,
    train_config: TrainConfig | None = None,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    progress: bool | None = False,
    on_round: Callable[[MultiShotRound], None] | None = None,
) -> Masks:
    """Multi-shot pruning of ``model`` to ``density`` in ``rounds`` rounds (see the module docstring).

    model: a model with masked layers (:func:`lth_sparse.nn.masked`), none of them pruned yet; it is trained
    in place and ends at its initial parameters (those at the call) under the returned masks. data: a
    :class:`~lth_sparse.data.Dataset` on the model's device. prune_fn: ``prune_fn(model, masks, d) -> Masks``,
    the masks pruned further to density ``d`` of all masked weights (e.g. :func:`magnitude_to_density`).
    Round ``i`` trains from the initial parameters under the current masks with a fresh optimizer
    (``train_config``, default :data:`MULTISHOT_TRAIN_CONFIG`; ``epochs_per_round`` replaces its epochs),
    ``loss_fn`` and the data order of ``seed``, then prunes to ``density ** (i / rounds)``.
    ``on_round(MultiShotRound)``: called after each round's pruning (only then is the start state copied).

    Returns the final masks (``prune_fn``'s of the last round, at ``density``).

    Raises:
        ValueError: ``density`` outside (0, 1], ``rounds`` not an integer >= 1, a model without masked layers
            or with a layer already pruned, ``epochs_per_round`` <= 0, or masks from ``prune_fn`` that regrow
            a weight the round before pruned.
        TypeError / KeyError: ``prune_fn`` returned no masks, or masks of other weights than the model's.
    """
    targets = density_schedule(check_density(density, _DENSITY), check_count("rounds", rounds))
    inner, masks, initial = _dense_start(model)
    cfg = _round_config(train_config, epochs_per_round)

    for index, target in enumerate(targets, start=1):
        inner.load_state_dict(initial)
        masks.apply_to(inner)
        start: list[dict] = []
        result = train(
            model,
            data,
            cfg,
            seed=seed,
            loss_fn=loss_fn,
            progress=progress,
            desc=f"multi-shot round {index}/{len(targets)}",
            snapshot_at=(0,) if on_round is not None else (),
            on_snapshot=lambda _, s, kept=start: kept.append(s),
        )
        masks = _nested(prune_fn(model, masks, target), masks, index)
        if on_round is not None:
            on_round(
                MultiShotRound(round=index, density=target, start_state=start[0], train_result=result, masks=masks)
            )
    inner.load_state_dict(initial)
    masks.apply_to(inner)
    return masks


def _dense_start(model: nn.Module) -> tuple[nn.Module, Masks, dict]:
    """(the model unwrapped, its masks, a copy of its state) at the start of multi-shot pruning, which starts from
    a dense model with masked layers (else a ValueError)."""
    inner = unwrap_model(model)
    if not masked_weights(inner):
        raise ValueError("the model has no masked layers: convert it with lth_sparse.nn.masked(model) first")
    masks = Masks.from_model(inner)
    if masks.num_unpruned() != masks.num_weights():
        raise ValueError(
            f"the model is already pruned (density {masks.density():.6g}): multi-shot pruning starts "
            "from the dense network; give it the unpruned model"
        )
    return inner, masks, copy.deepcopy(inner.state_dict())


def _round_config(train_config: TrainConfig | None, epochs_per_round: float | None) -> TrainConfig:
    cfg = train_config if train_config is not None else MULTISHOT_TRAIN_CONFIG
    return dataclasses.replace(cfg, epochs=epochs_per_round) if epochs_per_round is not None else cfg


def _nested(pruned, masks: Masks, index: int) -> Masks:
    """``prune_fn``'s masks of round ``index``, checked: Masks of the model's weights, nested in ``masks``."""
    if not isinstance(pruned, Mapping):
        raise TypeError(f"prune_fn must return Masks, got {type(pruned).__name__}")
    pruned = pruned if isinstance(pruned, Masks) else Masks(pruned)
    if set(pruned) != set(masks):
        raise KeyError(f"prune_fn returned masks of {sorted(pruned)}, the model's masked weights are {sorted(masks)}")
    pruned = Masks({name: pruned[name] for name in masks})
    if not pruned.is_subset_of(masks):
        raise ValueError(
            f"round {index}: prune_fn regrew weights the round before pruned; its masks must be "
            "nested in the masks it is given"
        )
    return pruned


@dataclass(frozen=True)
class MultiShotMember:
    """One multi-shot pruning of :func:`multi_shot_together`: :func:`multi_shot`'s model, data, density, prune
    function and seed."""

    model: nn.Module
    data: Dataset
    density: float
    prune_fn: PruneFn
    seed: int = 0


def multi_shot_together(
    members: Sequence[MultiShotMember],
    *,
    rounds: int = 10,
    epochs_per_round: float | None = None,
    train_config: TrainConfig | None = None,
    loss_fn: LossFn | None = None,
    progress: bool | None = False,
) -> list[Masks]:
    """:func:`multi_shot` of each member, in lockstep: each round's trainings of all members trained together as
    one stack (:func:`~lth_sparse.train.train_stacked`: models of one architecture, data of one shape and size),
    then each member pruned by its own ``prune_fn`` to its own schedule's density and reset. Each member's model
    ends at its initial parameters under its final masks, which are returned in the members' order. A member's
    masks equal its :func:`multi_shot`'s where the stacked trainings equal the separate ones (bit for bit on the
    dense torch path; to float rounding otherwise: see docs/stacked.md)."""
    from lth_sparse.train import train_stacked

    rounds = check_count("rounds", rounds)
    schedules = [density_schedule(check_density(m.density, _DENSITY), rounds) for m in members]
    starts = [_dense_start(m.model) for m in members]
    cfg = _round_config(train_config, epochs_per_round)
    masks = [found for _, found, _ in starts]
    for index in range(1, rounds + 1):
        for (inner, _, initial), current in zip(starts, masks):
            inner.load_state_dict(initial)
            current.apply_to(inner)
        train_stacked(
            [inner for inner, _, _ in starts],
            [m.data for m in members],
            [cfg] * len(members),
            seeds=[m.seed for m in members],
            masks=masks,
            loss_fn=loss_fn,
            progress=progress,
            desc=f"multi-shot round {index}/{rounds}, {len(members)} stacked",
        )
        masks = [
            _nested(m.prune_fn(inner, current, schedule[index - 1]), current, index)
            for m, (inner, _, _), current, schedule in zip(members, starts, masks, schedules)
        ]
    for (inner, _, initial), current in zip(starts, masks):
        inner.load_state_dict(initial)
        current.apply_to(inner)
    return masks
