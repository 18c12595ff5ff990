"""Datasets read through torchvision's own dataset classes.

Each is opened once per split with ``download=download`` into ``data_dir``, in
torchvision's on-disk layout, and its whole array (``.data`` / ``.targets``, or
``.labels`` for SVHN) is converted to tensors at once: no per-image loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .dataset import RawDataset
from .registry import DownloadError, register_dataset

__all__: list[str] = []

# torchvision's class for each dataset, and where its files live under data_dir.
_CLASSES = {
    "mnist": "MNIST",
    "kmnist": "KMNIST",
    "emnist": "EMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "svhn": "SVHN",
}
_LAYOUT = {
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "kmnist": "KMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "emnist": "EMNIST/raw/emnist-balanced-{train,test}-{images-idx3,labels-idx1}-ubyte",
    "cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    "cifar100": "cifar-100-python/{train,test,meta}",
    "svhn": "{train,test}_32x32.mat",
}


def _open(name: str, data_dir: Path, download: bool, train: bool, **options: Any) -> Any:
    """torchvision's dataset object for one split of ``name``, with errors that say what to do."""
    try:
        import torchvision.datasets as tv
    except ImportError as error:
        raise ImportError(f"dataset {name!r} needs torchvision: pip install 'lth_sparse[data]'") from error
    split = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
    try:
        return getattr(tv, _CLASSES[name])(str(data_dir), download=download, **split, **options)
    except (RuntimeError, OSError) as error:
        which = "training" if train else "test"
        where = f"{data_dir}/{_LAYOUT[name]}"
        if download:
            raise DownloadError(
                f"could not download the {which} set of {name} into {data_dir}: {error}\n"
                f"Run once on a machine that is online, or put the files at {where} "
                "(torchvision's layout) and pass that folder as data_dir / --data-dir."
            ) from error
        raise FileNotFoundError(
            f"the {which} set of {name} was not found under {data_dir} (torchvision: {error}); "
            f"expected {where}. Pass download=True on a machine that is online, or point "
            "data_dir / --data-dir at the folder that holds it."
        ) from error


def _labels(values: Any) -> Tensor:
    return torch.as_tensor(np.asarray(values), dtype=torch.int64)


def _mnist_like(
    name: str, data_dir: Path, download: bool, num_classes: int, transpose: bool = False, **options: Any
) -> RawDataset:
    sets = [_open(name, data_dir, download, train, **options) for train in (True, False)]
    images = []
    for s in sets:
        x = torch.as_tensor(s.data)  # (N, H, W) uint8
        if transpose:
            x = x.transpose(1, 2)
        images.append(x.unsqueeze(1).contiguous())
    return RawDataset(
        train_x=images[0],
        train_y=_labels(sets[0].targets),
        test_x=images[1],
        test_y=_labels(sets[1].targets),
        num_classes=num_classes,
    )


@register_dataset("mnist")
def load_mnist(data_dir: Path, download: bool) -> RawDataset:
    """MNIST: 60,000 / 10,000 images, (1, 28, 28), 10 classes."""
    return _mnist_like("mnist", data_dir, download, 10)


@register_dataset("kmnist")
def load_kmnist(data_dir: Path, download: bool) -> RawDataset:
    """Kuzushiji-MNIST: 60,000 / 10,000 images, (1, 28, 28), 10 classes."""
    return _mnist_like("kmnist", data_dir, download, 10)


@register_dataset("emnist")
def load_emnist(data_dir: Path, download: bool) -> RawDataset:
    """EMNIST, balanced split: 112,800 / 18,800 images, (1, 28, 28), 47 classes.

    EMNIST's files store each image transposed; they are turned upright here so
    that EMNIST digits look like MNIST's (which matters when tickets are
    transferred between the two).
    """
    return _mnist_like("emnist", data_dir, download, 47, transpose=True, split="balanced")


def _cifar(name: str, data_dir: Path, download: bool, num_classes: int) -> RawDataset:
    sets = [_open(name, data_dir, download, train) for train in (True, False)]
    # torchvision holds CIFAR as (N, H, W, C) uint8.
    images = [torch.from_numpy(np.ascontiguousarray(s.data)).permute(0, 3, 1, 2).contiguous() for s in sets]
    return RawDataset(
        train_x=images[0],
        train_y=_labels(sets[0].targets),
        test_x=images[1],
        test_y=_labels(sets[1].targets),
        num_classes=num_classes,
        crop_padding=4,
        flip=True,
    )


@register_dataset("cifar10")
def load_cifar10(data_dir: Path, download: bool) -> RawDataset:
    """CIFAR-10: 50,000 / 10,000 images, (3, 32, 32), 10 classes; random crop
    (4-pixel padding) and horizontal flip for training."""
    return _cifar("cifar10", data_dir, download, 10)


@register_dataset("cifar100")
def load_cifar100(data_dir: Path, download: bool) -> RawDataset:
    """CIFAR-100 (fine labels): 50,000 / 10,000 images, (3, 32, 32), 100 classes;
    random crop (4-pixel padding) and horizontal flip for training."""
    return _cifar("cifar100", data_dir, download, 100)


@register_dataset("svhn")
def load_svhn(data_dir: Path, download: bool) -> RawDataset:
    """SVHN (without the ``extra`` set): 73,257 / 26,032 images, (3, 32, 32), 10
    classes (torchvision maps the label 10 of digit 0 to 0); random crop with
    4-pixel padding for training."""
    sets = [_open("svhn", data_dir, download, train) for train in (True, False)]
    # torchvision holds SVHN as (N, C, H, W) uint8 already.
    images = [torch.from_numpy(np.ascontiguousarray(s.data)) for s in sets]
    return RawDataset(
        train_x=images[0],
        train_y=_labels(sets[0].labels),
        test_x=images[1],
        test_y=_labels(sets[1].labels),
        num_classes=10,
        crop_padding=4,
        # No horizontal flip: a flipped digit is a different symbol (2 and 5, a
        # mirrored 3), so flipping would teach the wrong labels.
        flip=False,
    )
