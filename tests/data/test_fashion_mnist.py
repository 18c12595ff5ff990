"""Where Fashion-MNIST is looked for: data_dir (flat or torchvision's layout, gzipped or
not), Debian's package, a download; and the error when it is nowhere."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from lth_sparse.data import fashion_mnist, load_dataset, write_idx

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def write_tiny_fashion_mnist(folder: Path, compressed: bool, n_train=50, n_test=20, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(folder / (name + (".gz" if compressed else "")), array)
    return arrays


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "not-installed")


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("compressed", [False, True])
def test_fashion_mnist_is_read_from_data_dir(tmp_path, no_debian, layout, compressed):
    data_dir = tmp_path / "data"
    folder = data_dir if layout == "flat" else data_dir / "FashionMNIST" / "raw"
    arrays = write_tiny_fashion_mnist(folder, compressed)
    data = load_dataset("fashion-mnist", data_dir=data_dir, download=False)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 20)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    # The test set keeps its order: undo the normalisation and compare with the files.
    raw_test = (data.test.x * data.std[0] + data.mean[0]) * 255
    assert torch.equal(raw_test.round().to(torch.uint8)[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert data.test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_data_dir_comes_before_debians_copy(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    write_tiny_fashion_mnist(debian, compressed=True, n_train=30, seed=1)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", debian)
    write_tiny_fashion_mnist(tmp_path / "mine", compressed=False, n_train=60)
    assert len(load_dataset("fashion-mnist", data_dir=tmp_path / "mine", download=False, val_fraction=0).train) == 60
    # With nothing in data_dir, Debian's folder is used.
    assert len(load_dataset("fashion-mnist", data_dir=tmp_path / "empty", download=False, val_fraction=0).train) == 30


def test_a_partial_copy_in_data_dir_is_skipped(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    write_tiny_fashion_mnist(debian, compressed=True, n_train=30)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", debian)
    write_tiny_fashion_mnist(tmp_path / "mine", compressed=False, n_train=60)
    (tmp_path / "mine" / "t10k-labels-idx1-ubyte").unlink()
    assert len(load_dataset("fashion-mnist", data_dir=tmp_path / "mine", download=False, val_fraction=0).train) == 30


def test_missing_fashion_mnist_gives_an_error_that_says_how_to_get_it(tmp_path, no_debian):
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("fashion-mnist", data_dir=tmp_path / "empty", download=False)
    message = str(error.value)
    assert "apt install dataset-fashion-mnist" in message
    assert "--data-dir" in message and "online" in message
    assert str(tmp_path / "empty") in message


def test_a_failed_download_gives_the_same_advice(tmp_path, no_debian, monkeypatch):
    datasets = pytest.importorskip("torchvision.datasets")

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: network unreachable")

    monkeypatch.setattr(datasets.FashionMNIST, "download", offline)
    with pytest.raises(RuntimeError, match="(?s)apt install dataset-fashion-mnist.*network unreachable"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "empty", download=True)


@pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_the_real_fashion_mnist_from_debian(tmp_path):
    data = load_dataset("fashion-mnist", data_dir=tmp_path / "empty", download=False)
    assert (len(data.train), len(data.val), len(data.test)) == (48000, 12000, 10000)
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)
    assert data.train.x.shape == (48000, 1, 28, 28) and data.train.x.dtype == torch.float32
    labels = torch.cat([data.train.y, data.val.y])
    assert torch.bincount(labels).tolist() == [6000] * 10
    assert torch.bincount(data.test.y).tolist() == [1000] * 10
    # The well-known statistics of Fashion-MNIST's training images: mean 0.286, std 0.353.
    assert data.mean[0] == pytest.approx(0.286, abs=0.002) and data.std[0] == pytest.approx(0.353, abs=0.002)
    # The first test image of the official file, read independently.
    with gzip.open(DEBIAN / "t10k-images-idx3-ubyte.gz") as f:
        first = np.frombuffer(f.read()[16 : 16 + 784], dtype=np.uint8).reshape(28, 28)
    raw = ((data.test.x[0, 0] * data.std[0] + data.mean[0]) * 255).round().to(torch.uint8)
    assert torch.equal(raw, torch.from_numpy(first.copy()))


def test_the_default_data_dir_comes_from_lth_sparse_data(tmp_path, no_debian, monkeypatch):
    from lth_sparse.data import default_data_dir

    write_tiny_fashion_mnist(tmp_path / "env" / "FashionMNIST" / "raw", compressed=True, n_train=25)
    monkeypatch.setenv("LTH_SPARSE_DATA", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    assert len(load_dataset("fashion-mnist", download=False, val_fraction=0).train) == 25
    monkeypatch.delenv("LTH_SPARSE_DATA")
    assert default_data_dir() == Path.home() / ".cache" / "lth_sparse" / "data"
