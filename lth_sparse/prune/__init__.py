"""Pruning: criteria (scores), scopes, structured and random pruning, effective sparsity.

Every selection goes through :func:`lth_sparse.ops.prune_lowest`.
"""

from lth_sparse.prune.effective import effective_masks
from lth_sparse.prune.pruners import (
    IMPORTANCES,
    SCOPES,
    STRUCTURED_NORMS,
    importance_scores,
    prune_magnitude,
    prune_random,
    prune_structured,
    random_masks_like,
)

__all__ = ["IMPORTANCES", "SCOPES", "STRUCTURED_NORMS", "importance_scores", "prune_magnitude", "prune_random",
           "prune_structured", "random_masks_like", "effective_masks"]
