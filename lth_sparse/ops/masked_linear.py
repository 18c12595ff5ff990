"""``masked_linear``: ``y = x (W * M)^T + b`` with the weight gradient masked.

Registered as ``torch.ops.lth_sparse.masked_linear`` (schema, fake kernel and
autograd formula here, shared by every backend). The backward is its own op,
``masked_linear_backward``, so faster backends can replace it too:

    dX = dY (W * M),   dW = (dY^T X) * M,   db = sum(dY)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lth_sparse._dispatch import choose_backend, cpu_runs_cpp, plain_eager, triton_kernel
from lth_sparse.ops import _autocast, _checks, _cpu

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


_FORWARD = {"torch": _forward_torch, "cpp": _cpu.linear_forward, "triton": triton_kernel("masked_matmul", "masked_linear_forward")}
_BACKWARD = {"torch": _backward_torch, "cpp": _cpu.linear_backward, "triton": triton_kernel("masked_matmul", "masked_linear_backward")}


def _masked_linear_impl(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None) -> Tensor:
    _check(input, weight, mask, bias)
    return _FORWARD[choose_backend("masked_linear", input.device, IMPLEMENTED)](input, weight, mask, bias)


def _masked_linear_backward_impl(grad: Tensor, input: Tensor, weight: Tensor, mask: Tensor, need_input: bool,
                                 need_weight: bool, need_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    backend = choose_backend("masked_linear", grad.device, IMPLEMENTED)
    return _BACKWARD[backend](grad, input, weight, mask, need_input, need_weight, need_bias)


_masked_linear = torch.library.custom_op("lth_sparse::masked_linear", _masked_linear_impl, mutates_args=())


@_masked_linear.register_fake
def _(input, weight, mask, bias):
    _check(input, weight, mask, bias)
    return input.new_empty(*input.shape[:-1], weight.shape[0])


_masked_linear_backward = torch.library.custom_op("lth_sparse::masked_linear_backward",
                                                  _masked_linear_backward_impl, mutates_args=())


@_masked_linear_backward.register_fake
def _(grad, input, weight, mask, need_input, need_weight, need_bias):
    return (input.new_empty(input.shape) if need_input else grad.new_empty(0),
            weight.new_empty(weight.shape) if need_weight else grad.new_empty(0),
            weight.new_empty(weight.shape[0]) if need_bias else grad.new_empty(0))


def _setup_context(ctx, inputs, output):
    input, weight, mask, bias = inputs
    ctx.save_for_backward(input, weight, mask)
    ctx.has_bias = bias is not None


def _backward_with(backward_op):
    def backward(ctx, grad):
        if _autocast.active(grad) is not None:
            # a backward run inside the autocast region: the forward ran with autocast off, so does this
            with torch.autocast(grad.device.type, enabled=False):
                return backward(ctx, grad)
        input, weight, mask = ctx.saved_tensors
        need_input, need_weight, _, need_bias = ctx.needs_input_grad
        grad_input, grad_weight, grad_bias = backward_op(
            grad, input, weight, mask, need_input, need_weight, bool(need_bias and ctx.has_bias))
        return (grad_input if need_input else None, grad_weight if need_weight else None, None,
                grad_bias if need_bias and ctx.has_bias else None)
    return backward


_masked_linear.register_autograd(_backward_with(_masked_linear_backward), setup_context=_setup_context)
_autocast.register(_masked_linear, cast_args=(0, 1, 3))  # input, weight, bias


class _EagerMaskedLinear(torch.autograd.Function):
    """The op without the custom-op machinery, for plain eager mode (see ``_dispatch.plain_eager``)."""

    # forward(ctx, ...), not setup_context: with setup_context, apply() binds the
    # arguments through inspect.signature on every call (~50 us).
    @staticmethod
    def forward(ctx, input, weight, mask, bias):
        _setup_context(ctx, (input, weight, mask, bias), None)
        ctx.save_for_forward(input, weight, mask)  # for jvp (forward gets the primals: dual-ness is not seen here)
        return _masked_linear_impl(input, weight, mask, bias)

    backward = staticmethod(_backward_with(_masked_linear_backward_impl))

    @staticmethod
    def jvp(ctx, d_input, d_weight, d_mask, d_bias):
        """Forward-mode AD: d(x (W*M)^T + b) = dx (W*M)^T + x (dW*M)^T + db."""
        input, weight, mask = ctx.saved_tensors
        out = None
        if d_input is not None:
            out = _masked_linear_impl(d_input, weight, mask, None)
        if d_weight is not None:
            term = _masked_linear_impl(input, d_weight, mask, None)
            out = term if out is None else out + term
        if d_bias is not None:
            out = d_bias.expand(*input.shape[:-1], weight.shape[0]) if out is None else out + d_bias
        return out if out is not None else input.new_zeros(*input.shape[:-1], weight.shape[0])


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
        return _autocast.run_cast(masked_linear, autocast, (input, weight, mask, bias), (0, 1, 3))
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
