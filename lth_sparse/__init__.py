"""lth_sparse: lottery-ticket research on PyTorch.

Layers (docs/design.md): kernels and ops (:mod:`lth_sparse.ops`), masked modules and
masks (:mod:`lth_sparse.nn`, :class:`lth_sparse.Masks`), pruning, data, models,
training, and the pipelines behind the ``lth-sparse`` command; :func:`lth_sparse.load_run` reads any
pipeline's run directory back as tables.
"""

from typing import TYPE_CHECKING

from lth_sparse import ops
from lth_sparse._dispatch import backend_info, warn_if_torch_only
from lth_sparse._version import __version__

if TYPE_CHECKING:
    from lth_sparse.masks import Masks
    from lth_sparse.rundata import load_run

warn_if_torch_only()

__all__ = ["__version__", "backend_info", "ops", "Masks", "load_run"]


def __getattr__(name):
    # Masks pulls in safetensors, load_run the pipelines; each loaded on first use.
    if name == "Masks":
        from lth_sparse.masks import Masks

        return Masks
    if name == "load_run":
        from lth_sparse.rundata import load_run

        return load_run
    raise AttributeError(f"module 'lth_sparse' has no attribute {name!r}")
