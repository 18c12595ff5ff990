"""An on-disk cache of the tensors of datasets that are slow to build
(generated, or decoded from many image files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from lth_sparse.atomic import atomic_torch_save

__all__ = ["cached_tensors"]

CACHE_FOLDER = "lth_sparse_cache"


def cached_tensors(data_dir: Path, key: str, build: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """Return ``build()``, cached in ``data_dir/lth_sparse_cache/<key>.pt``.

    ``key`` must change whenever what ``build`` makes changes (put a version in
    it). The file is written atomically; an unreadable cache is rebuilt, and an
    unwritable ``data_dir`` only means there is no cache.
    """
    path = Path(data_dir) / CACHE_FOLDER / f"{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a truncated or foreign file: rebuild it below
            pass
    tensors = build()
    try:
        atomic_torch_save(path, tensors)
    except OSError:
        pass
    return tensors
