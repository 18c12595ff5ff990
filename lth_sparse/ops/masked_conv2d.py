"""``masked_conv2d``: ``conv2d(x, W * M) + b`` with the weight gradient masked.

Registered as ``torch.ops.lth_sparse.masked_conv2d``; backward as
``masked_conv2d_backward``: dX = conv2d_input(dY, W * M), dW = conv2d_weight(X, dY) * M,
db = dY summed over batch and space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair

from lth_sparse._dispatch import choose_backend, cpu_runs_cpp, plain_eager, triton_kernel
from lth_sparse.ops import _autocast, _checks, _cpu
from lth_sparse.ops._checks import check_conv_geometry, conv_output_size

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
        grad_input = torch.nn.grad.conv2d_input(input.shape, torch.where(mask, weight, 0), grad,
                                                stride, padding, dilation, groups)
        if unbatched:
            grad_input = grad_input.squeeze(0)
    if need_weight:
        grad_weight = torch.nn.grad.conv2d_weight(input, weight.shape, grad, stride, padding, dilation, groups)
        grad_weight.masked_fill_(~mask, 0)
    grad_bias = grad.sum((0, 2, 3)) if need_bias else grad.new_empty(0)
    return grad_input, grad_weight, grad_bias


_FORWARD = {"torch": _forward_torch, "cpp": _cpu.conv2d_forward, "triton": triton_kernel("masked_matmul", "masked_conv2d_forward")}
_BACKWARD = {"torch": _backward_torch, "cpp": _cpu.conv2d_backward, "triton": triton_kernel("masked_matmul", "masked_conv2d_backward")}


def _masked_conv2d_impl(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None, stride: list[int],
                        padding: list[int], dilation: list[int], groups: int) -> Tensor:
    _check(input, weight, mask, bias, stride, padding, dilation, groups)
    backend = choose_backend("masked_conv2d", input.device, IMPLEMENTED)
    return _FORWARD[backend](input, weight, mask, bias, stride, padding, dilation, groups)


def _masked_conv2d_backward_impl(grad: Tensor, input: Tensor, weight: Tensor, mask: Tensor, stride: list[int],
                                 padding: list[int], dilation: list[int], groups: int, need_input: bool,
                                 need_weight: bool, need_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    backend = choose_backend("masked_conv2d", grad.device, IMPLEMENTED)
    return _BACKWARD[backend](grad, input, weight, mask, stride, padding, dilation, groups,
                              need_input, need_weight, need_bias)


_masked_conv2d = torch.library.custom_op("lth_sparse::masked_conv2d", _masked_conv2d_impl, mutates_args=())


@_masked_conv2d.register_fake
def _(input, weight, mask, bias, stride, padding, dilation, groups):
    _check(input, weight, mask, bias, stride, padding, dilation, groups)
    return input.new_empty(*input.shape[:-3], weight.shape[0], *conv_output_size(input, weight, stride, padding,
                                                                                  dilation))


_masked_conv2d_backward = torch.library.custom_op("lth_sparse::masked_conv2d_backward",
                                                  _masked_conv2d_backward_impl, mutates_args=())


@_masked_conv2d_backward.register_fake
def _(grad, input, weight, mask, stride, padding, dilation, groups, need_input, need_weight, need_bias):
    return (input.new_empty(input.shape) if need_input else grad.new_empty(0),
            weight.new_empty(weight.shape) if need_weight else grad.new_empty(0),
            weight.new_empty(weight.shape[0]) if need_bias else grad.new_empty(0))


def _setup_context(ctx, inputs, output):
    input, weight, mask, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight, mask)
    ctx.geometry = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _backward_with(backward_op):
    def backward(ctx, grad):
        if _autocast.active(grad) is not None:
            # a backward run inside the autocast region: the forward ran with autocast off, so does this
            with torch.autocast(grad.device.type, enabled=False):
                return backward(ctx, grad)
        input, weight, mask = ctx.saved_tensors
        need_input, need_weight, _, need_bias = ctx.needs_input_grad[:4]
        need_bias = bool(need_bias and ctx.has_bias)
        grad_input, grad_weight, grad_bias = backward_op(
            grad, input, weight, mask, *ctx.geometry, need_input, need_weight, need_bias)
        return (grad_input if need_input else None, grad_weight if need_weight else None, None,
                grad_bias if need_bias else None, None, None, None, None)
    return backward


_masked_conv2d.register_autograd(_backward_with(_masked_conv2d_backward), setup_context=_setup_context)
_autocast.register(_masked_conv2d, cast_args=(0, 1, 3))  # input, weight, bias


class _EagerMaskedConv2d(torch.autograd.Function):
    """The op without the custom-op machinery, for plain eager mode (see ``_dispatch.plain_eager``)."""

    # forward(ctx, ...): see _EagerMaskedLinear.
    @staticmethod
    def forward(ctx, input, weight, mask, bias, stride, padding, dilation, groups):
        _setup_context(ctx, (input, weight, mask, bias, stride, padding, dilation, groups), None)
        ctx.save_for_forward(input, weight, mask)  # for jvp (forward gets the primals: dual-ness is not seen here)
        return _masked_conv2d_impl(input, weight, mask, bias, stride, padding, dilation, groups)

    backward = staticmethod(_backward_with(_masked_conv2d_backward_impl))

    @staticmethod
    def jvp(ctx, d_input, d_weight, d_mask, d_bias, *_):
        """Forward-mode AD: d conv(x, W*M) + b = conv(dx, W*M) + conv(x, dW*M) + db."""
        input, weight, mask = ctx.saved_tensors
        geometry = ctx.geometry
        out = None
        if d_input is not None:
            out = _masked_conv2d_impl(d_input, weight, mask, None, *geometry)
        if d_weight is not None:
            term = _masked_conv2d_impl(input, d_weight, mask, None, *geometry)
            out = term if out is None else out + term
        stride, padding, dilation, _ = geometry
        shape = (*input.shape[:-3], weight.shape[0], *conv_output_size(input, weight, stride, padding, dilation))
        if d_bias is not None:
            out = d_bias.view(-1, 1, 1).expand(shape) if out is None else out + d_bias.view(-1, 1, 1)
        return out if out is not None else input.new_zeros(shape)


def masked_conv2d(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None = None,
                  stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """``F.conv2d(input, weight * mask, bias, stride, padding, dilation, groups)``, weight gradient masked.

    input: (N, C, H, W) or (C, H, W); weight: (C_out, C/groups, kH, kW); mask:
    bool, the weight's shape; stride/padding/dilation: int or pair (zero padding,
    numeric only: ``MaskedConv2d`` turns 'same'/'valid' and other padding modes
    into these). Returns (N, C_out, H_out, W_out). Under ``torch.autocast`` it computes
    in the autocast dtype as ``F.conv2d`` does (see ``ops/_autocast.py``).
    """
    if isinstance(padding, str):
        raise ValueError("padding must be an int or a pair here; MaskedConv2d resolves 'same' and 'valid'")
    args = (input, weight, mask, bias, list(_pair(stride)), list(_pair(padding)), list(_pair(dilation)), groups)
    if not plain_eager():
        return _masked_conv2d(*args)
    if (autocast := _autocast.active(input)) is not None:
        return _autocast.run_cast(masked_conv2d, autocast, args, (0, 1, 3))
    if isinstance(mask, Tensor) and isinstance(input, Tensor) and input.device.type == "cpu" and cpu_runs_cpp():
        _check(*args)
        if _cpu.nothing_pruned(mask):  # exactly the dense layer: torch's own conv and autograd
            return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return _EagerMaskedConv2d.apply(*args)
