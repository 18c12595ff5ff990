"""The IDX reader (MNIST-family file format), on files written here byte by byte."""

import gzip
import struct

import numpy as np
import pytest
import torch

from lth_sparse.data import read_idx, write_idx


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    """An IDX file assembled by hand: magic (0, 0, type, ndim), big-endian sizes, big-endian values."""
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    return bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + big_endian.tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_reads_uint8_images_plain_and_gzipped(tmp_path, compressed):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    payload = idx_bytes(images, 0x08)
    path = tmp_path / "images-idx3-ubyte"  # no .gz suffix: gzip is recognised by its magic bytes
    path.write_bytes(gzip.compress(payload) if compressed else payload)
    got = read_idx(path)
    assert got.dtype == torch.uint8
    assert got.shape == (5, 28, 28)
    assert torch.equal(got, torch.from_numpy(images))


def test_read_idx_reads_big_endian_multibyte_types(tmp_path):
    values = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int32)
    path = tmp_path / "ints.idx"
    path.write_bytes(idx_bytes(values, 0x0C))
    assert torch.equal(read_idx(path), torch.from_numpy(values))
    floats = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    path.write_bytes(idx_bytes(floats, 0x0D))
    assert torch.equal(read_idx(path), torch.from_numpy(floats))


def test_read_idx_labels_are_one_dimensional(tmp_path):
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(labels, 0x08)))
    assert read_idx(path).tolist() == [3, 1, 4, 1, 5, 9]


def test_read_idx_agrees_with_torchvisions_reader(tmp_path):
    mnist = pytest.importorskip("torchvision.datasets.mnist")
    images = np.random.default_rng(1).integers(0, 256, size=(7, 4, 3), dtype=np.uint8)
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(idx_bytes(images, 0x08))
    assert torch.equal(read_idx(path), mnist.read_image_file(str(path)))


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float64])
def test_write_idx_then_read_idx_round_trips(tmp_path, name, dtype):
    values = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype) if dtype != np.uint8 else np.arange(24, dtype=np.uint8)
    path = tmp_path / name
    write_idx(path, torch.from_numpy(values))
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    assert torch.equal(read_idx(path), torch.from_numpy(values))


def test_read_idx_rejects_a_file_that_is_not_idx(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)


def test_read_idx_rejects_a_truncated_file(tmp_path):
    payload = idx_bytes(np.zeros((4, 2, 2), dtype=np.uint8), 0x08)
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(payload[:-3])
    with pytest.raises(ValueError, match="shape"):
        read_idx(path)


def test_write_idx_rejects_dtypes_idx_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        write_idx(tmp_path / "x.idx", np.zeros(3, dtype=np.int64))
