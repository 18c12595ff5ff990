"""Mixed precision for the ops: under ``torch.autocast`` they do what torch's own layers do.

Under autocast, ``F.linear`` and ``F.conv2d`` cast their input, weight and bias to
the autocast dtype (the weight on every call: its gradient flows back through the
cast and reaches the float32 parameter in float32) and compute in that dtype. The
ops here do the same: their floating tensor arguments (float64 and tensors on
another device type excepted, as torch excepts them; masks are bool and stay so)
are cast to ``torch.get_autocast_dtype(device_type)``, and the op then runs with
autocast off, so every backend, the C++ entry points included, sees one dtype and
its backward returns gradients in that dtype. Two entry points:

- :func:`register`, a kernel at the custom op's ``AutocastCPU`` / ``AutocastCUDA``
  dispatch key, for every call that goes through the dispatcher (``torch.compile``,
  dispatch modes, ``torch.ops.lth_sparse.*``);
- :func:`active` and :func:`run_cast` for the plain-eager paths, which skip it.

``torch.library.register_autocast`` fixes the dtype at registration; these kernels
read it at each call, so bf16 and fp16 regions both work.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
from torch import Tensor

# The device types whose autocast the ops follow.
DEVICE_TYPES = ("cpu", "cuda")

_LIB = torch.library.Library("lth_sparse", "FRAGMENT")


def active(t) -> tuple[str, torch.dtype] | None:
    """(device type, autocast dtype) when autocast is on for the device type of the tensor ``t``, else
    None; one cheap call when autocast is off everywhere (the plain-eager layers ask on every call)."""
    if not torch._C._is_any_autocast_enabled() or not isinstance(t, Tensor):
        return None
    device_type = t.device.type
    if not torch.is_autocast_enabled(device_type):
        return None
    return device_type, torch.get_autocast_dtype(device_type)


def cast(value, device_type: str, dtype: torch.dtype):
    """``value.to(dtype)`` for a floating tensor on ``device_type`` other than float64; anything else as is."""
    if (
        isinstance(value, Tensor)
        and value.is_floating_point()
        and value.dtype is not torch.float64
        and value.device.type == device_type
    ):
        return value.to(dtype)
    return value


def run_cast(fn: Callable, autocast: tuple[str, torch.dtype], args: Sequence, cast_args: Collection[int]):
    """``fn(*args)`` with ``args[i]`` cast to the dtype of ``autocast`` (device type, dtype) for each i in
    ``cast_args``, autocast off for that device type."""
    device_type, dtype = autocast
    args = [cast(a, device_type, dtype) if i in cast_args else a for i, a in enumerate(args)]
    with torch.autocast(device_type, enabled=False):
        return fn(*args)


def register(op, cast_args: Collection[int]) -> None:
    """Give the custom op ``op`` (a ``torch.library.custom_op``) an autocast kernel on every device
    type of ``DEVICE_TYPES``: the arguments at ``cast_args`` cast, the op run with autocast off."""
    name = op._name.split("::")[-1]
    cast_args = frozenset(cast_args)
    for device_type in DEVICE_TYPES:

        def kernel(_keyset, *args, device_type=device_type):
            return run_cast(op, (device_type, torch.get_autocast_dtype(device_type)), args, cast_args)

        _LIB.impl(name, kernel, "Autocast" + torch._C._dispatch_key_for_device(device_type), with_keyset=True)
