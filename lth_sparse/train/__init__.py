"""The training loop every pipeline shares."""

from lth_sparse.train.loop import (
    TrainConfig,
    TrainResult,
    TrainStep,
    default_loss,
    evaluate,
    iterations_per_epoch,
    make_optimizer,
    make_schedule,
    parse_step,
    train,
)
from lth_sparse.train.stacked import available_memory, recommended_stack, stack_memory, train_stacked

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainStep",
    "available_memory",
    "default_loss",
    "evaluate",
    "iterations_per_epoch",
    "make_optimizer",
    "make_schedule",
    "parse_step",
    "recommended_stack",
    "stack_memory",
    "train",
    "train_stacked",
]
