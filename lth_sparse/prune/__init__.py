"""Pruning: criteria (scores), scopes, structured and random pruning, effective sparsity.

Every selection goes through :func:`lth_sparse.ops.prune_lowest`.
"""

from lth_sparse.prune.effective import effective_masks, output_connected_masks
from lth_sparse.prune.pruners import (
    IMPORTANCES,
    LAYER_NORMALISED,
    SCOPES,
    STRUCTURED_NORMS,
    check_importance_and_scope,
    importance_scores,
    prune_magnitude,
    prune_random,
    prune_structured,
    random_masks_like,
)

__all__ = ["IMPORTANCES", "LAYER_NORMALISED", "SCOPES", "STRUCTURED_NORMS", "check_importance_and_scope",
           "importance_scores", "prune_magnitude", "prune_random", "prune_structured", "random_masks_like",
           "effective_masks", "output_connected_masks"]
