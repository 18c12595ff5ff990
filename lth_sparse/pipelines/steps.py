"""The blocks pipelines build their units from: a resumable step, a masked training, a pruning.

Every pipeline of lth_sparse trains masked networks and prunes them; these are the
public pieces IMP's units are made of, for the other pipelines to reuse:

- :func:`run_step`: one resumable step inside a unit (a sub-folder finished by its
  ``done.json``: a done step is read back, never run again), torchrun-aware;
- :func:`train_masked`: train a model from a state under masks, for a range of
  iterations with given seeds, and write the masks, the final weights and the
  metrics into a step's folder;
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

__all__ = ["prune_trained", "release_shared", "run_step", "shared_dataset", "train_masked"]


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
    if state is not None:
        model.load_state_dict(state)
    masks.apply_to(model)
    metrics_path = None
    if folder is not None:
        folder = Path(folder)
        metrics_path = folder / "metrics.jsonl"
        if world.writer:
            folder.mkdir(parents=True, exist_ok=True)
            metrics_path.unlink(missing_ok=True)  # a killed attempt's records go with it
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
    out = result.to_dict()
    out["train_seconds"] = time.time() - started
    out["sparsity"] = masks.sparsity()
    if folder is not None and save:

        def write():
            masks.save(folder / "masks.safetensors")
            atomic_torch_save(folder / "final.pt", model.state_dict())

        world.on_writer(write, share=False)
    return out


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
