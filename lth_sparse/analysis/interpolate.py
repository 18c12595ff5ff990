"""The linear path between two networks, evaluated: loss, error and accuracy at every alpha.

Instability to SGD noise (Frankle et al., 2020; equation 3 of "The Influence of SGD Noise on
Lottery Ticket Performance") is read off the error along the straight line between two networks
trained from one state with different SGD noise. :func:`interpolate` evaluates that line:

    W(alpha) = (1 - alpha) * W_A + alpha * W_B        (alpha = 0 is state_a, alpha = 1 is state_b)

for every parameter, mask-applied weight and (``bn="interpolate"``) batch-norm statistic, all
alphas in one batched pass of :class:`lth_sparse.nn.path.PathNetwork` (never a model copy per
alpha). Alphas outside [0, 1] extrapolate along the same line.

Batch norm (``bn``), each recorded in the result:

- ``"recompute"`` (the default): every alpha's statistics re-estimated on ``bn_batches`` training
  batches (all alphas in the same passes), as the literature does: interpolated statistics do not
  describe the interpolated network's activations and inflate the barriers of BN networks;
- ``"interpolate"``: running statistics interpolated like every other tensor (the same as loading
  each interpolated state dict and evaluating it);
- ``"train-mode"``: every evaluation batch normalised by its own statistics (batch norm in training
  mode; dropout stays off).

Masked networks: the masked weights ``W * M`` are interpolated, each endpoint under its own mask;
``PathResult.masks`` says whether the masks are ``"shared"`` (two copies of one ticket),
``"different"`` (e.g. successive IMP tickets) or there are ``"none"``.

Data: a :class:`lth_sparse.data.Dataset` (splits ``train``, ``val``, ``test``; train and test by
default) or a mapping from split names to ``(x, y)`` tensors (a tuple), :class:`~lth_sparse.data.Split`
objects or iterables of ``(x, y)`` batches (a ``DataLoader``). Targets are class indices. Tensors are evaluated in
passes of at most ``batch_size`` examples; with ``bn="train-mode"`` in consecutive batches of exactly
``batch_size`` (each its own statistics), and an iterable's batches as they come.

Note: ``lth_sparse.analysis.interpolate`` is this function; the module is
``sys.modules["lth_sparse.analysis.interpolate"]`` (``from lth_sparse.analysis.interpolate import ...``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from lth_sparse.analysis.barriers import Barrier, barrier
from lth_sparse.data import Dataset, Split, batches
from lth_sparse.nn.modules import MaskedMixin
from lth_sparse.nn.path import BN_MODES, PathNetwork

__all__ = [
    "BN_MODES",
    "CONVENTION",
    "METRICS",
    "MASK_KINDS",
    "PRECISIONS",
    "PathCurve",
    "PathResult",
    "interpolate",
    "mask_relation",
    "recompute_batches",
]

PRECISIONS = ("fp32", "bf16")  # as the training loop names them (lth_sparse.train)
CONVENTION = "(1 - alpha) * state_a + alpha * state_b: alpha = 0 is state_a, alpha = 1 is state_b"
METRICS = ("loss", "error", "accuracy")
MASK_KINDS = ("shared", "different", "none")
_DATASET_SPLITS = ("train", "val", "test")
_SCHEMA = 1


@dataclass(frozen=True)
class PathCurve:
    """One split's curves along the path, one value per alpha: ``loss`` (mean cross-entropy), ``error``
    and ``accuracy`` (fractions, ``error = 1 - accuracy``), over ``examples`` examples."""

    loss: list[float]
    error: list[float]
    accuracy: list[float]
    examples: int

    def to_dict(self) -> dict:
        return {
            "loss": list(self.loss),
            "error": list(self.error),
            "accuracy": list(self.accuracy),
            "examples": self.examples,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> PathCurve:
        return cls(
            [float(v) for v in d["loss"]],
            [float(v) for v in d["error"]],
            [float(v) for v in d["accuracy"]],
            int(d["examples"]),
        )


@dataclass(frozen=True)
class PathResult:
    """The evaluated path between two networks.

    alphas: where it was evaluated (any order, values outside [0, 1] extrapolate);
    bn: the batch-norm mode (``BN_MODES``) every value was measured under;
    masks: ``"shared"``, ``"different"`` or ``"none"`` (see :func:`mask_relation`);
    curves: split name -> :class:`PathCurve`;
    bn_batches / bn_examples: the training batches and examples the statistics were re-estimated on
    (0 unless ``bn="recompute"`` and the model has batch norm); bn_layers: the model's batch-norm layers;
    batch_size: the evaluation batch size (with ``bn="train-mode"``, the examples of each batch statistic);
    precision: the passes' precision (``PRECISIONS``: ``"fp32"``, or ``"bf16"`` under autocast);
    convention: which end is which (``CONVENTION``: alpha = 0 is state_a).
    """

    alphas: list[float]
    bn: str
    masks: str
    curves: dict[str, PathCurve]
    bn_batches: int = 0
    bn_examples: int = 0
    bn_layers: int = 0
    batch_size: int = 1000
    precision: str = "fp32"
    convention: str = CONVENTION
    schema: int = field(default=_SCHEMA)

    @property
    def splits(self) -> list[str]:
        return list(self.curves)

    def curve(self, split: str = "test") -> PathCurve:
        """The curves of ``split``; KeyError naming the splits there are."""
        if split not in self.curves:
            raise KeyError(f"no split {split!r} in this result; it has {', '.join(self.curves) or 'none'}")
        return self.curves[split]

    def values(self, split: str = "test", metric: str = "error") -> list[float]:
        """One metric (``METRICS``) of one split, per alpha."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        return list(getattr(self.curve(split), metric))

    def barrier(self, split: str = "test", kind: str = "max-mean", metric: str = "error") -> Barrier:
        """The barrier of ``metric`` (``"error"``, the instability of equation 3, or ``"loss"``) on ``split``,
        of ``kind`` (``lth_sparse.analysis.BARRIER_KINDS``), with its endpoints' values; needs alphas 0 and 1."""
        if metric not in ("error", "loss"):
            raise ValueError(f"a barrier is of the error or the loss, got metric {metric!r}")
        return barrier(self.values(split, metric), self.alphas, kind)

    def to_dict(self) -> dict:
        """A JSON-ready dict (floats, ints, strings, lists); :meth:`from_dict` reads it back."""
        return {
            "schema": self.schema,
            "convention": self.convention,
            "alphas": list(self.alphas),
            "bn": self.bn,
            "masks": self.masks,
            "bn_batches": self.bn_batches,
            "bn_examples": self.bn_examples,
            "bn_layers": self.bn_layers,
            "batch_size": self.batch_size,
            "precision": self.precision,
            "curves": {name: c.to_dict() for name, c in self.curves.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> PathResult:
        if int(d.get("schema", _SCHEMA)) != _SCHEMA:
            raise ValueError(f"PathResult schema {d.get('schema')} is not the one this version reads ({_SCHEMA})")
        return cls(
            alphas=[float(a) for a in d["alphas"]],
            bn=str(d["bn"]),
            masks=str(d["masks"]),
            curves={str(k): PathCurve.from_dict(v) for k, v in d["curves"].items()},
            bn_batches=int(d.get("bn_batches", 0)),
            bn_examples=int(d.get("bn_examples", 0)),
            bn_layers=int(d.get("bn_layers", 0)),
            batch_size=int(d.get("batch_size", 1000)),
            precision=str(d.get("precision", "fp32")),
            convention=str(d.get("convention", CONVENTION)),
            schema=_SCHEMA,
        )


# ---------------------------------------------------------------------------------------------- checks


def _as_alphas(alphas: int | Sequence[float] | Tensor) -> Tensor:
    """(A,) float64 alphas: ``n`` evenly spaced points of [0, 1] for an int, else the values given."""
    if isinstance(alphas, bool):
        raise TypeError(f"alphas must be a number of points or a sequence of values, got {alphas!r}")
    if isinstance(alphas, int):
        if alphas < 2:
            raise ValueError(f"alphas as a number of points of [0, 1] must be at least 2 (both ends), got {alphas}")
        return torch.linspace(0, 1, alphas, dtype=torch.float64)
    t = torch.as_tensor(alphas.detach().cpu() if isinstance(alphas, Tensor) else alphas, dtype=torch.float64)
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1:
        raise ValueError(f"alphas must be 1-D, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError("alphas is empty: give at least one alpha (e.g. alphas=21 for 21 points of [0, 1])")
    if not torch.isfinite(t).all():
        raise ValueError(f"alphas must be finite, got {t.tolist()}")
    return t


def _check_states(model: nn.Module, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor]) -> None:
    """Both states have the model's keys and shapes; the error names the first mismatch."""
    expected = model.state_dict()
    for name, state in (("state_a", state_a), ("state_b", state_b)):
        if not isinstance(state, Mapping):
            raise TypeError(f"{name} must be a state dict (a mapping of names to tensors), got {type(state).__name__}")
        for key in expected:
            if key not in state:
                raise ValueError(f"{name} has no {key!r}, a key of the model's state dict")
        for key in state:
            if key not in expected:
                raise ValueError(f"{name} has {key!r}, which is not a key of the model's state dict")
    for key, reference in expected.items():
        a, b = state_a[key], state_b[key]
        for name, t in (("state_a", a), ("state_b", b)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}[{key!r}] must be a tensor, got {type(t).__name__}")
        if a.shape != b.shape:
            raise ValueError(
                f"state_a and state_b differ in the shape of {key!r}: {tuple(a.shape)} and {tuple(b.shape)}"
            )
        if a.shape != reference.shape:
            raise ValueError(f"{key!r} has shape {tuple(a.shape)} in the states, {tuple(reference.shape)} in the model")
        if a.is_floating_point() != b.is_floating_point():
            raise ValueError(f"state_a and state_b differ in the dtype of {key!r}: {a.dtype} and {b.dtype}")


def mask_relation(model: nn.Module, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor]) -> str:
    """``"none"`` for a model without masked layers, ``"shared"`` when both states hold the same masks,
    ``"different"`` otherwise (the masked weights ``W * M`` of each end are what is interpolated)."""
    keys = [f"{name}.mask" if name else "mask" for name, m in model.named_modules() if isinstance(m, MaskedMixin)]
    if not keys:
        return "none"
    same = all(torch.equal(state_a[k].bool().cpu(), state_b[k].bool().cpu()) for k in keys)
    return "shared" if same else "different"


# ------------------------------------------------------------------------------------------------ data


def _is_pair(value, sequences=(tuple,)) -> bool:
    """Whether ``value`` is (x, y) tensors: a tuple for a whole split (a list of two batches is a list of
    batches), a tuple or list for a batch (a DataLoader yields lists)."""
    return isinstance(value, sequences) and len(value) == 2 and all(isinstance(t, Tensor) for t in value)


def _as_split(value, name: str) -> Split | Iterable:
    """A split as tensors (a Split) or an iterable of (x, y) batches, as given."""
    if isinstance(value, Split):
        return value
    if _is_pair(value):
        return Split(value[0], value[1])
    if isinstance(value, Tensor) or isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"split {name!r} must be (x, y) tensors, a Split or an iterable of (x, y) batches, got "
            f"{type(value).__name__}"
        )
    return value


