"""Training-dynamics measures of "The Influence of SGD Noise on Lottery Ticket Performance":
forgetting events (Table 1, Appendix A.1) and convergence speed (equation 4).

Forgetting events (Toneva et al., 2019, "An empirical study of example forgetting during deep neural network
learning"). An example is *presented* each time it is in a training batch; it is *correct* at a presentation
when ``output.argmax(1) == target`` for the output of that step's forward pass, the one the gradient was taken
of (before the optimizer step, in training mode, on the augmented input where there is augmentation), as
Toneva et al. record it. A *forgetting event* is a presentation at which the example is incorrect while it was
correct at its previous presentation. Per example:

- *learned*: correct at some presentation;
- *unforgettable*: learned, and no forgetting event ever (Toneva's "unforgettable examples");
- *forgotten*: learned, and at least one forgetting event;
- *never learned*: presented, never correct. Toneva et al. count these apart, as forgettable (their code gives
  them as many forgetting events as there were presentations when examples are ranked); here they have zero
  *events* (they never go from correct to incorrect) in the counts and the mean, and :func:`most_forgotten`
  ranks them above every learned example.

The table figures (:class:`ForgettingResult`) are over the examples presented at least once: the mean (and
the spread over examples) of the number of events, and the fractions unforgettable / forgotten / never learned,
which add up to one. The paper's Table 1 gives "forgetting events" as mean +- a spread too large to be one over
three seeds; we read it as the standard deviation over examples (``std_events``) and leave any spread over
seeds to the caller.

:class:`ForgettingEvents` is a ``train`` callback: four vectors of the training split's length on the data's
device, updated by indexing with the batch's positions, with no Python loop per example and nothing read back
to the host during training.

Convergence speed, equation 4 of the paper, from the error before training ``E(W^0)`` and after every epoch
``E(W^ep)``, ``ep = 1..T``:

    (1 / T) sum_{ep=1..T} (E(W^0) - E(W^ep)) / (E(W^0) - E(W^T))

the mean over the epochs of the fraction of the whole training's error drop reached by each epoch: 1 when the
whole drop happens in the first epoch, ``(T + 1) / (2 T)`` for a linear drop. The paper does not say on which
split the error is measured (its appendix speaks of "train convergence"): :class:`EpochErrors` measures it on
any split, and :func:`epoch_errors` reads it off the validation records ``train`` already writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from lth_sparse.atomic import (
    atomic_save_safetensors,
    atomic_write_json,
    read_safetensors,
)
from lth_sparse.data import Dataset, Split
from lth_sparse.train.loop import PRECISIONS, TrainStep, evaluate

__all__ = [
    "EpochErrors",
    "ForgettingEvents",
    "ForgettingResult",
    "convergence_speed",
    "dataset_without",
    "epoch_errors",
    "least_forgotten",
    "most_forgotten",
    "without_examples",
]

_FORMAT = "lth_sparse.forgetting/1"
_STATE_FORMAT = 1
_VECTORS = ("counts", "learned", "last_correct", "presentations")
_TENSORS = (*_VECTORS, "events_per_epoch")  # a ForgettingResult's tensors, and the counting state's


# --- Forgetting events ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # tensors: no elementwise ==
class ForgettingResult:
    """Per-example forgetting statistics of one training (see the module for the definitions).

    counts: int64 ``(N,)``, forgetting events per example (positions in the training split).
    learned: bool ``(N,)``, correct at some presentation.
    last_correct: bool ``(N,)``, correct at its last presentation (False if never presented).
    presentations: int64 ``(N,)``, how many times the example was in a training batch.
    events_per_epoch: int64 ``(E,)``, forgetting events of all examples in each epoch ``0..E-1`` (the
        paper's Figure 6); ``E`` is one more than the last epoch seen.

    The figures are over the presented examples (``presentations > 0``), NaN when there is none.
    """

    counts: Tensor
    learned: Tensor
    last_correct: Tensor
    presentations: Tensor
    events_per_epoch: Tensor

    def __post_init__(self) -> None:
        n = self.counts.shape
        for name in _VECTORS:
            value = getattr(self, name)
            if value.dim() != 1 or value.shape != n:
                raise ValueError(f"{name} must be a vector of the {tuple(n)} examples' shape, got {tuple(value.shape)}")
        if self.events_per_epoch.dim() != 1:
            raise ValueError(f"events_per_epoch must be a vector, got shape {tuple(self.events_per_epoch.shape)}")

    @property
    def num_examples(self) -> int:
        return int(self.counts.numel())

    @property
    def presented(self) -> Tensor:
        """bool ``(N,)``: presented at least once."""
        return self.presentations > 0

    @property
    def num_presented(self) -> int:
        return int(self.presented.sum())

    @property
    def unforgettable(self) -> Tensor:
        """bool ``(N,)``: learned and never forgotten."""
        return self.learned & (self.counts == 0)

    @property
    def never_learned(self) -> Tensor:
        """bool ``(N,)``: presented and never correct."""
        return self.presented & ~self.learned

    def _over_presented(self, mask: Tensor) -> float:
        n = self.num_presented
        return float((mask & self.presented).sum()) / n if n else math.nan

    @property
    def mean_events(self) -> float:
        """Mean number of forgetting events per presented example (Table 1's "forgetting events")."""
        n = self.num_presented
        return float(self.counts[self.presented].double().mean()) if n else math.nan

    @property
    def std_events(self) -> float:
        """Standard deviation over the presented examples (population, ``correction=0``) of their events."""
        n = self.num_presented
        return float(self.counts[self.presented].double().std(correction=0)) if n else math.nan

    @property
    def unforgettable_fraction(self) -> float:
        """Fraction of the presented examples learned and never forgotten (Table 1's "unforgettable %" / 100)."""
        return self._over_presented(self.unforgettable)

    @property
    def forgotten_fraction(self) -> float:
        """Fraction of the presented examples learned and forgotten at least once."""
        return self._over_presented(self.learned & (self.counts > 0))

    @property
    def never_learned_fraction(self) -> float:
        """Fraction of the presented examples never correct (forgettable in Toneva's convention)."""
        return self._over_presented(self.never_learned)

    def to_dict(self) -> dict:
        """The figures, JSON-ready (NaN where nothing was presented)."""
        return {
            "num_examples": self.num_examples,
            "num_presented": self.num_presented,
            "mean_events": self.mean_events,
            "std_events": self.std_events,
            "max_events": int(self.counts.max()) if self.num_examples else 0,
            "unforgettable_fraction": self.unforgettable_fraction,
            "forgotten_fraction": self.forgotten_fraction,
            "never_learned_fraction": self.never_learned_fraction,
            "events_per_epoch": [int(v) for v in self.events_per_epoch.tolist()],
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the per-example tensors to ``path`` (safetensors, the figures in its metadata) and the figures to
        the ``.json`` beside it (``path`` with its suffix replaced), each atomically."""
        path = Path(path)
        if path.suffix == ".json":
            raise ValueError(f"path is the tensors' file and the figures go to a .json beside it; got {path}")
        figures = self.to_dict()
        tensors = {name: getattr(self, name) for name in _TENSORS}
        atomic_save_safetensors(path, tensors, _FORMAT, {"figures": json.dumps(figures)})
        atomic_write_json(path.with_suffix(".json"), figures)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> ForgettingResult:
        """Read a result written by :meth:`save` (the safetensors file; the JSON is not needed)."""
        return cls(**read_safetensors(path, _FORMAT, "forgetting result", device=device, names=_TENSORS)[0])


class ForgettingEvents:
    """A ``train`` callback counting every training example's forgetting events (see the module).

    ``num_examples``: the length of the training split (``len(data.train)``); ``device``: where the counts are
    kept, the data's device (a step's tensors on another device are copied, which reads back to the host when
    that device is a GPU and this one the CPU). Each call takes a :class:`~lth_sparse.train.TrainStep` whose
    ``index`` holds distinct positions (as ``train``'s batches do), ``output`` ``(B, C)`` scores and ``target``
    ``(B,)`` class indices; it reads nothing back to the host. ``state_dict`` / ``load_state_dict`` make it
    continue across ``train``'s checkpoints. :meth:`result` reads the counts out.

    DDP: ``train`` gives each rank its shard of every batch. With ``sync`` (the default when a
    ``torch.distributed`` process group of more than one rank is initialized) every step all-reduces an
    ``N``-byte vector of the step's outcomes (0: not in the batch, 1: incorrect, 2: correct; each example is in
    one shard at most), so every rank counts the whole training set exactly as a single process would, at the
    cost of one collective of ``N`` bytes per step (the device-side update is then ``O(N)`` per step instead of
    ``O(B)``). With ``sync=False`` each rank counts its own shards only: an example's presentations on the other
    ranks are missed, so transitions across ranks are lost and the counts of different ranks cannot be merged
    into the single-process ones; moreover ``train`` checkpoints rank 0's callback state alone, so after a
    resume every rank holds rank 0's counts. ``sync=True`` without an initialized process group is an error.
    """

    def __init__(self, num_examples: int, device: str | torch.device = "cpu", *, sync: bool | None = None) -> None:
        if isinstance(num_examples, bool) or not isinstance(num_examples, numbers.Integral) or num_examples < 0:
            raise ValueError(f"num_examples must be an integer >= 0, got {num_examples!r}")
        self.num_examples = int(num_examples)
        self.device = torch.device(device)
        self.sync = sync
        n = self.num_examples
        self.counts = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.learned = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.last_correct = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.presentations = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.events_per_epoch = torch.zeros(0, dtype=torch.int64, device=self.device)

    def _synced(self) -> bool:
        initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
        if self.sync is None:
            return initialized and torch.distributed.get_world_size() > 1
        if self.sync and not initialized:
            raise RuntimeError("ForgettingEvents(sync=True) needs an initialized torch.distributed process group")
        return bool(self.sync)

    def __call__(self, step: TrainStep) -> None:
        index, output, target = step.index, step.output, step.target
        if output.dim() != 2 or target.dim() != 1 or target.is_floating_point():
            raise ValueError(
                "forgetting events need (B, C) scores and (B,) integer class targets, got output "
                f"{tuple(output.shape)} and target {tuple(target.shape)} of {target.dtype}"
            )
        if not (index.shape[0] == output.shape[0] == target.shape[0]) or index.dim() != 1:
            raise ValueError(
                f"index {tuple(index.shape)}, output {tuple(output.shape)} and target "
                f"{tuple(target.shape)} must hold the same examples"
            )
        if step.epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {step.epoch}")
        if step.epoch >= len(self.events_per_epoch):  # once per epoch, on the host's knowledge of the epoch alone
            grow = torch.zeros(step.epoch + 1 - len(self.events_per_epoch), dtype=torch.int64, device=self.device)
            self.events_per_epoch = torch.cat([self.events_per_epoch, grow])
        index = index.to(self.device, torch.int64, non_blocking=True)
        correct = (output.argmax(1) == target).to(self.device, non_blocking=True)
        if self._synced():
            self._update_all(index, correct, step.epoch)
        else:
            self._update_batch(index, correct, step.epoch)

    def _update_batch(self, index: Tensor, correct: Tensor, epoch: int) -> None:
        """O(B): the batch's examples only (distinct positions)."""
        forgot = self.last_correct[index] & ~correct
        self.counts.index_add_(0, index, forgot.to(torch.int64))
        self.learned[index] = self.learned[index] | correct
        self.last_correct[index] = correct
        self.presentations.index_add_(0, index, torch.ones_like(index))
        self.events_per_epoch[epoch] += forgot.sum()

    def _update_all(self, index: Tensor, correct: Tensor, epoch: int) -> None:
        """O(N): every rank's shard of the step, all-reduced as one outcome code per example."""
        outcome = torch.zeros(self.num_examples, dtype=torch.uint8, device=self.device)
        outcome[index] = correct.to(torch.uint8) + 1
        torch.distributed.all_reduce(outcome)
        presented, correct_all = outcome > 0, outcome == 2
        forgot = presented & self.last_correct & ~correct_all
        self.counts += forgot
        self.learned |= correct_all
        self.last_correct = torch.where(presented, correct_all, self.last_correct)
        self.presentations += presented
        self.events_per_epoch[epoch] += forgot.sum()

    def state_dict(self) -> dict:
        """Copies of the counts so far (``train`` saves them in its checkpoints)."""
        return {
            "format": _STATE_FORMAT,
            "num_examples": self.num_examples,
            **{name: getattr(self, name).clone() for name in _TENSORS},
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from ``state`` (a :meth:`state_dict`, on any device)."""
        if state.get("format") != _STATE_FORMAT or state.get("num_examples") != self.num_examples:
            raise ValueError(
                f"the state (format {state.get('format')!r}) is one of ForgettingEvents over "
                f"{state.get('num_examples')!r} examples, this one counts {self.num_examples} "
                f"(format {_STATE_FORMAT})"
            )
        for name in _TENSORS:
            current = getattr(self, name)
            value = torch.as_tensor(state[name])
            if name != "events_per_epoch" and value.shape != current.shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(current.shape)}")
            setattr(self, name, value.to(device=self.device, dtype=current.dtype).clone())

    def result(self) -> ForgettingResult:
        """The counts so far, copied to the CPU (one read back to the host)."""
        return ForgettingResult(**{name: getattr(self, name).cpu().clone() for name in _TENSORS})


def _check_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    return float(fraction)


def _forgetting_key(counts_or_result: Tensor | ForgettingResult) -> Tensor:
    """float64 ``(N,)`` forgetting scores: the counts, never-learned examples above every learned one."""
    if isinstance(counts_or_result, ForgettingResult):
        result = counts_or_result
        unpresented = result.num_examples - result.num_presented
        if unpresented:
            raise ValueError(
                f"{unpresented} of the {result.num_examples} examples were never presented: a ranking "
                "needs every example's record (a training shorter than an epoch, or one rank's shard "
                "under DDP without sync?)"
            )
        key = result.counts.double()
        top = float(key.max()) + 1.0 if len(key) else 0.0
        return torch.where(result.learned, key, torch.full_like(key, top))
    counts = torch.as_tensor(counts_or_result)
    if counts.dim() != 1 or counts.is_complex() or counts.dtype == torch.bool:
        raise ValueError(f"counts must be a real vector, got {counts.dtype} of shape {tuple(counts.shape)}")
    key = counts.detach().cpu().double()
    if not torch.isfinite(key).all():
        raise ValueError("counts must be finite")
    return key


def _ranked(counts_or_result: Tensor | ForgettingResult, fraction: float, descending: bool) -> Tensor:
    fraction = _check_fraction(fraction)
    key = _forgetting_key(counts_or_result).cpu()
    k = round(fraction * len(key))
    # stable: equal keys keep the order of their positions, in both directions
    return torch.sort(key, descending=descending, stable=True).indices[:k]


def most_forgotten(counts_or_result: Tensor | ForgettingResult, fraction: float) -> Tensor:
    """Positions of the ``round(fraction * N)`` most forgotten examples, most forgotten first (int64, CPU).

    ``counts_or_result``: a :class:`ForgettingResult` (every example must have been presented), or a vector of
    per-example forgetting scores of any real dtype (e.g. counts summed over seeds, as Toneva et al. rank them).
    With a result, never-learned examples rank above every learned one (Toneva's convention: unlearned examples
    are the most forgettable), among themselves by position; learned ones by decreasing count. Ties are broken
    by increasing position, so the answer is deterministic. ``round`` is Python's (halves to even).

    Raises:
        ValueError: ``fraction`` not a number in [0, 1]; ``counts`` not a finite real vector; a result with
            examples never presented.
    """
    return _ranked(counts_or_result, fraction, descending=True)


def least_forgotten(counts_or_result: Tensor | ForgettingResult, fraction: float) -> Tensor:
    """Positions of the ``round(fraction * N)`` least forgotten examples, least forgotten first (int64, CPU): the
    reverse ranking of :func:`most_forgotten` except that ties are again broken by increasing position (the
    "easiest" examples of the paper's Appendix A.1; never-learned examples come last)."""
    return _ranked(counts_or_result, fraction, descending=False)


def without_examples(split: Split, indices: Tensor | Sequence[int]) -> Split:
    """``split`` without the examples at ``indices`` (positions in it; repeats allowed), the others in their
    order. New tensors, on the split's device."""
    n = len(split)
    index = torch.as_tensor(indices)
    if index.numel() == 0:
        index = index.to(torch.int64)
    if index.dim() != 1 or index.is_floating_point() or index.dtype == torch.bool or index.is_complex():
        raise ValueError(
            f"indices must be a vector of integer positions, got {index.dtype} of shape {tuple(index.shape)}"
        )
    index = index.to(device=split.y.device, dtype=torch.int64)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        raise ValueError(
            f"indices must be positions in [0, {n}) of the split, got values in "
            f"[{int(index.min())}, {int(index.max())}]"
        )
    keep = torch.ones(n, dtype=torch.bool, device=split.y.device)
    keep[index] = False
    return Split(split.x[keep], split.y[keep])


def dataset_without(data: Dataset, indices: Tensor | Sequence[int]) -> Dataset:
    """``data`` with the training examples at ``indices`` removed (validation and test untouched): the subsets
    of the paper's Appendix A.1, e.g. ``dataset_without(data, most_forgotten(result, 0.1))``. The positions are
    those of the training that counted them, so ``data`` must be loaded as it was then (the same name, seed,
    validation fraction and training size)."""
    return dataclasses.replace(data, train=without_examples(data.train, indices))


# --- Convergence speed ------------------------------------------------------------------------------------


def convergence_speed(errors: Sequence[float] | Tensor, *, strict: bool = False) -> float:
    """Equation 4: ``(1/T) sum_{ep=1..T} (errors[0] - errors[ep]) / (errors[0] - errors[T])``.

    ``errors``: ``T + 1 >= 2`` finite values, ``errors[0]`` before training and ``errors[ep]`` after epoch
    ``ep``. 1 when the whole drop is reached after the first epoch; ``(T + 1) / (2 T)`` for a linear drop;
    above 1 when some epoch is below the final error, negative when epochs rise above the initial one.

    The drop ``errors[0] - errors[T]`` must be positive: when it is zero or negative (training did not lower the
    error) the fraction of it reached is undefined, and the result is NaN, or a ``ValueError`` saying so with
    ``strict``.

    Raises:
        ValueError: fewer than two values, a non-finite value, or (``strict``) a drop that is not positive.
    """
    e = torch.as_tensor(errors, dtype=torch.float64).flatten()
    if e.numel() < 2:
        raise ValueError(f"errors must hold the error before training and after at least one epoch, got {e.tolist()}")
    if not torch.isfinite(e).all():
        raise ValueError(f"errors must be finite, got {e.tolist()}")
    drop = float(e[0] - e[-1])
    if not drop > 0:
        if strict:
            raise ValueError(
                f"the error did not drop over training ({float(e[0])} before, {float(e[-1])} after): "
                "the convergence speed is undefined"
            )
        return math.nan
    return float(((e[0] - e[1:]) / drop).mean())


class EpochErrors:
    """A ``train`` callback recording the error (``1 - accuracy``) of ``model`` on ``split`` before training and
    after every whole epoch, for :func:`convergence_speed`.

    ``model``: the trained module (the inner one under DDP, where every rank evaluates). ``iterations_per_epoch``:
    as ``train`` counts them (:func:`lth_sparse.train.iterations_per_epoch` of the training split's length and
    the batch size); after the step whose ``iteration`` is a multiple of it, ``split`` is evaluated with
    :func:`lth_sparse.train.evaluate` (eval mode, restored after; nothing of the training changes, one read back
    per epoch). ``initial_error``: the error before training; ``None`` measures it now, so construct the callback
    just before ``train`` (from iteration 0, for equation 4). ``state_dict`` / ``load_state_dict`` make it
    continue across ``train``'s checkpoints (a resumed run's initial error is the checkpoint's).

    For the validation split, :func:`epoch_errors` reads the same values off ``train``'s own records (when it
    evaluates once per epoch, the default), with no extra pass.
    """

    def __init__(
        self,
        model: nn.Module,
        split: Split,
        iterations_per_epoch: int,
        *,
        batch_size: int = 1000,
        precision: str = "fp32",
        initial_error: float | None = None,
    ) -> None:
        if split.y.is_floating_point():
            raise ValueError("EpochErrors measures a classification error; the split has floating targets")
        if len(split) == 0:
            raise ValueError("the split is empty")
        if (
            isinstance(iterations_per_epoch, bool)
            or not isinstance(iterations_per_epoch, numbers.Integral)
            or iterations_per_epoch < 1
        ):
            raise ValueError(f"iterations_per_epoch must be an integer >= 1, got {iterations_per_epoch!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model = model
        self.split = split
        self.iterations_per_epoch = int(iterations_per_epoch)
        self.batch_size = batch_size
        self.precision = precision
        self.initial_error = self.measure() if initial_error is None else float(initial_error)
        self.epoch_errors: dict[int, float] = {}

    def measure(self) -> float:
        """The model's error on the split now."""
        _, accuracy = evaluate(self.model, self.split, self.batch_size, self.precision)
        return 1.0 - accuracy

    def __call__(self, step: TrainStep) -> None:
        if step.iteration % self.iterations_per_epoch == 0:
            self.epoch_errors[step.iteration // self.iterations_per_epoch] = self.measure()

    @property
    def errors(self) -> list[float]:
        """``[initial error, error after epoch 1, ..., after epoch T]``: the argument of :func:`convergence_speed`.

        Raises:
            ValueError: the recorded epochs are not 1..T (a training resumed from a later point without this
                callback's state).
        """
        epochs = sorted(self.epoch_errors)
        if epochs != list(range(1, len(epochs) + 1)):
            raise ValueError(f"errors were recorded after epochs {epochs}, not after every epoch from 1")
        return [self.initial_error, *(self.epoch_errors[e] for e in epochs)]

    def state_dict(self) -> dict:
        return {"initial_error": self.initial_error, "epoch_errors": dict(self.epoch_errors)}

    def load_state_dict(self, state: Mapping) -> None:
        self.initial_error = float(state["initial_error"])
        self.epoch_errors = {int(e): float(v) for e, v in state["epoch_errors"].items()}


def epoch_errors(records: Iterable[Mapping] | str | os.PathLike, initial_error: float) -> list[float]:
    """``[initial_error, validation error after epoch 1, ..., after epoch T]`` from ``train``'s records.

    ``records``: ``TrainResult.history`` or the path of the ``metrics.jsonl`` that ``train`` wrote; the records
    at whole epochs (``iteration`` a multiple of the epoch's iterations: every record with the default
    ``eval_every``) give ``1 - val_accuracy``, a later record of the same epoch replacing an earlier one; the
    last record of a fractional training is left out. ``initial_error``: the validation error before training,
    e.g. ``1 - evaluate(model, data.val)[1]``.

    Raises:
        ValueError: no whole epoch, an epoch of 1..T missing (``eval_every`` not a divisor of the epoch), or a
            record without a validation accuracy (a regression).
    """
    if isinstance(records, (str, os.PathLike)):
        with open(records) as f:
            records = [json.loads(line) for line in f if line.strip()]
    by_epoch: dict[int, float] = {}
    for record in records:
        epoch = float(record["epoch"])
        if epoch.is_integer() and epoch >= 1:
            accuracy = record.get("val_accuracy")
            if accuracy is None:
                raise ValueError(f"the record at epoch {epoch:g} has no validation accuracy (a regression?)")
            by_epoch[int(epoch)] = 1.0 - float(accuracy)
    epochs = sorted(by_epoch)
    if not epochs or epochs != list(range(1, len(epochs) + 1)):
        raise ValueError(
            f"the records hold whole epochs {epochs}, not every epoch from 1: train with the default "
            "eval_every (once per epoch), or record the errors with EpochErrors"
        )
    return [float(initial_error), *(by_epoch[e] for e in epochs)]
