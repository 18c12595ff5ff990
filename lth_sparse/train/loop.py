"""Training and evaluation of a (masked) model on a tensor-held :class:`~lth_sparse.data.Dataset`.

One loop for every pipeline: SGD (momentum, weight decay, Nesterov), Adam and
AdamW; constant, step and cosine schedules with linear warm-up, stepped per
iteration; seeded and deterministic on the CPU; validation and test loss and
accuracy; model snapshots at chosen iterations (the rewind points); a tqdm
progress bar that stays quiet when output is not a terminal; metrics appended
to a JSONL file as they come, so a crash loses nothing already measured.

Open to its callers: an optimizer and a loss of their own, callbacks after every
step, checkpoints that a killed run continues from bit for bit, no read-back to
the host in the training step, and DDP (each rank its shard of every batch,
rank 0 alone writing).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lth_sparse.atomic import atomic_torch_save, strict_json_value
from lth_sparse.config import option
from lth_sparse.data import Dataset, Split, batches
from lth_sparse.tracking import record_validation

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
# The autocast dtype of each reduced precision (fp32: no autocast).
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# A loss: (output, target) -> the batch's mean loss, a 0-dim tensor.
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run (the defaults train LeNet-300-100 on Fashion-MNIST well)."""

    epochs: float = option(5, "training epochs (per round)")
    batch_size: int = option(128, "mini-batch size")
    optimizer: str = option("sgd", "optimizer", choices=OPTIMIZERS)
    lr: float = option(0.02, "learning rate (the peak, after warm-up)")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(False, "Nesterov momentum (SGD)")
    weight_decay: float = option(0.0, "weight decay (decoupled for adamw)")
    betas: tuple[float, float] = option((0.9, 0.999), "Adam/AdamW betas", metavar="B")
    schedule: str = option("constant", "learning-rate schedule, stepped per iteration", choices=SCHEDULES)
    milestones: tuple[float, ...] = option(
        (), "epochs where the step schedule multiplies the learning rate by --gamma", metavar="EPOCH"
    )
    gamma: float = option(0.1, "step-schedule decay factor")
    warmup_epochs: float = option(0.0, "linear learning-rate warm-up, in epochs")
    eval_every: int = option(0, "iterations between validation passes (0: once per epoch)")
    precision: str = option(
        "fp32",
        "numeric precision of training and evaluation: fp32, bf16 (autocast) or fp16 (autocast with a GradScaler)",
        choices=PRECISIONS,
    )

    def training_options(self) -> dict:
        """The training hyperparameters of this config by name (the fields of :class:`TrainConfig`, which a
        pipeline's config inherits), e.g. to build a ``TrainConfig`` with some of them changed."""
        return {f.name: getattr(self, f.name) for f in fields(TrainConfig)}

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.momentum < 0:
            raise ValueError("weight_decay and momentum must be >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


def iterations_per_epoch(num_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_examples / batch_size))


def parse_step(step: str | int, iters_per_epoch: int, *, option: str = "the rewind point") -> int:
    """An iteration number from ``init``, ``iter:N`` (N an integer), ``epoch:E`` (E a number of epochs, rounded to
    an iteration) or an int. Anything else is a ValueError naming ``option`` (what the step is, e.g. the flag
    that gave it), the value and the accepted forms."""
    value = None
    if isinstance(step, int) and not isinstance(step, bool):
        value = step
    elif step == "init":
        value = 0
    elif isinstance(step, str) and step.startswith(("iter:", "epoch:")):
        unit, _, number = step.partition(":")
        try:
            value = int(number) if unit == "iter" else round(float(number) * iters_per_epoch)
        except (ValueError, OverflowError):  # not a number, or an infinite number of epochs
            value = None
    if value is None or value < 0:
        raise ValueError(
            f"{option} must be a training step: init, epoch:E (E epochs, a number >= 0) or iter:N (N iterations, an "
            f"integer >= 0), got {step!r}"
        )
    return value


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def training_span(
    cfg: TrainConfig,
    n_train: int,
    start_iteration: int,
    end_iteration: int | None,
    lr_factor: Callable[[int], float] | None,
) -> tuple[int, int, int, Callable[[int], float]]:
    """(iterations per epoch, the iterations of ``cfg.epochs``, the iteration the training ends at, the
    learning-rate factor of each iteration) of a training of ``n_train`` examples from ``start_iteration`` to
    ``end_iteration`` (default: the end of ``cfg.epochs``); ``lr_factor`` replaces ``cfg``'s schedule. A start
    outside [0, end] is a ValueError."""
    per_epoch = iterations_per_epoch(n_train, cfg.batch_size)
    total = round(cfg.epochs * per_epoch)
    end = total if end_iteration is None else end_iteration
    if not 0 <= start_iteration <= end:
        raise ValueError(f"start_iteration must be in [0, {end}], got {start_iteration}")
    return per_epoch, total, end, lr_factor or make_schedule(cfg, per_epoch, total)


