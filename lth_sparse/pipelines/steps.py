"""The blocks pipelines build their units from: a resumable step, a masked training, a pruning.

Every pipeline of lth_sparse trains masked networks and prunes them; these are the
public pieces IMP's units are made of, for the other pipelines to reuse:

- :func:`run_step`: one resumable step inside a unit (a sub-folder finished by its
  ``done.json``: a done step is read back, never run again), torchrun-aware;
- :func:`train_masked`: train a model from a state under masks, for a range of
  iterations with given seeds, and write the masks, the final weights and the
  metrics into a step's folder;
- :class:`MaskedTraining`: one such training's arguments, run alone or, by
  :func:`train_masked_together`, in lockstep with others (stacked training);
- :func:`prune_trained`: the masks that pruning a trained state gives;
- :func:`~lth_sparse.experiment.shared_dataset` (re-exported): a data set loaded once per
  process for the units it runs.

A ticket read back from a finished IMP run is :func:`lth_sparse.tickets.load_ticket`.

Under torchrun (see :mod:`lth_sparse.distributed`) every rank calls these with the
same arguments; rank 0 alone reads the ``done.json`` files and writes the folders, and
what it decides is shared with the others.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from lth_sparse.data import Dataset
from lth_sparse.distributed import World
from lth_sparse.experiment import release_shared, shared_dataset  # noqa: F401 - the blocks of a unit
from lth_sparse.masks import Masks
from lth_sparse.prune import prune_magnitude, prune_random, prune_structured
from lth_sparse.runs import Steps, atomic_torch_save
from lth_sparse.train import TrainConfig, train

__all__ = [
    "MaskedTraining",
    "prune_trained",
    "release_shared",
    "run_step",
    "shared_dataset",
    "train_masked",
    "train_masked_grouped",
    "train_masked_together",
]


def run_step(steps: Steps, name: str, compute: Callable[[Path], dict], *, world: World | None = None) -> dict:
    """The result of step ``name`` of ``steps``: its ``done.json`` when it is done, else ``compute(folder)``,
    recorded as its ``done.json`` (written last, atomically) and returned.

    The one place a unit applies the run store's rule to its own steps (as
    :func:`~lth_sparse.units.run_unit` does to units): a killed step has no
    ``done.json`` and runs again from scratch. Under torchrun every rank calls it and runs
    ``compute`` (which must return the same result on every rank, e.g. rank 0's shared);
    rank 0 alone reads and writes the folder.
    """
    world = world or World.current()
    done = world.on_writer(lambda: steps.result(name) if steps.is_done(name) else None)
    if done is not None:
        return done
    folder = steps.step_dir(name) if world.writer else steps / name
    result = compute(folder)
    world.on_writer(lambda: steps.mark_done(name, result), share=False)
    return result


def train_masked(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    masks: Masks,
    state: dict | None = None,
    folder: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    augment_seed: int | None = None,
    start: int = 0,
    end: int | None = None,
    lr_factor: Callable[[int], float] | None = None,
    snapshot_at: Iterable[int] = (),
    on_snapshot=None,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn=None,
    callbacks: Sequence[Callable] = (),
    progress: bool | None = None,
    desc: str = "train",
    save: bool = True,
    world: World | None = None,
) -> dict:
    """Train ``model`` (with masked layers) from ``state`` under ``masks``; returns the training's results.

    ``state`` (a state dict; ``None``: the model's current weights) is loaded, ``masks`` applied
    (the pruned weights become zero and stay zero), and the model trained in place from
    iteration ``start`` to ``end`` (default: the end of ``cfg``'s epochs) on ``data`` with
    :func:`~lth_sparse.train.train`: ``seed`` orders the data (the SGD noise), ``augment_seed``
    draws the augmentation (default: the order's generator); the schedule runs from ``start``
    (a rewound ticket restarts its schedule at the rewind iteration), unless ``lr_factor``
    replaces it. ``snapshot_at``/``on_snapshot``, ``optimizer``, ``loss_fn`` and ``callbacks``
    are :func:`~lth_sparse.train.train`'s.

    With ``folder`` (rank 0 writes it): ``metrics.jsonl`` (every validation record, as they
    come; a killed attempt's records are dropped first), and after training, with ``save``,
    ``masks.safetensors`` and ``final.pt`` (the trained state dict). The result is
    :class:`~lth_sparse.train.TrainResult`'s dict plus ``train_seconds`` and ``sparsity``
    (of ``masks``).

    Under torchrun the model is wrapped in DistributedDataParallel for the training, each rank
    on its shard of every batch; ``masks`` must be the same on every rank (see
    :meth:`~lth_sparse.distributed.World.broadcast_masks`) and ``state`` may be rank 0's alone
    (``None`` elsewhere): the wrapper copies rank 0's weights to the others.
    """
    world = world or World.current()
    metrics_path = _ready(model, state, masks, folder, world.writer)
    started = time.time()
    wrapped = world.data_parallel(model)
    result = train(
        wrapped,
        data,
        cfg,
        seed=seed,
        augment_seed=augment_seed,
        start_iteration=start,
        end_iteration=end,
        snapshot_at=snapshot_at,
        on_snapshot=on_snapshot,
        metrics_path=metrics_path,
        progress=progress,
        desc=desc,
        lr_factor=lr_factor,
        optimizer=optimizer,
        loss_fn=loss_fn,
        callbacks=callbacks,
    )
    del wrapped  # the DDP wrapper (its hooks on the parameters go with it); ``model`` holds the weights
    out = _outcome(result, time.time() - started, masks)
    if folder is not None and save:
        world.on_writer(lambda: _save(model, masks, folder), share=False)
    return out


def _ready(model: nn.Module, state: dict | None, masks: Masks, folder, writer: bool) -> Path | None:
    """``model`` at ``state`` (``None``: as it is) under ``masks``; returns the training's ``metrics.jsonl`` in
    ``folder`` (``None`` without one), which the ``writer`` (rank 0) creates the folder for and empties of a killed
    attempt's records."""
    if state is not None:
        model.load_state_dict(state)
    masks.apply_to(model)
    if folder is None:
        return None
    metrics_path = Path(folder) / "metrics.jsonl"
    if writer:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.unlink(missing_ok=True)  # a killed attempt's records go with it
    return metrics_path


def _save(model: nn.Module, masks: Masks, folder) -> None:
    """A training's ``masks.safetensors`` and ``final.pt`` (the trained state dict) in ``folder``."""
    masks.save(Path(folder) / "masks.safetensors")
    atomic_torch_save(Path(folder) / "final.pt", model.state_dict())


def _outcome(result, seconds: float, masks: Masks) -> dict:
    """A training's result: its :class:`~lth_sparse.train.TrainResult` as a dict, ``train_seconds`` and the
    ``sparsity`` of its masks."""
    return {**result.to_dict(), "train_seconds": seconds, "sparsity": masks.sparsity()}


@dataclass
class MaskedTraining:
    """One :func:`train_masked` call's arguments: run alone (:meth:`run`) or stacked with others of the same
    architecture and schedule (:func:`train_masked_together`), with the same files and result either way."""

    model: nn.Module
    data: Dataset
    cfg: TrainConfig
    masks: Masks
    state: dict | None
    folder: Path | None
    seed: int = 0
    augment_seed: int | None = None
    start: int = 0
    end: int | None = None
    lr_factor: Callable[[int], float] | None = None
    snapshot_at: Iterable[int] = ()
    on_snapshot: Callable | None = None
    callbacks: Sequence[Callable] = ()
    progress: bool | None = None
    desc: str = "train"

    def run(self, world: World | None = None) -> dict:
        """:func:`train_masked` of these arguments."""
        return train_masked(
            self.model,
            self.data,
            self.cfg,
            self.masks,
            self.state,
            self.folder,
            seed=self.seed,
            augment_seed=self.augment_seed,
            start=self.start,
            end=self.end,
            lr_factor=self.lr_factor,
            snapshot_at=self.snapshot_at,
            on_snapshot=self.on_snapshot,
            callbacks=self.callbacks,
            progress=self.progress,
            desc=self.desc,
            world=world,
        )


def train_masked_together(trainings: Sequence[MaskedTraining]) -> list[dict]:
    """Each training's :func:`train_masked` result and files, the trainings trained in lockstep as one stack
    (:func:`~lth_sparse.train.train_stacked`): each member from its own state under its own masks, with its own
    seeds, data, learning rate, momentum and weight decay, into its own folder (``metrics.jsonl``,
    ``masks.safetensors``, ``final.pt``). They share the start, the end, the learning-rate factor and the
    snapshot iterations (the first training's), and what stacking needs (architecture, data shape, schedule: a
    ValueError names what differs). ``train_seconds`` is each member's share of the stack's time."""
    from lth_sparse.train import train_stacked

    first = trainings[0]
    started = time.time()
    metrics_paths = [_ready(t.model, t.state, t.masks, t.folder, True) for t in trainings]
    results = train_stacked(
        [t.model for t in trainings],
        [t.data for t in trainings],
        [t.cfg for t in trainings],
        seeds=[t.seed for t in trainings],
        augment_seeds=[t.augment_seed for t in trainings],
        masks=[t.masks for t in trainings],
        start_iteration=first.start,
        end_iteration=first.end,
        lr_factor=first.lr_factor,
        snapshot_at=first.snapshot_at,
        on_snapshot=[t.on_snapshot for t in trainings],
        callbacks=[t.callbacks for t in trainings],
        metrics_paths=metrics_paths,
        progress=first.progress,
        desc=f"{first.desc} and {len(trainings) - 1} more, stacked",
    )
    seconds = (time.time() - started) / len(trainings)
    for t in trainings:
        if t.folder is not None:
            _save(t.model, t.masks, t.folder)
    return [_outcome(result, seconds, t.masks) for t, result in zip(trainings, results)]


def train_masked_grouped(trainings: Sequence[MaskedTraining]) -> list[dict]:
    """Each training's :func:`train_masked` result, those of one start, end, snapshot iterations and
    learning-rate factor (the same function, or none) trained together (:func:`train_masked_together`; one
    with no other alike, as a stack of one); in the order of ``trainings``."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(trainings):
        groups.setdefault((t.start, t.end, tuple(t.snapshot_at), t.lr_factor), []).append(i)
    results: list[dict | None] = [None] * len(trainings)
    for members in groups.values():  # a group of one too: stacked, a training's numbers do not depend on its group
        for i, result in zip(members, train_masked_together([trainings[i] for i in members])):
            results[i] = result
    return results


def prune_trained(
    model: nn.Module,
    state: dict | None,
    masks: Masks,
    fraction: float,
    *,
    importance: str = "magnitude",
    scope: str = "global",
    structured: str | None = None,
    exclude: Sequence[str] = (),
    generator: torch.Generator | None = None,
) -> Masks:
    """The masks that pruning ``fraction`` of the weights ``masks`` keeps gives, scored on ``state``.

    ``state`` (``None``: the model's current weights) is loaded into ``model`` and ``masks``
    applied; then: with ``structured`` (a norm), whole neurons/channels by that norm; with
    ``importance="random"``, weights drawn by ``generator``; else the ``importance`` score
    (``magnitude``, or a layer-normalised one under ``scope="global"``). ``scope``: compare
    across all layers (``global``) or prune each layer by ``fraction`` (``layer``). The
    weights named in ``exclude`` are never pruned. The new masks are nested in ``masks``.
    """
    if state is not None:
        model.load_state_dict(state)
    masks.apply_to(model)
    if structured is not None:
        return prune_structured(model, fraction, norm=structured, scope=scope, masks=masks, exclude=list(exclude))
    if importance == "random":
        return prune_random(model, fraction, scope=scope, masks=masks, exclude=list(exclude), generator=generator)
    return prune_magnitude(model, fraction, scope=scope, importance=importance, masks=masks, exclude=list(exclude))
