"""Datasets held as tensors on the training device.

    from lth_sparse.data import load_dataset, batches
    data = load_dataset("fashion-mnist", device="cuda", seed=0)
    for x, y in batches(data.train, 128, shuffle=True, generator=g, augment=data.augment):
        ...

Registered: ``fashion-mnist`` (the default), ``mnist``, ``kmnist``, ``emnist``
(balanced), ``cifar10``, ``cifar100``, ``svhn``, ``tiny-imagenet`` (image folder),
``digits`` (scikit-learn), ``mnist1d``, and Plant 'n' Seek's generated tasks ``circle`` (4 classes)
and the regressions ``relu`` and ``helix`` (float targets, raw inputs). Add one with ``@register_dataset(name)``
on a ``loader(data_dir, download) -> RawDataset``.
"""

from . import fashion_mnist, offline, tiny_imagenet, torchvision_sets  # noqa: F401  (register the loaders)
from .augment import RandomCropFlip
from .dataset import Dataset, RawDataset, Split, batches
from .idx import read_idx, write_idx
from .registry import (
    DATASETS,
    DownloadError,
    available_datasets,
    default_data_dir,
    load_dataset,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "Dataset",
    "DownloadError",
    "RandomCropFlip",
    "RawDataset",
    "Split",
    "available_datasets",
    "batches",
    "default_data_dir",
    "load_dataset",
    "read_idx",
    "register_dataset",
    "write_idx",
]
