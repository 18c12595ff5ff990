"""Tolerances per dtype, in one table (absolute, relative)."""

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
