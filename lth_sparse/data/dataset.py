"""Datasets held as tensors on the training device, and batching by index permutation.

Small vision datasets fit in device memory many times over, so an epoch is a
random permutation of indices and slicing: no DataLoader, no worker processes, no
per-example Python.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .augment import RandomCropFlip

__all__ = ["Split", "Dataset", "RawDataset", "batches", "hold_out_test", "shard_bounds", "split_and_normalise"]

Augment = Callable[[Tensor, "torch.Generator | None"], Tensor]


@dataclass
class Split:
    """One part of a dataset, held as two tensors on one device.

    x: float32, normalised; ``(N, C, H, W)`` for images, ``(N, F)`` for vectors.
    y: int64 class indices, ``(N,)``; or floating targets ``(N, *)`` for a regression task.
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"x and y must hold the same number of examples, got {self.x.shape[0]} and {self.y.shape[0]}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: str | torch.device) -> Split:
        """This split with both tensors on ``device``."""
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Dataset:
    """A classification dataset, split into train / validation / test.

    ``augment`` is applied to training batches only (see ``batches``); it is
    ``None`` for datasets trained without augmentation. ``mean`` and ``std`` are the
    per-channel statistics (on the ``[0, 1]`` pixel scale for images) that were
    subtracted and divided out at load time.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    augment: Augment | None
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    @property
    def device(self) -> torch.device:
        return self.train.x.device


@dataclass
class RawDataset:
    """What a registered loader returns: the official sets, before splitting.

    train_x / test_x: ``uint8`` ``(N, C, H, W)`` images (scaled to ``[0, 1]`` at
    load), or floating ``(N, F)`` / ``(N, C, H, W)`` values used as they are.
    train_y / test_y: integer class indices ``(N,)``; or floating targets ``(N, D)`` of a regression task
    (``num_classes`` is then the number of outputs D, the models' output size).
    normalise: standardise the inputs (per channel, on the training split); ``False`` keeps them as the
    loader gives them (the planted networks of :mod:`lth_sparse.planting` are built for the raw inputs).
    test_x and test_y are ``None`` when the dataset has no official test set; then
    ``load_dataset`` holds out ``held_out_test_fraction`` of the training set with a
    fixed seed, the same for every run.
    crop_padding / flip: the training augmentation (``RandomCropFlip``); none when
    ``crop_padding == 0`` and ``flip`` is false.
    """

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor | None
    test_y: Tensor | None
    num_classes: int
    crop_padding: int = 0
    flip: bool = False
    held_out_test_fraction: float = 0.2
    normalise: bool = True


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    augment: Augment | None = None,
    drop_last: bool = False,
    augment_generator: torch.Generator | None = None,
    with_index: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[Tensor, Tensor]] | Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(x, y)`` mini-batches of ``split``, on its device.

    With ``shuffle``, one random permutation of the indices (drawn from
    ``generator``, else torch's default generator) orders the epoch; without, the
    batches are views of consecutive examples. ``augment(x, g)``, when given,
    transforms each batch of inputs, drawing from ``g = augment_generator`` (default:
    ``generator``, so that one generator drives both, as it always has). The last
    batch is smaller than ``batch_size`` unless ``drop_last``.

    ``with_index``: yield ``(x, y, index)``, ``index`` the ``int64`` positions in
    ``split`` of the batch's examples, ``(len(y),)``, on the split's device.

    ``rank`` / ``world_size``: each batch of ``batch_size`` (the global batch, the same
    permutation on every rank) is cut into ``world_size`` consecutive shards, sizes
    as ``torch.tensor_split`` makes them (when ``world_size`` does not divide the
    batch, the first ``len % world_size`` shards hold one example more; a batch with
    fewer examples than ``world_size`` leaves the last shards empty), and this rank
    gets shard ``rank``. The augmentation runs on the whole global batch before the
    cut, so the examples of every shard are those a single process sees.

    Raises:
        ValueError: if ``batch_size < 1`` or ``rank`` is not in ``[0, world_size)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, world_size) with world_size >= 1, got rank={rank}, world_size={world_size}"
        )
    if augment_generator is None:
        augment_generator = generator
    n = len(split)
    stop = n - n % batch_size if drop_last else n
    order = None
    if shuffle:
        draw_on = generator.device if generator is not None else split.x.device
        order = torch.randperm(n, generator=generator, device=draw_on).to(split.x.device)
    for start in range(0, stop, batch_size):
        if order is None:
            x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
            index = None
        else:
            index = order[start : start + batch_size]
            x, y = split.x[index], split.y[index]
        if augment is not None:
            x = augment(x, augment_generator)
        if with_index and index is None:
            index = torch.arange(start, start + len(y), device=split.y.device)
        if world_size > 1:
            lo, hi = shard_bounds(len(y), rank, world_size)
            x, y = x[lo:hi], y[lo:hi]
            index = index[lo:hi] if index is not None else None
        yield (x, y, index) if with_index else (x, y)


def shard_bounds(batch: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)``: the positions in a batch of ``batch`` examples of shard ``rank`` of
    ``world_size``, as ``torch.tensor_split`` cuts it (the first ``batch % world_size``
    shards one example longer)."""
    size, extra = divmod(batch, world_size)
    lo = rank * size + min(rank, extra)
    return lo, lo + size + (rank < extra)


def hold_out_test(raw: RawDataset) -> RawDataset:
    """``raw`` with an explicit test set: its own, or (none official) the fixed held-out part of the training
    set: the last ``floor(N * held_out_test_fraction)`` of ``randperm(N)`` drawn with seed 0, so that it
    plays the part of an official one, the same whatever the run's seed."""
    if raw.test_x is not None and raw.test_y is not None:
        return raw
    n = len(raw.train_y)
    held_out = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    n_test = math.floor(n * raw.held_out_test_fraction)
    test_index, keep = held_out[n - n_test :], held_out[: n - n_test]
    return dataclasses.replace(
        raw,
        train_x=raw.train_x[keep],
        train_y=raw.train_y[keep],
        test_x=raw.train_x[test_index],
        test_y=raw.train_y[test_index],
    )


def _as_float(x: Tensor) -> Tensor:
    """A new float32 tensor (never the loader's own, which is normalised in place next)."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32, copy=True)


def _channel_dims(x: Tensor) -> tuple[int, ...]:
    # Images: statistics per channel (dim 1). Vectors: one statistic over all features.
    return (0, 2, 3) if x.dim() == 4 else tuple(range(x.dim()))


def _uint8_std_mean(x: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.std_mean(x / 255, dims, correction=0, keepdim=True)`` of a uint8 tensor, from a histogram per
    channel: the sums of the pixel values and of their squares are exact integers, so the statistics are
    exact up to one rounding (``std_mean`` sums 37 million float32 values of Fashion-MNIST; this counts them,
    ~6x faster on one thread). float32, on ``x``'s device, shaped as ``std_mean``'s with ``keepdim``."""
    channels = x.shape[1] if x.dim() == 4 else 1
    per_channel = x.transpose(0, 1).reshape(channels, -1) if x.dim() == 4 else x.reshape(1, -1)
    values = torch.arange(256, dtype=torch.int64)
    means, stds = [], []
    for row in per_channel:
        counts = torch.bincount(row, minlength=256).cpu()
        n, s1, s2 = int(counts.sum()), int((counts * values).sum()), int((counts * values * values).sum())
        means.append(s1 / (255 * n))
        stds.append(math.sqrt((s2 * n - s1 * s1) / (255 * 255 * n * n)))  # exact integers up to the division
    shape = (1, channels, 1, 1) if x.dim() == 4 else (1,) * x.dim()

    def as_tensor(values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float64).to(torch.float32).reshape(shape).to(x.device)

    return as_tensor(stds), as_tensor(means)


def split_and_normalise(
    name: str,
    raw: RawDataset,
    *,
    device: str | torch.device,
    val_fraction: float,
    seed: int,
    train_size: int | None,
) -> Dataset:
    """Turn a loader's ``RawDataset`` into a normalised, split ``Dataset`` on ``device``.

    The split is ``torch.utils.data.random_split(train, [1 - val_fraction,
    val_fraction], generator=torch.Generator().manual_seed(seed))``: the validation
    set is the last ``floor(N * val_fraction)`` indices of ``randperm(N)``.
    ``train_size`` keeps the first ``train_size`` examples of the (already random)
    training split, so smaller subsets are nested in larger ones. Mean and std are
    computed per channel on the whole training split (before ``train_size``, so
    the inputs do not change with it) and applied to all three splits. The
    augmentation pads with the normalised value of a black pixel.
    """
    raw = hold_out_test(raw)
    x_all, y_all = raw.train_x, raw.train_y
    test_x, test_y = raw.test_x, raw.test_y

    n = len(y_all)
    n_val = math.floor(n * val_fraction)
    n_train = n - n_val
    if n_train < 1:
        raise ValueError(f"val_fraction={val_fraction} leaves no training examples of the {n} in {name}")
    if train_size is not None and train_size > n_train:
        raise ValueError(
            f"train_size={train_size} is larger than the {n_train} training examples of {name} "
            f"(after holding out val_fraction={val_fraction})"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train_index, val_index = order[:n_train], order[n_train:]

    # Move the compact (often uint8) tensors, split them, then convert each split on the device: the
    # same values as converting first, without a float copy of the whole set and a second one of the
    # training split for its statistics (fresh pages of 150-190 MB cost ~70 ms each to fault in).
    x_all = x_all.to(device)
    target_dtype = torch.float32 if y_all.is_floating_point() else torch.int64  # a regression keeps its values
    y_all = y_all.to(device=device, dtype=target_dtype)
    train_index, val_index = train_index.to(device), val_index.to(device)
    train_raw = x_all[train_index]
    if train_raw.dtype == torch.uint8:  # the statistics of x / 255, from the pixel values' histogram
        std, mean = _uint8_std_mean(train_raw)
    train_x, val_x = _as_float(train_raw), _as_float(x_all[val_index])
    del train_raw
    test_x = _as_float(test_x.to(device))
    test_y = test_y.to(device=device, dtype=target_dtype)

    if not raw.normalise:  # the inputs as the loader made them
        mean = torch.zeros((1,) * train_x.dim(), device=train_x.device)
        std = torch.ones_like(mean)
    elif x_all.dtype != torch.uint8:
        std, mean = torch.std_mean(train_x, dim=_channel_dims(train_x), correction=0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel is left unscaled
    if raw.normalise:
        for x in (train_x, val_x, test_x):
            x.sub_(mean).div_(std)

    train_y = y_all[train_index]
    if train_size is not None and train_size < len(train_y):
        train_x, train_y = train_x[:train_size].clone(), train_y[:train_size].clone()
    train = Split(train_x, train_y)
    val = Split(val_x, y_all[val_index])
    test = Split(test_x, test_y)
    mean_t, std_t = mean.flatten().cpu(), std.flatten().cpu()
    augment = None
    if raw.crop_padding > 0 or raw.flip:
        augment = RandomCropFlip(raw.crop_padding, raw.flip, fill=-mean_t / std_t)
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=raw.num_classes,
        input_shape=tuple(train.x.shape[1:]),
        augment=augment,
        mean=tuple(mean_t.tolist()),
        std=tuple(std_t.tolist()),
    )
