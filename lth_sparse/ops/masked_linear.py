"""``masked_linear``: ``y = x (W * M)^T + b`` with the weight gradient masked.

Registered as ``torch.ops.lth_sparse.masked_linear`` by ``ops/_masked_op.py``
from the checks, kernels and output shape here, shared by every backend. The
backward is its own op, ``masked_linear_backward``, so faster backends can
replace it too:

    dX = dY (W * M),   dW = (dY^T X) * M,   db = sum(dY)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lth_sparse._dispatch import cpu_runs_cpp, plain_eager, triton_kernel
from lth_sparse.ops import _autocast, _checks, _cpu, _masked_op

IMPLEMENTED = ("triton", "cpp", "torch")


def _check(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None) -> None:
    _checks.check_weight_and_mask(weight, mask)
    _checks.check_input_dtype(input, weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if input.dim() < 1 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"input must be (*, in_features={weight.shape[1]}), got shape {tuple(input.shape)}")
    _checks.check_bias("bias", bias, weight.shape[0], weight)
    _checks.check_same_device(input=input, weight=weight, mask=mask, bias=bias)


def _forward_torch(input, weight, mask, bias):
    return F.linear(input, torch.where(mask, weight, 0), bias)


def _backward_torch(grad, input, weight, mask, need_input, need_weight, need_bias):
    grad_input = grad.matmul(torch.where(mask, weight, 0)) if need_input else grad.new_empty(0)
    rows = grad.shape[:-1].numel()
    grad_2d = grad.reshape(rows, weight.shape[0])
    if need_weight:
        grad_weight = grad_2d.t().matmul(input.reshape(rows, weight.shape[1]))
        grad_weight.masked_fill_(~mask, 0)
    else:
        grad_weight = grad.new_empty(0)
    grad_bias = grad_2d.sum(0) if need_bias else grad.new_empty(0)
    return grad_input, grad_weight, grad_bias


_FORWARD = {
    "torch": _forward_torch,
    "cpp": _cpu.linear_forward,
    "triton": triton_kernel("masked_matmul", "masked_linear_forward"),
}
_BACKWARD = {
    "torch": _backward_torch,
    "cpp": _cpu.linear_backward,
    "triton": triton_kernel("masked_matmul", "masked_linear_backward"),
}


def _output_shape(input: Tensor, weight: Tensor) -> tuple[int, ...]:
    return (*input.shape[:-1], weight.shape[0])


_masked_linear, _EagerMaskedLinear = _masked_op.define(
    "masked_linear",
    implemented=IMPLEMENTED,
    geometry_schema=(),
    check=_check,
    forward=_FORWARD,
    backward=_BACKWARD,
    output_shape=_output_shape,
    bias_view=lambda bias: bias,
)


def masked_linear(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(input, weight * mask, bias)``; the weight gradient is zero where ``mask`` is False.

    input: (*, in_features); weight: (out_features, in_features), floating, the
    input's dtype; mask: bool, the weight's shape; bias: (out_features,) or None.
    Returns (*, out_features). Pruned weights never reach the output, even when
    they hold inf or NaN. Raises TypeError/ValueError/RuntimeError naming the
    argument on a dtype, shape or device mismatch. Under ``torch.autocast`` it
    computes in the autocast dtype as ``F.linear`` does (see ``ops/_autocast.py``).
    """
    if not plain_eager():
        return _masked_linear(input, weight, mask, bias)
    if (autocast := _autocast.active(input)) is not None:
        return _autocast.run_cast(masked_linear, autocast, (input, weight, mask, bias), _masked_op.CAST_ARGS)
    if cpu_runs_cpp():
        # the whole layer in one C++ call: ~3 us over F.linear (plus the mask cache's comparison of the
        # mask's bytes, ~7 us on a 784x300 mask), against ~40 us for the Python path
        try:
            out = _cpu.linear_auto(input, weight, mask, bias)
        except TypeError:  # an argument is not a tensor: the checks below say which
            out = None
        if out is not None:
            return out
    return _EagerMaskedLinear.apply(input, weight, mask, bias)
