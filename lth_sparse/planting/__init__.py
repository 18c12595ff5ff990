"""Planted tickets with known ground truth (Fischer & Burkholz, 2022, "Plant 'n' Seek: Can you find the
winning ticket?").

- :mod:`~lth_sparse.planting.tasks`: the ReLU, Circle and Helix data (Appendix B.1), ``planting_data``.
- :mod:`~lth_sparse.planting.targets`: their target networks for any depth (Section 2.3, Appendix A.4),
  ``make_target`` and the targets' own scores, the ceiling a found ticket is compared with.
- :mod:`~lth_sparse.planting.plant`: hiding a target in a randomly initialised host (Appendix A.3), ``plant``.

    target = make_target("circle", depth=5)
    host, masks, scales = plant(target, width=100, seed=0)
    ticket = planted_ticket(host, masks)        # ticket(x) / scales == target(x)
    masks.density()                              # the paper's "sparsity" rho (lth_sparse: 1 - sparsity)

``planting`` (:data:`PLANTINGS`) picks between Plant 'n' Seek's code's targets and host-neuron matching
(``"reference"``, the default: the Helix target keeps its rounding residues, 115 weights at depth 3, the paper's
density .29) and the exact ones (``"exact"``: 91 weights, the paper's L2 matching), for ``make_target`` and
``plant`` alike.

Conventions (each settles an ambiguity of the paper's text): **depth** counts the layers including the input
layer (depth 5 is four weight layers), as the reference code; the paper's "sparsity" rho is a **density**,
the fraction of weights kept (biases not counted), and is called ``density`` here, while ``sparsity`` keeps
lth_sparse's meaning, ``1 - density``.
"""

from lth_sparse.planting.plant import (
    host_widths,
    init_host,
    plant,
    planted_ticket,
    reference_match,
    target_layers,
    ticket_density,
)
from lth_sparse.planting.targets import (
    MIN_DEPTH,
    PLANTINGS,
    check_planting,
    make_target,
    target_performance,
    univariate_pieces,
)
from lth_sparse.planting.tasks import TASKS, chance_level, planting_data, task_function, task_kind

__all__ = [
    "TASKS",
    "MIN_DEPTH",
    "PLANTINGS",
    "check_planting",
    "planting_data",
    "chance_level",
    "task_function",
    "task_kind",
    "make_target",
    "target_performance",
    "univariate_pieces",
    "plant",
    "reference_match",
    "planted_ticket",
    "ticket_density",
    "init_host",
    "host_widths",
    "target_layers",
]
