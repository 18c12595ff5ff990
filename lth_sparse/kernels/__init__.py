"""Triton kernels (DESIGN.md, layer 1). Imported only by the ops' dispatch when Triton is installed.

:mod:`lth_sparse.kernels.masked_matmul`: masked-weight linear and conv, forward and backward.
:mod:`lth_sparse.kernels.select`: the multi-tensor radix select behind ``kth_smallest`` / ``prune_lowest``.
:mod:`lth_sparse.kernels.interpolate`: interpolated linear and conv forwards (weights lerped on load).
Under ``TRITON_INTERPRET=1`` (set before import) they run on CPU tensors: that is how CI tests them.
"""

from __future__ import annotations


def is_available() -> bool:
    """Whether Triton can be imported here (a GPU, or the interpreter, is still needed to run a kernel)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["is_available"]
