"""``masked_conv2d``: ``conv2d(x, W * M) + b`` with the weight gradient masked.

Registered as ``torch.ops.lth_sparse.masked_conv2d`` by ``ops/_masked_op.py`` from
the checks, kernels and output shape here; backward as ``masked_conv2d_backward``:
dX = conv2d_input(dY, W * M), dW = conv2d_weight(X, dY) * M, db = dY summed over
batch and space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lth_sparse._dispatch import cpu_runs_cpp, plain_eager, triton_kernel
from lth_sparse.ops import _autocast, _checks, _cpu, _masked_op
from lth_sparse.ops._checks import check_conv_geometry, conv_output_size, pair_list

IMPLEMENTED = ("triton", "cpp", "torch")


def _check(input, weight, mask, bias, stride, padding, dilation, groups):
    _checks.check_weight_and_mask(weight, mask)
    _checks.check_input_dtype(input, weight)
    check_conv_geometry(input, weight, stride, padding, dilation, groups)
    _checks.check_bias("bias", bias, weight.shape[0], weight)
    _checks.check_same_device(input=input, weight=weight, mask=mask, bias=bias)


def _forward_torch(input, weight, mask, bias, stride, padding, dilation, groups):
    return F.conv2d(input, torch.where(mask, weight, 0), bias, stride, padding, dilation, groups)


def _backward_torch(grad, input, weight, mask, stride, padding, dilation, groups, need_input, need_weight, need_bias):
    unbatched = input.dim() == 3
    if unbatched:
        grad, input = grad.unsqueeze(0), input.unsqueeze(0)
    grad_input = grad_weight = grad.new_empty(0)
    if need_input:
        grad_input = torch.nn.grad.conv2d_input(
            input.shape, torch.where(mask, weight, 0), grad, stride, padding, dilation, groups
        )
        if unbatched:
            grad_input = grad_input.squeeze(0)
    if need_weight:
        grad_weight = torch.nn.grad.conv2d_weight(input, weight.shape, grad, stride, padding, dilation, groups)
        grad_weight.masked_fill_(~mask, 0)
    grad_bias = grad.sum((0, 2, 3)) if need_bias else grad.new_empty(0)
    return grad_input, grad_weight, grad_bias


_FORWARD = {
    "torch": _forward_torch,
    "cpp": _cpu.conv2d_forward,
    "triton": triton_kernel("masked_matmul", "masked_conv2d_forward"),
}
_BACKWARD = {
    "torch": _backward_torch,
    "cpp": _cpu.conv2d_backward,
    "triton": triton_kernel("masked_matmul", "masked_conv2d_backward"),
}


def _output_shape(input: Tensor, weight: Tensor, stride, padding, dilation, groups) -> tuple[int, ...]:
    return (*input.shape[:-3], weight.shape[0], *conv_output_size(input, weight, stride, padding, dilation))


_masked_conv2d, _EagerMaskedConv2d = _masked_op.define(
    "masked_conv2d",
    implemented=IMPLEMENTED,
    geometry_schema=("SymInt[] stride", "SymInt[] padding", "SymInt[] dilation", "SymInt groups"),
    check=_check,
    forward=_FORWARD,
    backward=_BACKWARD,
    output_shape=_output_shape,
    bias_view=lambda bias: bias.view(-1, 1, 1),
)


def masked_conv2d(
    input: Tensor,
    weight: Tensor,
    mask: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """``F.conv2d(input, weight * mask, bias, stride, padding, dilation, groups)``, weight gradient masked.

    input: (N, C, H, W) or (C, H, W); weight: (C_out, C/groups, kH, kW); mask:
    bool, the weight's shape; stride/padding/dilation: int or pair (zero padding,
    numeric only: ``MaskedConv2d`` turns 'same'/'valid' and other padding modes
    into these). Returns (N, C_out, H_out, W_out). Under ``torch.autocast`` it computes
    in the autocast dtype as ``F.conv2d`` does (see ``ops/_autocast.py``).
    """
    if isinstance(padding, str):
        raise ValueError("padding must be an int or a pair here; MaskedConv2d resolves 'same' and 'valid'")
    args = (input, weight, mask, bias, pair_list(stride), pair_list(padding), pair_list(dilation), groups)
    if not plain_eager():
        return _masked_conv2d(*args)
    if (autocast := _autocast.active(input)) is not None:
        return _autocast.run_cast(masked_conv2d, autocast, args, _masked_op.CAST_ARGS)
    if isinstance(mask, Tensor) and isinstance(input, Tensor) and input.device.type == "cpu" and cpu_runs_cpp():
        _check(*args)
        if _cpu.nothing_pruned(mask):  # exactly the dense layer: torch's own conv and autograd
            return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return _EagerMaskedConv2d.apply(*args)
