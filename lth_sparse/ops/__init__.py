"""The ops of lth_sparse, registered as ``torch.ops.lth_sparse.*``.

Each op has a plain-torch reference in :mod:`lth_sparse.ops.reference` (the
specification) and is run by the backend :func:`lth_sparse.backend_info` reports.
:func:`zero_pruned_` (set a tensor to zero where a mask prunes, in place) is
the helper that the masked layers and their optimizer hook share.
"""

from lth_sparse.ops._cpu import zero_pruned_
from lth_sparse.ops.interpolate import interpolated_conv2d, interpolated_linear
from lth_sparse.ops.masked_conv2d import masked_conv2d
from lth_sparse.ops.masked_linear import masked_linear
from lth_sparse.ops.select import kth_smallest, prune_lowest, prune_lowest_rows

__all__ = [
    "masked_linear",
    "masked_conv2d",
    "kth_smallest",
    "prune_lowest",
    "prune_lowest_rows",
    "interpolated_linear",
    "interpolated_conv2d",
    "zero_pruned_",
]