def make_schedule(cfg: TrainConfig, iters_per_epoch: int, total_iters: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each iteration (warm-up, then the schedule)."""
    warmup = round(cfg.warmup_epochs * iters_per_epoch)
    milestones = [round(m * iters_per_epoch) for m in cfg.milestones]

    def factor(it: int) -> float:
        scale = min(1.0, (it + 1) / warmup) if warmup else 1.0
        if cfg.schedule == "step":
            scale *= cfg.gamma ** sum(it >= m for m in milestones)
        elif cfg.schedule == "cosine":
            scale *= 0.5 * (1 + math.cos(math.pi * min(it, total_iters) / max(1, total_iters)))
        return scale

    return factor


def _device_type(model: nn.Module) -> str:
    """The device type of the model's parameters (cpu for a model without any)."""
    param = next(model.parameters(), None)
    return "cpu" if param is None else param.device.type


def autocast_context(precision: str, device_type: str):
    """The context of a forward pass at ``precision`` (one of ``PRECISIONS``): ``torch.autocast`` to
    bfloat16 or float16 on ``device_type``, or nothing at all for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=_AUTOCAST_DTYPES[precision])


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, batch_size: int = 1000, precision: str = "fp32", *, loss_fn: LossFn | None = None
) -> tuple[float, float | None]:
    """Mean loss and accuracy of ``model`` on ``split`` (eval mode, restored after), the forward pass
    at ``precision`` (see :func:`autocast_context`; the loss is taken of the float32 output).

    ``loss_fn(output, target)``: the mean loss of a batch (default: cross-entropy; the mean squared error for
    floating targets); the mean over
    ``split`` weights each batch by its size. The accuracy (``output.argmax(1) == target``) is
    returned for integer targets only; for floating targets (a regression) it is ``None``. An empty
    split gives NaN (and ``None`` accuracy for floating targets). The sums stay on the device, read
    back once at the end.
    """
    classification = not split.y.is_floating_point()
    if len(split) == 0:
        return float("nan"), float("nan") if classification else None
    was_training = model.training
    model.eval()
    device = split.y.device
    # float64 sums of the float32 batch losses: the same values as summing them as Python floats
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    device_type = _device_type(model)
    for x, y in batches(split, batch_size, shuffle=False):
        with autocast_context(precision, device_type):
            out = model(x)
        if loss_fn is None and not classification:  # a regression's default: the mean squared error
            loss_sum += F.mse_loss(out.float(), y.reshape(out.shape), reduction="mean").double() * len(y)
        elif loss_fn is None:
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
        else:
            loss_sum += loss_fn(out.float(), y).double() * len(y)
        if classification:
            correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    accuracy = correct.item() / len(split) if classification else None
    return loss_sum.item() / len(split), accuracy


@dataclass
class TrainResult:
    iterations: int
    val_loss: float
    val_accuracy: float | None  # None for a regression (floating targets)
    test_loss: float
    test_accuracy: float | None
    best_val_iteration: int  # the iteration of minimum validation loss (early-stopping point)
    best_val_loss: float
    train_loss: float
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d


def _mse(output: Tensor, target: Tensor) -> Tensor:
    """A regression's default loss: the mean squared error over the batch and the outputs."""
    return F.mse_loss(output, target.reshape(output.shape))


def default_loss(targets: Tensor) -> LossFn:
    """The loss ``train`` uses when given none, for these targets: cross-entropy for class indices, the mean
    squared error for floating targets (a regression)."""
    return _mse if targets.is_floating_point() else F.cross_entropy


@dataclass(frozen=True)
class TrainStep:
    """What each of ``train``'s callbacks is given after every optimizer step.

    The tensors are on the training device and nothing has been read back to the
    host; under DDP they are this rank's shard of the batch.
    """

    iteration: int  # optimizer steps taken so far, this one included: the numbering of snapshots
    epoch: int  # the epoch the batch belongs to
    index: Tensor  # int64 (B,): positions in data.train of the batch's examples
    output: Tensor  # the model's output on the batch, detached: (B, *)
    target: Tensor  # (B, *)
    loss: Tensor  # 0-dim, detached: loss_fn(output, target), the batch mean


CHECKPOINT_FORMAT = 1


def progress_bar(total: int, desc: str, enabled: bool | None):
    """The training's tqdm bar of ``total`` steps; ``enabled=None``: shown where stderr is a terminal."""
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def epoch_generators(
    seed: int, augment_seed: int | None, epoch: int, device: torch.device | str
) -> tuple[torch.Generator, torch.Generator | None]:
    """The generators of epoch ``epoch`` of a training: the data order's (on the CPU, from ``seed``) and, with
    ``augment_seed``, the augmentation's (on the data's ``device``: augmenting reads nothing back to the host;
    ``None``: the augmentation draws from the order's)."""
    order = torch.Generator(device="cpu").manual_seed(seed * 100_003 + epoch)
    augment = None
    if augment_seed is not None:
        augment = torch.Generator(device=device).manual_seed(augment_seed * 100_003 + epoch)
    return order, augment


class ValidationRecords:
    """The validation records of one training as they come: its ``history``, its ``best`` (validation loss,
    iteration; a NaN best is replaced by the next record) and the JSONL file each record is appended to at once
    (strict JSON: NaN as ``null``), flushed, so a crash loses nothing already measured. Each record written to
    the file is also handed to the experiment tracker of the unit that holds the file, where one is open
    (:func:`~lth_sparse.tracking.record_validation`): the same values, nothing measured again."""

    def __init__(self, start_iteration: int, metrics_file=None) -> None:
        self.history: list[dict] = []
        self.best: tuple[float, int] = (float("inf"), start_iteration)
        self.file = metrics_file

    def add(self, it: int, per_epoch: int, train_loss: float, val_loss: float, val_acc, lr: float) -> dict:
        entry = {
            "iteration": it,
            "epoch": it / per_epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": lr,
        }
        if val_loss < self.best[0] or math.isnan(self.best[0]):
            self.best = (val_loss, it)
        self.history.append(entry)
        if self.file is not None:
            self.file.write(json.dumps(strict_json_value(entry), allow_nan=False) + "\n")
            self.file.flush()
            record_validation(self.file.name, entry)
        return entry

    def result(self, iterations: int, test_loss: float, test_accuracy) -> TrainResult:
        """The training's result: its last record's figures, its best and its history, with the test's."""
        last = self.history[-1]
        return TrainResult(
            iterations=iterations,
            val_loss=last["val_loss"],
            val_accuracy=last["val_accuracy"],
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            best_val_iteration=self.best[1],
            best_val_loss=self.best[0],
            train_loss=last["train_loss"],
            history=self.history,
        )


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or DataParallel) wrapper, else ``model``."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rng_state() -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _read_checkpoint(path: str | os.PathLike, identity: dict) -> dict:
    """The training checkpoint at ``path``, checked to be one written by a run of the same ``identity``."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint of format {CHECKPOINT_FORMAT}")
    for key, value in identity.items():
        if checkpoint["identity"][key] != value:
            raise ValueError(
                f"the checkpoint {path} was written with {key}={checkpoint['identity'][key]!r}, "
                f"this call has {key}={value!r}"
            )
    return checkpoint


def train(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    start_iteration: int = 0,
    end_iteration: int | None = None,
    snapshot_at: Iterable[int] = (),
    on_snapshot=None,
    metrics_path: str | os.PathLike | None = None,
    progress: bool | None = None,
    desc: str = "train",
    lr_factor: Callable[[int], float] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: LossFn | None = None,
    callbacks: Sequence[Callable[[TrainStep], None]] = (),
    augment_seed: int | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    resume_from: str | os.PathLike | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> TrainResult:
    """Train ``model`` in place from ``start_iteration`` to ``end_iteration`` (default: ``cfg.epochs``).

    The data order depends only on ``seed`` and the epoch, and so does the
    augmentation unless ``augment_seed`` is given (then it depends on that and the
    epoch, and the order on ``seed`` alone: the two vary apart), so a run started
    at a rewind point sees the same batches as the original run did from there.
    The order is drawn on the CPU, the same on every device; with ``augment_seed``
    the augmentation is drawn on the data's device (no copy from the host per
    batch), so the same ``augment_seed`` augments otherwise on a GPU than on the CPU.
    ``snapshot_at``: iterations at which ``on_snapshot(iteration, state_dict copy)``
    is called (iteration 0 is the state before any step).
    ``lr_factor``: overrides the schedule (e.g. a constant for fine-tuning).
    Validation runs every ``cfg.eval_every`` iterations (default: every epoch)
    and at the end; each record goes to ``metrics_path`` (JSONL) at once.
    ``cfg.precision`` bf16 or fp16 runs the forward passes and the loss under
    ``torch.autocast`` (the parameters, their gradients and the optimizer stay
    float32), fp16 with a ``torch.amp.GradScaler`` (it starts afresh at each call
    unless resumed from a checkpoint).

    ``optimizer``: used as it is instead of one built from ``cfg`` (whose optimizer
    fields are then ignored), e.g. one over an edge-popup model's scores alone. The
    schedule (or ``lr_factor``) still sets each param group's ``lr`` at every
    step, to its ``initial_lr`` times the factor; a group without ``initial_lr``
    gets its current ``lr`` as it, as torch's LR schedulers do.
    ``loss_fn(output, target)``: the batch's mean loss, a scalar tensor (default:
    cross-entropy); :func:`evaluate` uses it too, and reports accuracy ``None``
    for floating targets.
    ``callbacks``: each called as ``callback(TrainStep)`` after every optimizer step.

    The training step reads nothing back to the host: the running training loss is
    summed on the device and read at the validation points. (An fp16 GradScaler
    still reads its found-inf flag at every step, in torch's ``GradScaler.step``.)

    Checkpoints, for a run continued exactly after a kill: with ``checkpoint_path``,
    the model's state, the optimizer's, the GradScaler's, torch's random number
    generators (every rank's), the running loss, the records so far and the state
    of each callback that has ``state_dict``/``load_state_dict`` are written there
    (atomically) every ``checkpoint_every`` iterations (0: none on the way) and at
    the end. ``resume=True`` continues from ``checkpoint_path`` when it exists (else
    starts at ``start_iteration``), ``resume_from`` from that file (it must exist):
    the model, optimizer, scaler, generators and callbacks are loaded, and training
    0 -> T in one call equals 0 -> k, killed after the checkpoint at k, then k -> T,
    bit for bit. On resume, ``metrics_path`` is cut back to its length at the
    checkpoint (dropping the killed run's later records) when it is at least that
    long, and snapshots at or before the checkpoint's iteration are not taken again.

    DDP: ``rank`` / ``world_size`` default to ``torch.distributed``'s when it is
    initialized, else 0 / 1. ``model`` is then the DDP-wrapped model (snapshots
    and checkpoints hold the inner module's state). Every rank draws the same
    permutation and takes its shard of each global batch of ``cfg.batch_size``
    (see :func:`~lth_sparse.data.batches`). When ``world_size`` does not divide a
    batch the shards differ by one example, and each rank's loss is weighted by
    ``world_size * shard / batch`` so that DDP's averaged gradient is still the
    gradient of the global batch's mean loss (this assumes ``loss_fn`` is a mean
    over examples, as the default is); a batch smaller than ``world_size`` is a
    ``ValueError``. The recorded training loss is the global batches' (the ranks'
    shares summed at each record). Every rank evaluates the whole validation and
    test splits (the weights are the same on all), so all return the same result;
    only rank 0 writes the metrics file and checkpoints and calls ``on_snapshot``;
    the callbacks run on every rank, on its shard. A checkpoint is read by every
    rank on resume (a file system they all see). Without an initialized process
    group, a ``world_size > 1`` trains this process on its shards alone.
    """
    if world_size is None:
        world_size = torch.distributed.get_world_size() if _distributed() else 1
    if rank is None:
        rank = torch.distributed.get_rank() if _distributed() else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, world_size) with world_size >= 1, got rank={rank}, world_size={world_size}"
        )
    n_train = len(data.train)
    if n_train == 0:
        raise ValueError("the training split is empty")
    last_batch = n_train % cfg.batch_size or cfg.batch_size
    if min(cfg.batch_size, n_train, last_batch) < world_size:
        raise ValueError(
            f"every batch must hold at least world_size={world_size} examples, one per rank; "
            f"batch_size={cfg.batch_size} on {n_train} training examples has a batch of "
            f"{min(cfg.batch_size, n_train, last_batch)}"
        )
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs a checkpoint_path to resume from")
    per_epoch, total, end, schedule = training_span(cfg, n_train, start_iteration, end_iteration, lr_factor)
    train_loss_fn = loss_fn or default_loss(data.train.y)
    inner = _unwrap(model)
    if optimizer is None:
        optimizer = make_optimizer(model, cfg)
    device_type = _device_type(model)
    # disabled (fp32, bf16): scale() returns the loss itself and step() is optimizer.step()
    scaler = torch.amp.GradScaler(device_type, enabled=cfg.precision == "fp16")
    identity = {"seed": seed, "augment_seed": augment_seed, "batch_size": cfg.batch_size, "train_size": n_train}
    writer = rank == 0
    callbacks = tuple(callbacks)
    stateful = [cb for cb in callbacks if hasattr(cb, "state_dict") and hasattr(cb, "load_state_dict")]

    # With a process group, each rank sums its share of every global batch's mean loss, and the shares
    # are summed over the ranks at each record; without one, the loss is this process's alone.
    reduce_loss = world_size > 1 and _distributed()
    checkpoint = None
    if resume_from is not None:
        checkpoint = _read_checkpoint(resume_from, identity)
    elif resume and os.path.exists(checkpoint_path):
        checkpoint = _read_checkpoint(checkpoint_path, identity)
    records = ValidationRecords(start_iteration)
    # float64 sum of the float32 step losses: the same value as summing them as Python floats
    running = torch.zeros((), dtype=torch.float64, device=data.train.y.device)
    running_n = 0
    metrics_offset = None
    it = start_iteration
    if checkpoint is not None:
        it = checkpoint["iteration"]
        if not start_iteration <= it <= end:
            raise ValueError(f"the checkpoint's iteration {it} is not in [start_iteration={start_iteration}, {end}]")
        inner.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler.is_enabled():
            scaler.load_state_dict(checkpoint["scaler"])
        per_rank = checkpoint["ranks"]
        if len(per_rank) == world_size:
            _set_rng_state(per_rank[rank]["rng"])
            running += per_rank[rank]["running"].to(running.device)
        else:  # another world size: rank 0 carries the whole running loss on
            _set_rng_state(per_rank[0]["rng"])
            if rank == 0:
                running += sum(r["running"] for r in per_rank).to(running.device)
        running_n = checkpoint["running_steps"]
        records.history = list(checkpoint["history"])
        records.best = tuple(checkpoint["best"])
        for callback, state in zip(stateful, checkpoint["callbacks"]):
            callback.load_state_dict(state)
        metrics_offset = checkpoint["metrics_offset"]
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    snapshots = set(snapshot_at)
    eval_every = cfg.eval_every or per_epoch
    metrics_file = None
    if writer and metrics_path is not None:
        # resumed: the records the killed run wrote after its checkpoint are written again below
        if (
            metrics_offset is not None
            and os.path.exists(metrics_path)
            and os.path.getsize(metrics_path) >= metrics_offset
        ):
            os.truncate(metrics_path, metrics_offset)
        metrics_file = open(metrics_path, "a")
    records.file = metrics_file

    def record(it: int) -> None:
        nonlocal running_n
        if reduce_loss:
            torch.distributed.all_reduce(running)
        train_loss = running.item() / max(1, running_n)
        running.zero_()
        running_n = 0
        val_loss, val_acc = evaluate(inner, data.val, precision=cfg.precision, loss_fn=loss_fn)
        records.add(it, per_epoch, train_loss, val_loss, val_acc, optimizer.param_groups[0]["lr"])

    def snapshot(it: int) -> None:
        if writer and it in snapshots and on_snapshot is not None:
            on_snapshot(it, copy.deepcopy(inner.state_dict()))

    def save_checkpoint(it: int) -> None:
        per_rank = [{"rng": _rng_state(), "running": running.cpu()}]
        if reduce_loss:
            per_rank = [None] * world_size
            torch.distributed.all_gather_object(per_rank, {"rng": _rng_state(), "running": running.cpu()})
        if not writer:
            return
        atomic_torch_save(
            checkpoint_path,
            {
                "format": CHECKPOINT_FORMAT,
                "iteration": it,
                "identity": identity,
                "model": inner.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "ranks": per_rank,
                "running_steps": running_n,
                "history": records.history,
                "best": records.best,
                "callbacks": [callback.state_dict() for callback in stateful],
                "metrics_offset": os.path.getsize(metrics_path) if metrics_file is not None else None,
            },
        )

    model.train()
    if checkpoint is None:
        snapshot(it)
    saved_at = it if checkpoint is not None else None
    try:
        with progress_bar(end - it, desc, progress) as bar:
            epoch = it // per_epoch
            while it < end:
                order, augment = epoch_generators(seed, augment_seed, epoch, data.device)
                skip = it - epoch * per_epoch  # resuming mid-epoch: skip the batches already seen
                for b, (x, y, index) in enumerate(
                    batches(
                        data.train,
                        cfg.batch_size,
                        shuffle=True,
                        generator=order,
                        augment=data.augment,
                        augment_generator=augment,
                        with_index=True,
                        rank=rank,
                        world_size=world_size,
                    )
                ):
                    if b < skip:
                        continue
                    for group, lr in zip(optimizer.param_groups, base_lrs):
                        group["lr"] = lr * schedule(it)
                    optimizer.zero_grad(set_to_none=True)
                    with autocast_context(cfg.precision, device_type):
                        out = model(x)
                        loss = train_loss_fn(out, y)
                    weighted, share = loss, loss.detach()
                    if world_size > 1:
                        # DDP averages the ranks' gradients: weighted so that the average is the gradient
                        # of the global batch's mean loss, also when the shards differ in size
                        fraction = len(y) / min(cfg.batch_size, n_train - b * cfg.batch_size)
                        weighted = loss * (world_size * fraction)
                        if reduce_loss:
                            share = share * fraction
                    scaler.scale(weighted).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    it += 1
                    running += share
                    running_n += 1
                    bar.update(1)
                    if callbacks:
                        step = TrainStep(
                            iteration=it, epoch=epoch, index=index, output=out.detach(), target=y, loss=loss.detach()
                        )
                        for callback in callbacks:
                            callback(step)
                    if it % eval_every == 0 or it == end:
                        record(it)
                        last = records.history[-1]
                        postfix = {"loss": f"{last['train_loss']:.3f}"}
                        if last["val_accuracy"] is not None:
                            postfix["val_acc"] = f"{last['val_accuracy']:.3f}"
                        bar.set_postfix(**postfix)
                    snapshot(it)
                    if checkpoint_path is not None and checkpoint_every and it % checkpoint_every == 0:
                        save_checkpoint(it)
                        saved_at = it
                    if it >= end:
                        break
                epoch += 1
        if not records.history or records.history[-1]["iteration"] != it:
            record(it)
        if checkpoint_path is not None and saved_at != it:
            save_checkpoint(it)
    finally:
        if metrics_file is not None:
            metrics_file.close()
    test_loss, test_acc = evaluate(inner, data.test, precision=cfg.precision, loss_fn=loss_fn)
    return records.result(it, test_loss, test_acc)
