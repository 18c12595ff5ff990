"""Fashion-MNIST (Xiao et al., 2017), the default dataset.

Looked for, in order:
1. in ``data_dir``: the four raw IDX files, gzipped or not, either directly there
   or under ``data_dir/FashionMNIST/raw`` (torchvision's layout);
2. in ``/usr/share/datasets/fashion-mnist``, where Debian's package
   ``dataset-fashion-mnist`` installs them;
3. downloaded by torchvision into ``data_dir`` (when ``download``).
The files are parsed by our own IDX reader, so the first two need no torchvision.
"""

from __future__ import annotations

from pathlib import Path

from .dataset import RawDataset
from .idx import read_idx
from .registry import DownloadError, register_dataset

__all__ = ["DEBIAN_FASHION_MNIST_DIR", "FASHION_MNIST_FILES", "find_fashion_mnist"]

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _files_in(folder: Path) -> dict[str, Path] | None:
    """The four files in ``folder`` (each plain or ``.gz``), or None if any is missing."""
    found = {}
    for key, stem in FASHION_MNIST_FILES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def find_fashion_mnist(data_dir: Path, debian_dir: Path | None = None) -> dict[str, Path] | None:
    """Paths of the four Fashion-MNIST IDX files in the first folder that has all of
    them (``data_dir``, ``data_dir/FashionMNIST/raw``, Debian's folder), or None."""
    debian_dir = DEBIAN_FASHION_MNIST_DIR if debian_dir is None else debian_dir
    for folder in (data_dir, data_dir / "FashionMNIST" / "raw", debian_dir):
        files = _files_in(folder)
        if files is not None:
            return files
    return None


def _how_to_get_it(data_dir: Path) -> str:
    return (
        "Fashion-MNIST was not found. Any one of these works:\n"
        "  - on Debian/Ubuntu: apt install dataset-fashion-mnist (installs it in "
        f"{DEBIAN_FASHION_MNIST_DIR});\n"
        "  - put train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        "t10k-labels-idx1-ubyte (gzipped or not) in a folder and pass it as --data-dir / data_dir "
        f"(looked in {data_dir} and {data_dir / 'FashionMNIST' / 'raw'});\n"
        "  - run once on a machine that is online with downloads allowed (torchvision fetches it "
        "into the data dir)."
    )


@register_dataset("fashion-mnist")
def load_fashion_mnist(data_dir: Path, download: bool) -> RawDataset:
    """Fashion-MNIST: 60,000 training and 10,000 test images, (1, 28, 28), 10 classes."""
    files = find_fashion_mnist(data_dir)
    if files is None and download:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(root=str(data_dir), train=True, download=True)
        except Exception as error:  # offline (URLError, RuntimeError) or no torchvision
            raise DownloadError(f"{_how_to_get_it(data_dir)}\nThe download failed: {error}") from error
        files = find_fashion_mnist(data_dir)
    if files is None:
        raise FileNotFoundError(_how_to_get_it(data_dir) + ("" if download else "\n(download=False)"))
    tensors = {key: read_idx(path) for key, path in files.items()}
    return RawDataset(
        train_x=tensors["train_x"].unsqueeze(1),
        train_y=tensors["train_y"].long(),
        test_x=tensors["test_x"].unsqueeze(1),
        test_y=tensors["test_y"].long(),
        num_classes=10,
    )
