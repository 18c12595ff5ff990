"""One run on several processes with ``torchrun``: who writes, what is shared, how the model is wrapped.

``torchrun --nproc-per-node N -m lth_sparse imp ...`` starts N copies of the command
(ranks), each with ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous address in
its environment. :func:`launched` opens the process group for the length of a run (gloo
for ``--device cpu``, nccl for ``--device cuda``, each rank on ``cuda:LOCAL_RANK``) unless
the caller opened one already, and closes what it opened.

The rules every rank follows (:class:`World` holds the rank and the helpers):

- every rank runs the same plan, the same units and the same rounds, in the same order;
- rank 0 alone reads and writes the run directory; a decision taken from its files (is
  this unit, this round done? what did it record?) is taken on rank 0 and shared
  (:meth:`World.on_writer`), so the ranks never disagree on which collective comes next,
  and the other ranks need no file system shared with rank 0;
- the weights a training starts from are rank 0's: the DistributedDataParallel wrapper
  (:meth:`World.data_parallel`) copies rank 0's parameters and buffers to every rank
  when it is built, once per training;
- masks are pruned on rank 0 and broadcast once per round (:meth:`World.broadcast_masks`);
  DDP is told to leave the mask buffers alone, so they are never sent per step;
- the other buffers (BatchNorm's running statistics) are rank 0's at each forward pass,
  DDP's default; each rank normalises by the statistics of its own shard, as plain DDP
  does (no SyncBatchNorm).

Without torchrun (``WORLD_SIZE`` unset or 1) the world is one process and every helper
returns at once: nothing is sent, nothing changes.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from lth_sparse.masks import Masks, masked_weights

__all__ = ["World", "device_for_rank", "launched", "launched_world_size"]

T = TypeVar("T")


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"the environment variable {name} must be an integer (as torchrun sets it), got {value!r}"
        ) from None


def launched_world_size() -> int:
    """The number of ranks of this run: the process group's when one is open, else ``WORLD_SIZE``
    (torchrun's), else 1."""
    if _initialized():
        return dist.get_world_size()
    return max(1, _env_int("WORLD_SIZE", 1))


def device_for_rank(device: str, local_rank: int, world_size: int) -> str:
    """The device a rank trains on: ``cuda`` is ``cuda:LOCAL_RANK`` (one GPU per process); anything is
    itself in a world of one. With several ranks only ``cpu`` and ``cuda`` are accepted: an indexed
    ``cuda:K`` would put every rank on one GPU, which nccl refuses."""
    if world_size == 1:
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from error
    if dev.type == "cpu":
        return "cpu"
    if dev.type == "cuda":
        if dev.index is not None:
            raise ValueError(
                f"--device {device}: under torchrun give --device cuda; each rank takes "
                f"cuda:LOCAL_RANK (choose the GPUs with CUDA_VISIBLE_DEVICES)"
            )
        return f"cuda:{local_rank}"
    raise ValueError(f"--device {device}: a run on several ranks trains on cpu (gloo) or cuda (nccl)")


@dataclass(frozen=True)
class World:
    """The ranks of one run and this process's place among them (a world of one: ``World()``)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> World:
        """The world of the open process group, or a world of one.

        Raises RuntimeError where torchrun started several ranks (``WORLD_SIZE`` > 1) and no
        process group is open: each rank would then run the whole job alone and they would
        all write the same files. :func:`launched` (which ``run_pipeline`` calls) opens it.
        """
        if _initialized():
            return cls(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
        size = _env_int("WORLD_SIZE", 1)
        if size > 1:
            raise RuntimeError(
                f"WORLD_SIZE={size} (torchrun) but no process group is open: every rank would run "
                "the whole job and write the same files; only a pipeline command (lth-sparse imp) "
                "runs under torchrun"
            )
        return cls()

    @property
    def writer(self) -> bool:
        """Whether this rank writes: rank 0 alone reads and writes the run directory and logs."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """``device`` as this rank uses it (see :func:`device_for_rank`)."""
        return device_for_rank(device, self.local_rank, self.size)

    def share(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (pickled; keep it small). Every rank must call it."""
        if self.size == 1:
            return value
        box = [value if self.writer else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_writer(self, compute: Callable[[], T], *, share: bool = True) -> T | None:
        """``compute()`` on rank 0 alone; what it raises is raised on every rank (so none of them waits
        for a collective that will not come). Returns its value on every rank with ``share`` (pickled),
        on rank 0 alone without (``None`` elsewhere). Every rank must call it."""
        if self.size == 1:
            return compute()
        outcome: tuple[str, Any] = ("ok", None)
        value = None
        if self.writer:
            try:
                value = compute()
                outcome = ("ok", value if share else None)
            except BaseException as error:  # noqa: BLE001 - re-raised here after the others have it
                outcome = ("error", _picklable(error))
                self.share(outcome)
                raise
        status, payload = self.share(outcome)
        if status == "error":
            raise payload
        return value if self.writer else payload

    def broadcast_masks(self, masks: Masks | None, model: nn.Module) -> Masks:
        """Rank 0's ``masks`` (one for every masked layer of ``model``) on every rank, on the device of
        ``model``'s masks; the others pass ``None``. One broadcast of all the masks as bytes (gloo and
        nccl both move uint8), once per round."""
        if self.size == 1:
            return masks
        layers = masked_weights(model)
        device = next(iter(layers.values())).mask.device
        shapes = {name: module.mask.shape for name, module in layers.items()}
        if self.writer:
            if list(masks) != list(shapes):
                raise KeyError(
                    f"the masks to broadcast cover {list(masks)}, the model's masked weights are {list(shapes)}"
                )
            flat = torch.cat([masks[name].reshape(-1).to(device=device, dtype=torch.uint8) for name in shapes])
        else:
            flat = torch.empty(sum(s.numel() for s in shapes.values()), dtype=torch.uint8, device=device)
        dist.broadcast(flat, src=0)
        parts = flat.split([s.numel() for s in shapes.values()])
        return Masks({name: part.view(shape).bool() for (name, shape), part in zip(shapes.items(), parts)})

    def data_parallel(self, model: nn.Module) -> nn.Module:
        """``model`` wrapped in DistributedDataParallel (itself in a world of one).

        Building the wrapper copies rank 0's parameters and buffers to every rank, so a
        training starts from rank 0's weights whatever the others held. The masks are left
        out of DDP's copies (at construction and at every forward pass): they are bool
        buffers that :meth:`broadcast_masks` has already made equal. On CUDA the wrapper
        uses this rank's GPU.
        """
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        mask_buffers = [name[: -len("weight")] + "mask" for name in masked_weights(model)]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, mask_buffers)
        param = next(model.parameters())
        device_ids = [param.device.index] if param.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)


