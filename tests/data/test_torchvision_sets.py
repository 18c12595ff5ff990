"""The torchvision-backed datasets, on tiny files written here in each dataset's real
on-disk format, loaded with download=False (no network)."""

import os
import pickle

import numpy as np
import pytest
import torch

from lth_sparse.data import load_dataset, write_idx

datasets = pytest.importorskip("torchvision.datasets")

N_TRAIN, N_TEST = 20, 8


def undo_normalisation(data, x):
    """Back to uint8 pixels: x * std + mean per channel, on the [0, 1] scale, times 255."""
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


@pytest.fixture
def skip_md5(monkeypatch):
    """CIFAR and SVHN check each file's md5 against the real release; tiny files cannot
    match, so only that check is replaced (existence is still checked)."""

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    monkeypatch.setattr(datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(datasets.svhn, "check_integrity", exists)


def write_mnist_family(raw, names, num_classes, rng):
    raw.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[split] = (images, (np.arange(n) % num_classes).astype(np.uint8))
        write_idx(raw / names[split][0], arrays[split][0])
        write_idx(raw / names[split][1], arrays[split][1])
    return arrays


MNIST_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("kmnist", "KMNIST")])
def test_mnist_and_kmnist_load_from_torchvisions_layout(tmp_path, name, folder):
    arrays = write_mnist_family(tmp_path / folder / "raw", MNIST_NAMES, 10, np.random.default_rng(0))
    data = load_dataset(name, data_dir=tmp_path, download=False)
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, N_TEST)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10 and data.augment is None
    assert torch.equal(undo_normalisation(data, data.test.x)[:, 0], torch.from_numpy(arrays["test"][0]))
    assert data.test.y.tolist() == arrays["test"][1].tolist()


def test_emnist_balanced_has_47_classes_and_upright_images(tmp_path):
    names = {
        split: (f"emnist-balanced-{split}-images-idx3-ubyte", f"emnist-balanced-{split}-labels-idx1-ubyte")
        for split in ("train", "test")
    }
    arrays = write_mnist_family(tmp_path / "EMNIST" / "raw", names, 47, np.random.default_rng(1))
    data = load_dataset("emnist", data_dir=tmp_path, download=False)
    assert data.num_classes == 47 and data.input_shape == (1, 28, 28)
    # EMNIST stores images transposed; they come out transposed back.
    expected = torch.from_numpy(arrays["test"][0]).transpose(1, 2)
    assert torch.equal(undo_normalisation(data, data.test.x)[:, 0], expected)


def write_cifar(folder, files, label_key, meta_name, meta_key, num_classes, rng):
    folder.mkdir(parents=True)
    written = {}
    for file_name, n in files:
        images = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)  # rows: R plane, G plane, B plane
        labels = [int(v) for v in rng.integers(0, num_classes, n)]
        with open(folder / file_name, "wb") as f:
            pickle.dump({"data": images, label_key: labels}, f)
        written[file_name] = (images.reshape(n, 3, 32, 32), labels)
    with open(folder / meta_name, "wb") as f:
        pickle.dump({meta_key: [f"class{i}" for i in range(num_classes)]}, f)
    return written


def test_cifar10_loads_its_five_batches_as_nchw(tmp_path, skip_md5):
    files = [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", N_TEST)]
    written = write_cifar(
        tmp_path / "cifar-10-batches-py", files, "labels", "batches.meta", "label_names", 10, np.random.default_rng(2)
    )
    data = load_dataset("cifar10", data_dir=tmp_path, download=False, val_fraction=0.25)
    assert (len(data.train), len(data.val), len(data.test)) == (15, 5, N_TEST)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert len(data.mean) == 3 and len(data.std) == 3
    images, labels = written["test_batch"]
    assert torch.equal(undo_normalisation(data, data.test.x), torch.from_numpy(images))
    assert data.test.y.tolist() == labels
    assert data.augment is not None and data.augment.padding == 4 and data.augment.flip


def test_cifar100_uses_the_fine_labels(tmp_path, skip_md5):
    files = [("train", N_TRAIN), ("test", N_TEST)]
    written = write_cifar(
        tmp_path / "cifar-100-python", files, "fine_labels", "meta", "fine_label_names", 100, np.random.default_rng(3)
    )
    data = load_dataset("cifar100", data_dir=tmp_path, download=False)
    assert data.num_classes == 100 and (len(data.train), len(data.test)) == (16, N_TEST)
    assert data.test.y.tolist() == written["test"][1]
    assert torch.equal(undo_normalisation(data, data.test.x), torch.from_numpy(written["test"][0]))
    assert data.augment.flip


def test_svhn_maps_label_10_to_0_and_crops_without_flipping(tmp_path, skip_md5):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(4)
    written = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # the .mat layout: H, W, C, N
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # digit 0 is stored as 10
        scipy_io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = (x, y)
    data = load_dataset("svhn", data_dir=tmp_path, download=False)
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    x, y = written["test"]
    assert data.test.y.tolist() == [int(v) % 10 for v in y[:, 0]]
    assert torch.equal(undo_normalisation(data, data.test.x), torch.from_numpy(x).permute(3, 2, 0, 1))
    assert data.augment.padding == 4 and not data.augment.flip


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mnist", "MNIST/raw"),
        ("kmnist", "KMNIST/raw"),
        ("emnist", "EMNIST/raw/emnist-balanced"),
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("svhn", "_32x32.mat"),
    ],
)
def test_a_missing_dataset_says_where_it_was_expected(tmp_path, name, expected):
    with pytest.raises(FileNotFoundError, match="download=True") as error:
        load_dataset(name, data_dir=tmp_path, download=False)
    assert expected in str(error.value) and str(tmp_path) in str(error.value)
