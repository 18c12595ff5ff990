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

from lth_sparse.registry import Registry

from .dataset import Dataset, RawDataset, split_and_normalise
from .derived import OPTIONS, canonical_name, derive, parse_task

__all__ = [
    "DATASETS",
    "DownloadError",
    "available_datasets",
    "default_data_dir",
    "load_dataset",
    "register_dataset",
]

Loader = Callable[[Path, bool], RawDataset]


class DownloadError(RuntimeError):
    """A dataset is not on disk and could not be downloaded; the message says how to get it."""


DATASETS: Registry[Loader] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(data_dir, download) -> RawDataset`` under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.
    """
    return DATASETS.register(name)


def available_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return DATASETS.names()


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
    - ``name`` may be a derived task, ``NAME:OPTION=VALUE[:...]`` (``fashion-mnist:half=a``,
      ``digits:shape=1x28x28``, ``mnist:classes=0,1,2``, ``kmnist:permute=1``): see
      :mod:`lth_sparse.data.derived`.

    ``data_dir`` defaults to ``default_data_dir()``; ``download=False`` never
    touches the network.

    Raises:
        ValueError: unknown ``name`` (the message lists the available ones), or a bad
            ``val_fraction`` or ``train_size``.
        FileNotFoundError / DownloadError (a RuntimeError): the data is neither on
            disk nor downloadable; the message says how to get it. Folders that the
            failed attempt created and left empty are removed.
    """
    key, options = parse_task(name)
    loader = DATASETS.lookup(
        key, "" if options else " (and derived tasks NAME:OPTION=VALUE, options: " + ", ".join(OPTIONS) + ")"
    )
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1):
        raise ValueError(f"train_size must be a positive integer or None, got {train_size!r}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    before = _folders(root)
    try:
        raw = loader(root, download)
    except BaseException:
        _remove_new_empty_folders(root, before)  # a failed download leaves no empty MNIST/raw behind
        raise
    return split_and_normalise(
        canonical_name(name) if options else key,
        derive(raw, options, name),
        device=device,
        val_fraction=float(val_fraction),
        seed=seed,
        train_size=train_size,
    )


_FOLDER_DEPTH = 3  # deep enough for every loader's layout (MNIST/raw, tiny-imagenet-200/train/<class>)


def _folders(root: Path) -> set[Path] | None:
    """The folders under ``root`` down to ``_FOLDER_DEPTH`` levels; ``None`` if ``root`` does not exist."""
    if not root.is_dir():
        return None
    found, level = set(), [root]
    for _ in range(_FOLDER_DEPTH):
        level = [child for folder in level for child in _subfolders(folder)]
        found.update(level)
    return found


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [child for child in folder.iterdir() if child.is_dir() and not child.is_symlink()]
    except OSError:
        return []


def _remove_new_empty_folders(root: Path, before: set[Path] | None) -> None:
    """Remove the folders that are empty now and were not there in ``before`` (deepest first)."""
    after = _folders(root)
    if after is None:
        return
    new = sorted(after - (before or set()), key=lambda p: len(p.parts), reverse=True)
    if before is None:
        new.append(root)
    for folder in new:
        try:
            folder.rmdir()  # only succeeds on an empty folder
        except OSError:
            pass
