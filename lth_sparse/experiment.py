"""What every experiment builds from its options and seeds: the device, the data set, the model.

One place for the setup that IMP, consensus, transfer, instability and planting share with
the analyses of finished runs (mask comparison, probes): the device checked, a data set loaded
once per process for the units that run in it, and a model of the registry drawn from a seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from lth_sparse._dispatch import check_backend
from lth_sparse.data import Dataset, load_dataset
from lth_sparse.errors import UserError
from lth_sparse.models import create_model
from lth_sparse.ops.masked_conv2d import IMPLEMENTED as MASKED_CONV2D_BACKENDS
from lth_sparse.ops.masked_linear import IMPLEMENTED as MASKED_LINEAR_BACKENDS

__all__ = ["check_device", "draw_model", "release_shared", "shared_dataset"]

_SHARED: dict = {}

MASKED_OPS = {"masked_linear": MASKED_LINEAR_BACKENDS, "masked_conv2d": MASKED_CONV2D_BACKENDS}
"""The ops of the masked layers, with the backends that have kernels for them: what every experiment runs."""


def check_device(device: str) -> torch.device:
    """``device`` parsed, and refused with a clear error where torch cannot use it here, or where the backend that
    ``LTH_SPARSE_BACKEND`` forces cannot run the masked layers on it (every experiment trains them)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise UserError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from error
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"device {device!r}: torch sees no CUDA device here (torch.cuda.is_available() is "
                f"False; torch {torch.__version__}); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError(f"device {device!r}: MPS is not available here")
    try:
        check_backend(dev, MASKED_OPS)
    except ValueError as error:
        raise UserError(str(error)) from None
    return dev


def draw_model(
    name: str, input_shape: Sequence[int], num_classes: int, options=(), *, seed: int, device="cpu"
) -> nn.Module:
    """The registry's model ``name`` (with ``options``, pairs or a mapping) for ``input_shape`` and
    ``num_classes``, initialised from ``seed`` (torch's default generator is seeded with it, as every
    pipeline's draw has been), on ``device``, with ``input_shape`` recorded on it."""
    torch.manual_seed(seed)
    model = create_model(name, tuple(input_shape), num_classes, **dict(options or ()))
    model.input_shape = tuple(input_shape)
    return model.to(device)


def shared_dataset(name: str, **options) -> Dataset:
    """``load_dataset(name, **options)``, loaded once per process for the units that run in it.

    A worker of the process pool or of Ray runs many units of one run (IMP's controls: two per
    round and seed), each of which would otherwise read and normalise the same data again
    (1.5-2 s for Fashion-MNIST on one core). The last data set asked for is kept (one at a
    time); :func:`release_shared` lets it go. Its tensors are shared between the units: treat
    them as read-only (training and evaluation only read them).
    """
    key = (name, tuple(sorted((k, str(v)) for k, v in options.items())))
    if _SHARED.get("key") != key:
        _SHARED.clear()
        _SHARED.update(key=key, data=load_dataset(name, **options))
    return _SHARED["data"]


def release_shared() -> None:
    """Forget the data set :func:`shared_dataset` keeps (its memory is freed once nothing else holds it)."""
    _SHARED.clear()
