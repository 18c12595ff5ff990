"""Tolerances per dtype, in one table (absolute, relative), and the float32 precision the tolerances assume."""

import contextlib

import torch

TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
}


def assert_close(actual, expected, dtype=None, scale: float = 1.0):
    """``torch.testing.assert_close`` with this table's tolerances for ``dtype``, widened by ``scale``."""
    tol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, atol=tol["atol"] * scale, rtol=tol["rtol"] * scale)


@contextlib.contextmanager
def full_precision_float32():
    """TF32 off for cuBLAS and cuDNN inside the block, each setting restored as it was.

    Saved and restored by hand: pytest 9's monkeypatch cannot undo a ``setattr`` on
    ``torch.backends.cuda.matmul`` (a module-like object whose attributes are properties).
    """
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
