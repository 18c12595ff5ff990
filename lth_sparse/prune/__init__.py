"""Pruning: criteria (scores), scopes, structured and random pruning, effective sparsity, the single-shot
saliency pruners (SNIP, GraSP, SynFlow), layer collapse, edge-popup (strong tickets) and multi-shot pruning.

Every selection goes through :func:`lth_sparse.ops.prune_lowest`.
"""

from lth_sparse.prune.collapse import LayerCollapse, layer_collapse, network_collapsed
from lth_sparse.prune.edge_popup import (EdgePopupNetwork, EdgePopupResult, annealed_densities, edge_popup,
                                         straight_through_topk, strong_ticket, topk_mask)
from lth_sparse.prune.effective import effective_masks, output_connected_masks
from lth_sparse.prune.multishot import MultiShotRound, density_schedule, magnitude_to_density, multi_shot
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
    select_kept,
    uniform_scores,
)
from lth_sparse.prune.saliency import (
    GRASP_TEMPERATURE,
    PRUNER_NAMES,
    SYNFLOW_ITERATIONS,
    get_pruner,
    grasp_scores,
    magnitude_scores,
    prunable_layers,
    prunable_masks,
    prune_grasp,
    prune_snip,
    prune_synflow,
    pruner_names,
    random_scores,
    snip_scores,
    synflow_scores,
)

__all__ = ["IMPORTANCES", "LAYER_NORMALISED", "SCOPES", "STRUCTURED_NORMS", "check_importance_and_scope",
           "importance_scores", "prune_magnitude", "prune_random", "prune_structured", "random_masks_like",
           "select_kept", "uniform_scores",
           "effective_masks", "output_connected_masks",
           "GRASP_TEMPERATURE", "PRUNER_NAMES", "SYNFLOW_ITERATIONS", "get_pruner", "grasp_scores", "magnitude_scores",
           "prunable_layers", "prunable_masks", "prune_grasp", "prune_snip", "prune_synflow", "pruner_names",
           "random_scores", "snip_scores", "synflow_scores",
           "LayerCollapse", "layer_collapse", "network_collapsed",
           "EdgePopupNetwork", "EdgePopupResult", "annealed_densities", "edge_popup", "straight_through_topk",
           "strong_ticket", "topk_mask", "MultiShotRound", "density_schedule", "magnitude_to_density", "multi_shot"]
