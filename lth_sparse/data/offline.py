"""Datasets that need no download: scikit-learn's digits, MNIST-1D and Plant 'n' Seek's circle, relu and helix."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .cache import cached_tensors
from .dataset import RawDataset
from .registry import register_dataset

__all__: list[str] = []


@register_dataset("digits")
def load_digits(data_dir: Path, download: bool) -> RawDataset:
    """scikit-learn's 8x8 handwritten digits (UCI): 1,797 images, (1, 8, 8), 10 classes.

    The set ships with scikit-learn, offline. It has no official test split, so a
    fixed 20% (359 images, chosen with seed 0 whatever the run's seed) is held out
    as the test set; ``val_fraction`` then splits the remaining 1,438.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise ImportError("dataset 'digits' needs scikit-learn: pip install 'lth_sparse[data]'") from error
    digits = sklearn_digits()
    # Pixel values are 0..16; divide so that mean/std are reported on a [0, 1] scale.
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return RawDataset(
        train_x=images,
        train_y=torch.as_tensor(digits.target, dtype=torch.int64),
        test_x=None,
        test_y=None,
        num_classes=10,
        held_out_test_fraction=0.2,
    )


def _generate_mnist1d() -> dict[str, torch.Tensor]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise ImportError("dataset 'mnist1d' needs the mnist1d package: pip install 'lth_sparse[data]'") from error
    # make_dataset seeds Python's and NumPy's global generators; restore them so that
    # loading data does not change the caller's random streams.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {
        "train_x": torch.as_tensor(data["x"], dtype=torch.float32),
        "train_y": torch.as_tensor(data["y"], dtype=torch.int64),
        "test_x": torch.as_tensor(data["x_test"], dtype=torch.float32),
        "test_y": torch.as_tensor(data["y_test"], dtype=torch.int64),
    }


@register_dataset("mnist1d")
def load_mnist1d(data_dir: Path, download: bool) -> RawDataset:
    """MNIST-1D (Greydanus, 2020): 4,000 training and 1,000 test vectors of 40
    values, 10 classes.

    Generated offline by the ``mnist1d`` package's ``make_dataset`` with its
    default arguments (which fix its own seed, 42, so the data are the standard
    MNIST-1D), and cached under ``data_dir`` after the first time (generation
    takes a few seconds). The package's own 80/20 train/test split is the
    official one.
    """
    tensors = cached_tensors(data_dir, "mnist1d-default-v1", _generate_mnist1d)
    return RawDataset(
        train_x=tensors["train_x"],
        train_y=tensors["train_y"],
        test_x=tensors["test_x"],
        test_y=tensors["test_y"],
        num_classes=10,
    )


def _planting(task: str) -> RawDataset:
    from lth_sparse.planting.tasks import planting_data

    data = planting_data(task)
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    outputs = data["num_classes"] if data["kind"] == "classification" else data["num_outputs"]
    return RawDataset(
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, num_classes=outputs, normalise=False
    )


@register_dataset("circle")
def load_circle(data_dir: Path, download: bool) -> RawDataset:
    """Plant 'n' Seek's Circle task (Fischer & Burkholz, 2022, Appendix B.1): 10,000 points uniform in
    ``[-1, 1]^2``, 4 classes by the ring of their squared radius (boundaries 0.2, 0.5, 0.7), about 1% of the
    labels flipped to an adjacent ring; the fixed 90/10 split of :func:`lth_sparse.planting.planting_data`
    (data seed 0) gives the 9,000 training and 1,000 test points, the same for every run. Generated offline,
    nothing is stored; the inputs are not standardised (the planted networks are built for the raw inputs)."""
    return _planting("circle")


@register_dataset("relu")
def load_relu(data_dir: Path, download: bool) -> RawDataset:
    """Plant 'n' Seek's ReLU task (Appendix B.1): ``y = ReLU(x)`` on 10,000 points uniform in [-1, 1], plus
    N(0, 0.01^2) noise; a regression (float targets ``(N, 1)``, trained with the mean squared error by default);
    inputs not standardised."""
    return _planting("relu")


@register_dataset("helix")
def load_helix(data_dir: Path, download: bool) -> RawDataset:
    """Plant 'n' Seek's Helix task (Appendix B.1): the 3-D helix of x uniform in [-1, 1], plus N(0, 0.01^2)
    noise; a regression (float targets ``(N, 3)``); inputs not standardised."""
    return _planting("helix")
