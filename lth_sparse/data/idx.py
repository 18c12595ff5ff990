"""Reader and writer for the IDX format of (Fashion-)MNIST, KMNIST and EMNIST.

An IDX file is: two zero bytes, a type code byte, a byte with the number of
dimensions ``d``, then ``d`` big-endian uint32 sizes, then the values, big-endian,
in C order. The files are often gzipped; the reader recognises gzip by its magic
bytes, whatever the file is called.
"""

from __future__ import annotations

import gzip
import math
import os
import struct

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_idx", "write_idx"]

# IDX type code -> numpy dtype as stored on disk (big-endian).
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike) -> Tensor:
    """Read one IDX file (gzipped or not) into a CPU tensor of its shape.

    Returns a tensor of the stored dtype (``uint8`` for the image and label files
    of the MNIST family), e.g. ``(60000, 28, 28)`` for ``train-images-idx3-ubyte``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not IDX (bad magic, unknown type code) or its
            length does not match the sizes in its header.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{os.fspath(path)}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{os.fspath(path)}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{os.fspath(path)}: IDX header truncated")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    if len(raw) != header + count * dtype.itemsize:
        raise ValueError(
            f"{os.fspath(path)}: IDX header says shape {dims} ({header + count * dtype.itemsize} bytes), "
            f"file has {len(raw)} bytes"
        )
    values = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    # astype to native byte order also makes the array writable (frombuffer on bytes is not).
    return torch.from_numpy(values.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str | os.PathLike, values: Tensor | np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``values`` as an IDX file; gzipped when ``compress`` is true
    (default: when ``path`` ends in ``.gz``).

    Raises:
        ValueError: for a dtype IDX cannot hold or more than 255 dimensions.
    """
    array = values.cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    code, dtype = next(((c, d) for c, d in _IDX_DTYPES.items() if array.dtype == d.newbyteorder("=")), (None, None))
    if code is None:
        raise ValueError(
            f"IDX cannot store dtype {array.dtype}; use one of uint8, int8, int16, int32, float32, float64"
        )
    if array.ndim > 255:
        raise ValueError(f"IDX stores at most 255 dimensions, got {array.ndim}")
    payload = (
        bytes([0, 0, code, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + np.ascontiguousarray(array, dtype=dtype).tobytes()
    )
    if compress is None:
        compress = os.fspath(path).endswith(".gz")
    with open(path, "wb") as f:
        f.write(gzip.compress(payload, compresslevel=1) if compress else payload)
