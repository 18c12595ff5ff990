"""Triton kernels (docs/design.md, layer 1). Imported only by the ops' dispatch when Triton is installed.

:mod:`lth_sparse.kernels.masked_matmul`: masked-weight linear and conv, forward and backward.
:mod:`lth_sparse.kernels.select`: the multi-tensor radix select behind ``kth_smallest`` / ``prune_lowest``.
:mod:`lth_sparse.kernels.interpolate`: interpolated linear and conv forwards (weights lerped on load).
``kernels/_tiles.py`` holds what they share: the interpreter switch, the GEMM tiles and their launch.
Under ``TRITON_INTERPRET=1`` (set before import) they run on CPU tensors: that is how CI tests them.
"""