def _named_splits(data, splits: Sequence[str] | None) -> dict[str, Split | Iterable]:
    if isinstance(data, Dataset):
        available = {name: getattr(data, name) for name in _DATASET_SPLITS}
        wanted = ("train", "test") if splits is None else tuple(splits)
    elif isinstance(data, Mapping):
        available = dict(data)
        wanted = tuple(available) if splits is None else tuple(splits)
    else:
        raise TypeError(
            f"data must be a lth_sparse.data.Dataset or a mapping of split names to (x, y) tensors or "
            f"batches, got {type(data).__name__}"
        )
    if isinstance(splits, str):
        raise TypeError(f"splits must be a sequence of split names, got the string {splits!r}")
    if not wanted:
        raise ValueError("no split to evaluate: splits is empty")
    for name in wanted:
        if name not in available:
            raise ValueError(f"no split {name!r} in data; it has {', '.join(map(str, available)) or 'none'}")
    return {name: _as_split(available[name], name) for name in wanted}


def _limited(
    source: Split | Iterable, examples: int | None, batch_size: int | None, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    """(x, y) batches of a split on ``device``, at most ``examples`` examples in all: a Split as one batch
    (``batch_size`` None) or as consecutive batches of ``batch_size``; an iterable's batches as they come."""
    if isinstance(source, Split):
        split = source if examples is None else Split(source.x[:examples], source.y[:examples])
        if batch_size is None:
            yield split.x.to(device), split.y.to(device)
            return
        for x, y in batches(split, batch_size, shuffle=False):
            yield x.to(device), y.to(device)
        return
    left = math.inf if examples is None else examples
    for item in source:
        if left <= 0:
            return
        if not _is_pair(item, (tuple, list)):
            raise TypeError(f"a batch must be (x, y) tensors, got {type(item).__name__}")
        x, y = item
        if x.shape[0] > left:
            x, y = x[:left], y[:left]
        left -= x.shape[0]
        yield x.to(device), y.to(device)


def recompute_batches(
    train_data: Split | tuple[Tensor, Tensor] | Iterable, bn_batches: int, batch_size: int, seed: int = 0
) -> list[Tensor]:
    """The training inputs ``bn="recompute"`` re-estimates batch-norm statistics on: from tensors, the first
    ``bn_batches`` batches of ``batch_size`` of one permutation drawn with ``seed`` (full batches only, unless
    there are fewer examples than one batch: then all of them in one); from an iterable of (x, y) batches,
    its first ``bn_batches`` batches as they come. Training augmentation is not applied."""
    if isinstance(bn_batches, bool) or int(bn_batches) != bn_batches or bn_batches < 1:
        raise ValueError(f"bn_batches must be a positive integer, got {bn_batches!r}")
    source = _as_split(train_data, "train_data")
    if isinstance(source, Split):
        if len(source) == 0:
            raise ValueError("train_data has no examples to recompute batch-norm statistics on")
        generator = torch.Generator().manual_seed(seed)
        drop_last = len(source) >= batch_size
        out = []
        for x, _ in batches(source, batch_size, shuffle=True, generator=generator, drop_last=drop_last):
            out.append(x)
            if len(out) == bn_batches:
                break
        return out
    out = []
    for item in source:
        if len(out) == bn_batches:
            break
        if isinstance(item, Tensor):
            out.append(item)
        elif isinstance(item, (tuple, list)) and item and isinstance(item[0], Tensor):
            out.append(item[0])
        else:
            raise TypeError(f"a training batch must be (x, y) tensors or x, got {type(item).__name__}")
    if not out:
        raise ValueError("train_data yielded no batch to recompute batch-norm statistics on")
    return out


def _device_of(model: nn.Module, named: Mapping[str, Split | Iterable], train_data) -> torch.device:
    for source in (*named.values(), train_data):
        if isinstance(source, Split):
            return source.x.device
        if _is_pair(source):
            return source[0].device
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


# ------------------------------------------------------------------------------------------------- API


@torch.no_grad()
def interpolate(
    model: nn.Module,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    data: Dataset | Mapping[str, Split | tuple[Tensor, Tensor] | Iterable],
    *,
    alphas: int | Sequence[float] | Tensor = 21,
    bn: str = "recompute",
    bn_batches: int = 10,
    splits: Sequence[str] | None = None,
    train_data: Split | tuple[Tensor, Tensor] | Iterable | None = None,
    batch_size: int = 1000,
    bn_batch_size: int | None = None,
    seed: int = 0,
    examples: int | None = None,
    device: str | torch.device | None = None,
    one_alpha_at_a_time: bool | None = None,
    precision: str = "fp32",
) -> PathResult:
    """``model`` at ``(1 - a) * state_a + a * state_b`` for every alpha ``a``, evaluated on each split:
    mean cross-entropy loss, error and accuracy per alpha (see the module's docstring).

    model: any ``nn.Module`` whose layers with tensors are Linear / Conv2d / BatchNorm (masked or not) or
    layers with tensors of their own only (run through ``torch.func.functional_call``); state_a, state_b:
    its state dicts (masks included). alphas: a number of evenly spaced points of [0, 1] (default 21) or
    the values, any finite ones. bn: ``"recompute"`` (default), ``"interpolate"`` or ``"train-mode"``.
    data: a Dataset (``splits`` default: train and test) or a mapping of split names to ``(x, y)`` tensors,
    Splits or iterables of ``(x, y)`` batches (``splits`` default: all of them). examples: evaluate at most
    this many (the first) examples of each split. batch_size: examples per evaluation pass (with
    ``"train-mode"``, per batch statistic). bn="recompute": ``bn_batches`` batches of ``bn_batch_size``
    (default ``batch_size``) training examples, drawn with ``seed`` (see :func:`recompute_batches`) from
    ``train_data`` (default: the data's train split). device: where to evaluate (default: the data's).
    one_alpha_at_a_time: force the order of the passes (see :class:`~lth_sparse.nn.path.PathNetwork`).
    precision: ``"fp32"`` (default), or ``"bf16"``: the statistics' and the evaluation's passes under
    ``torch.autocast`` in bfloat16 (products and convolutions in bfloat16, accumulated in float32; the
    losses from float32 logits), for CPUs with AMX and GPUs with tensor cores: Conv-2 / Conv-4 + batch
    norm, 21 alphas, one core of an AMX Xeon: 2.1x / 2.7x faster, losses within 0.005 of float32's
    (LeNet-300-100: 1.3x). A screening precision: report barriers measured in float32.

    Returns a :class:`PathResult`. Raises ValueError for states whose keys or shapes differ from each other
    or the model's (naming the first), empty or non-finite alphas, an unknown bn mode or split, a model
    with layers that cannot be interpolated, and ``bn="recompute"`` on a model with batch norm and no
    training data; TypeError for data of another form.
    """
    if bn not in BN_MODES:
        raise ValueError(f"unknown bn mode {bn!r}; choose one of {', '.join(BN_MODES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    bn_batch_size = batch_size if bn_batch_size is None else bn_batch_size
    if isinstance(bn_batch_size, bool) or int(bn_batch_size) != bn_batch_size or bn_batch_size < 1:
        raise ValueError(f"bn_batch_size must be a positive integer, got {bn_batch_size!r}")
    if examples is not None and (isinstance(examples, bool) or int(examples) != examples or examples < 1):
        raise ValueError(f"examples must be a positive integer or None, got {examples!r}")
    alpha_values = _as_alphas(alphas)
    _check_states(model, state_a, state_b)
    named = _named_splits(data, splits)
    if train_data is None:
        if isinstance(data, Dataset):
            train_data = data.train
        elif isinstance(data, Mapping) and "train" in data:
            train_data = data["train"]
    device = torch.device(device) if device is not None else _device_of(model, named, train_data)

    path = PathNetwork(model, state_a, state_b, bn=bn).to(device)
    with _precision(precision, device):
        bn_layers = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        path_alphas = alpha_values.to(device=device, dtype=torch.float32)
        used_batches = used_examples = 0
        if bn == "recompute" and bn_layers:
            if train_data is None:
                raise ValueError(
                    "bn='recompute' re-estimates the batch-norm statistics of every alpha on training "
                    "batches: pass train_data, or data with a 'train' split (or choose bn='interpolate' "
                    "or 'train-mode')"
                )
            inputs = [x.to(device) for x in recompute_batches(train_data, bn_batches, bn_batch_size, seed)]
            used_batches = path.recompute_bn_statistics(inputs, path_alphas, one_alpha_at_a_time)
            used_examples = sum(x.shape[0] for x in inputs)

        curves = {}
        for name, source in named.items():
            whole = batch_size if bn == "train-mode" else None  # train-mode: each batch one statistic, as given
            loss, correct, n = path.evaluate(
                _limited(source, examples, whole, device), path_alphas, batch_size, one_alpha_at_a_time
            )
            if n == 0:
                raise ValueError(f"split {name!r} has no examples")
            accuracy = (correct / n).tolist()
            curves[name] = PathCurve(
                loss=(loss / n).tolist(), error=[1.0 - a for a in accuracy], accuracy=accuracy, examples=n
            )
        return PathResult(
            alphas=alpha_values.tolist(),
            bn=bn,
            masks=mask_relation(model, state_a, state_b),
            curves=curves,
            bn_batches=used_batches,
            bn_examples=used_examples,
            bn_layers=bn_layers,
            batch_size=int(batch_size),
            precision=precision,
        )


def _precision(precision: str, device: torch.device):
    """The context the passes run in: none for fp32, autocast to bfloat16 for "bf16"."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