def _picklable(error: BaseException) -> BaseException:
    """``error`` itself where it survives pickling (to reach the other ranks), else a RuntimeError saying it."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any failure to pickle means: send its text instead
        return RuntimeError(f"rank 0 failed: {type(error).__name__}: {error}")


@contextlib.contextmanager
def launched(device: str = "cpu") -> Iterator[World]:
    """The world of this run, with its process group open for the length of the block.

    Under torchrun (``WORLD_SIZE`` > 1) with no group open yet, opens one from torchrun's
    environment (``env://``): gloo for a CPU ``device``, nccl for ``cuda`` (each rank on
    ``cuda:LOCAL_RANK``, set as its current device); it is destroyed when the block ends.
    A group the caller opened is used as it is and left open. Without torchrun: a world
    of one, nothing opened.
    """
    if _initialized():
        yield World.current()
        return
    size = _env_int("WORLD_SIZE", 1)
    if size == 1:
        yield World()
        return
    local_rank = _env_int("LOCAL_RANK", 0)
    rank_device = torch.device(device_for_rank(device, local_rank, size))
    if rank_device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: torch sees no CUDA device here; use --device cpu (gloo)")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) here: "
                "start at most that many processes per node"
            )
        torch.cuda.set_device(rank_device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    try:
        yield World.current()
    finally:
        # The DistributedDataParallel wrappers of finished trainings sit in reference cycles that hold the
        # group; left to the interpreter's exit, their gloo threads were destroyed unjoined and rank 0
        # aborted ("terminate called without an active exception") in 5 of 10 two-rank runs on a loaded
        # machine (0 of 10 with this collection). Free them while the group is still whole.
        gc.collect()
        dist.destroy_process_group()
