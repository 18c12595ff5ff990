"""The dataset registry and ``load_dataset``.

A registered loader is ``loader(data_dir: Path, download: bool) -> RawDataset``: it
finds (or downloads) the official sets and returns them as compact tensors;
``load_dataset`` does the rest the same way for every dataset (seeded split,
normalisation, device, augmentation).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from .dataset import Dataset, RawDataset, split_and_normalise

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "available_datasets",
    "default_data_dir",
    "load_dataset",
    "register_dataset",
]

Loader = Callable[[Path, bool], RawDataset]

DATASETS: dict[str, Loader] = {}
DEFAULT_DATASET = "fashion-mnist"


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(data_dir, download) -> RawDataset`` under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def decorate(loader: Loader) -> Loader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = loader
        return loader

    return decorate


def available_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(DATASETS)


def default_data_dir() -> Path:
    """Where datasets are looked for and downloaded when no ``data_dir`` is given:
    ``$LTH_SPARSE_DATA`` if set, else ``~/.cache/lth_sparse/data``."""
    env = os.environ.get("LTH_SPARSE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lth_sparse" / "data"


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    val_fraction: float = 0.2,
    seed: int = 0,
    train_size: int | None = None,
    download: bool = True,
) -> Dataset:
    """Load a registered dataset as normalised tensors on ``device``.

    - ``train`` / ``val``: a seeded split of the official training set,
      ``1 - val_fraction`` / ``val_fraction`` (``val_fraction=0``: empty ``val``),
      as ``torch.utils.data.random_split`` with ``Generator().manual_seed(seed)``
      makes it; the same ``seed`` gives the same split.
    - ``test``: the official test set (datasets without one hold out a fixed part of
      the training set; see each loader).
    - ``train_size``: keep a seeded subset of that many training examples (quick runs).
    - Normalisation: per-channel mean and std computed on the training split.
    - ``augment``: the dataset's training augmentation on tensors, or ``None``.

    ``data_dir`` defaults to ``default_data_dir()``; ``download=False`` never
    touches the network.

    Raises:
        ValueError: unknown ``name`` (the message lists the available ones), or a bad
            ``val_fraction`` or ``train_size``.
        FileNotFoundError / RuntimeError: the data is neither on disk nor
            downloadable; the message says how to get it.
    """
    key = name.strip().lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1):
        raise ValueError(f"train_size must be a positive integer or None, got {train_size!r}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    raw = DATASETS[key](root, download)
    return split_and_normalise(
        key,
        raw,
        device=device,
        val_fraction=float(val_fraction),
        seed=seed,
        train_size=train_size,
    )
