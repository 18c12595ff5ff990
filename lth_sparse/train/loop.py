"""Training and evaluation of a (masked) model on a tensor-held :class:`~lth_sparse.data.Dataset`.

One loop for every pipeline: SGD (momentum, weight decay, Nesterov), Adam and
AdamW; constant, step and cosine schedules with linear warm-up, stepped per
iteration; seeded and deterministic on the CPU; validation and test loss and
accuracy; model snapshots at chosen iterations (the rewind points); a tqdm
progress bar that stays quiet when output is not a terminal; metrics appended
to a JSONL file as they come, so a crash loses nothing already measured.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from lth_sparse.config import option
from lth_sparse.data import Dataset, Split, batches

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
# The autocast dtype of each reduced precision (fp32: no autocast).
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    milestones: tuple[float, ...] = option((), "epochs where the step schedule multiplies the learning rate by "
                                               "--gamma", metavar="EPOCH")
    gamma: float = option(0.1, "step-schedule decay factor")
    warmup_epochs: float = option(0.0, "linear learning-rate warm-up, in epochs")
    eval_every: int = option(0, "iterations between validation passes (0: once per epoch)")
    precision: str = option("fp32", "numeric precision of training and evaluation: fp32, bf16 (autocast) or fp16 "
                                    "(autocast with a GradScaler)", choices=PRECISIONS, since="0.2")

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


def parse_step(step: str | int, iters_per_epoch: int) -> int:
    """An iteration number from ``init``, ``iter:N``, ``epoch:N`` or an int."""
    if isinstance(step, int):
        value = step
    elif step == "init":
        value = 0
    elif isinstance(step, str) and step.startswith("iter:"):
        value = int(step[5:])
    elif isinstance(step, str) and step.startswith("epoch:"):
        value = round(float(step[6:]) * iters_per_epoch)
    else:
        raise ValueError(f"a training step must be 'init', 'iter:N' or 'epoch:N', got {step!r}")
    if value < 0:
        raise ValueError(f"a training step must be >= 0, got {step!r}")
    return value


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


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
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000, precision: str = "fp32") -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``split`` (eval mode, restored after), the
    forward pass at ``precision`` (see :func:`autocast_context`; the loss is summed in float32)."""
    if len(split) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    device_type = _device_type(model)
    for x, y in batches(split, batch_size, shuffle=False):
        with autocast_context(precision, device_type):
            out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
    model.train(was_training)
    return loss_sum / len(split), correct / len(split)


@dataclass
class TrainResult:
    iterations: int
    val_loss: float
    val_accuracy: float
    test_loss: float
    test_accuracy: float
    best_val_iteration: int  # the iteration of minimum validation loss (early-stopping point)
    best_val_loss: float
    train_loss: float
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d


def _progress(total: int, desc: str, enabled: bool | None):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def train(model: nn.Module, data: Dataset, cfg: TrainConfig, *, seed: int = 0, start_iteration: int = 0,
          end_iteration: int | None = None, snapshot_at: Iterable[int] = (), on_snapshot=None,
          metrics_path: str | os.PathLike | None = None, progress: bool | None = None,
          desc: str = "train", lr_factor: Callable[[int], float] | None = None) -> TrainResult:
    """Train ``model`` in place from ``start_iteration`` to ``end_iteration`` (default: ``cfg.epochs``).

    The data order and augmentation depend only on ``seed`` and the epoch, so a
    run started at a rewind point sees the same batches as the original run did
    from there. ``snapshot_at``: iterations at which ``on_snapshot(iteration,
    state_dict copy)`` is called (iteration 0 is the state before any step).
    ``lr_factor``: overrides the schedule (e.g. a constant for fine-tuning).
    Validation runs every ``cfg.eval_every`` iterations (default: every epoch)
    and at the end; each record goes to ``metrics_path`` (JSONL) at once.
    ``cfg.precision`` bf16 or fp16 runs the forward passes and the loss under
    ``torch.autocast`` (the parameters, their gradients and the optimizer stay
    float32), fp16 with a ``torch.amp.GradScaler`` (it starts afresh at each call).
    """
    per_epoch = iterations_per_epoch(len(data.train), cfg.batch_size)
    total = round(cfg.epochs * per_epoch)
    end = total if end_iteration is None else end_iteration
    if not 0 <= start_iteration <= end:
        raise ValueError(f"start_iteration must be in [0, {end}], got {start_iteration}")
    if len(data.train) == 0:
        raise ValueError("the training split is empty")
    schedule = lr_factor or make_schedule(cfg, per_epoch, total)
    optimizer = make_optimizer(model, cfg)
    device_type = _device_type(model)
    # disabled (fp32, bf16): scale() returns the loss itself and step() is optimizer.step()
    scaler = torch.amp.GradScaler(device_type, enabled=cfg.precision == "fp16")
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    snapshots = set(snapshot_at)
    eval_every = cfg.eval_every or per_epoch
    history: list[dict] = []
    best = (float("inf"), start_iteration)
    metrics_file = open(metrics_path, "a") if metrics_path is not None else None

    def record(it: int, train_loss: float) -> None:
        nonlocal best
        val_loss, val_acc = evaluate(model, data.val, precision=cfg.precision)
        entry = {"iteration": it, "epoch": it / per_epoch, "train_loss": train_loss, "val_loss": val_loss,
                 "val_accuracy": val_acc, "lr": optimizer.param_groups[0]["lr"]}
        if val_loss < best[0] or math.isnan(best[0]):
            best = (val_loss, it)
        history.append(entry)
        if metrics_file is not None:
            metrics_file.write(json.dumps(entry) + "\n")
            metrics_file.flush()

    def snapshot(it: int) -> None:
        if it in snapshots and on_snapshot is not None:
            on_snapshot(it, copy.deepcopy(model.state_dict()))

    model.train()
    it = start_iteration
    snapshot(it)
    running, running_n = 0.0, 0
    try:
        with _progress(end - start_iteration, desc, progress) as bar:
            epoch = it // per_epoch
            while it < end:
                generator = torch.Generator(device="cpu").manual_seed(seed * 100_003 + epoch)
                skip = it - epoch * per_epoch  # resuming mid-epoch: skip the batches already seen
                for b, (x, y) in enumerate(batches(data.train, cfg.batch_size, shuffle=True, generator=generator,
                                                   augment=data.augment)):
                    if b < skip:
                        continue
                    for group, lr in zip(optimizer.param_groups, base_lrs):
                        group["lr"] = lr * schedule(it)
                    optimizer.zero_grad(set_to_none=True)
                    with autocast_context(cfg.precision, device_type):
                        loss = F.cross_entropy(model(x), y)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    it += 1
                    running += loss.item()
                    running_n += 1
                    bar.update(1)
                    if it % eval_every == 0 or it == end:
                        record(it, running / running_n)
                        bar.set_postfix(loss=f"{running / running_n:.3f}", val_acc=f"{history[-1]['val_accuracy']:.3f}")
                        running, running_n = 0.0, 0
                    snapshot(it)
                    if it >= end:
                        break
                epoch += 1
    finally:
        if metrics_file is not None:
            metrics_file.close()
    if not history or history[-1]["iteration"] != it:
        record(it, running / max(1, running_n))
    test_loss, test_acc = evaluate(model, data.test, precision=cfg.precision)
    last = history[-1]
    return TrainResult(iterations=it, val_loss=last["val_loss"], val_accuracy=last["val_accuracy"],
                       test_loss=test_loss, test_accuracy=test_acc, best_val_iteration=best[1],
                       best_val_loss=best[0], train_loss=last["train_loss"], history=history)
